r"""Joins frontiers run apart into one: DIR/frontier.{json,md,png}.

  python launch/frontier.py --config=configs/fashion_mnist.py --workdir=A --methods=projectable
  python launch/frontier.py --config=configs/fashion_mnist.py --workdir=B --methods=source
  python launch/merge_frontiers.py --frontiers=A/frontier.json,B/frontier.json --workdir=DIR

The frontiers must share dataset, budget ladder (config and its overrides), source share,
distillation alpha and trained source; no (method, budget, seed) may appear twice.
"""

import json

from absl import app, flags

from projectable.experiments import cli, frontier_report

FLAGS = flags.FLAGS
flags.DEFINE_list("frontiers", None, "frontier.json files to join.")
flags.DEFINE_string("workdir", None, "Where the joined frontier.{json,md,png} go.")
flags.mark_flags_as_required(["frontiers", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  results = []
  for path in FLAGS.frontiers:
    with open(path) as f:
      results.append(json.load(f))
  try:
    merged = frontier_report.merge(results)
  except ValueError as e:
    raise app.UsageError(f"--frontiers={','.join(FLAGS.frontiers)}: {e}") from None
  frontier_report.write(merged, FLAGS.workdir)
  print(frontier_report.markdown(merged))


if __name__ == "__main__":
  cli.run(main)
