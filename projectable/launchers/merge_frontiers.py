r"""Joins frontiers run apart into one: DIR/frontier.{json,md,png}.

  projectable-frontier --config=fashion_mnist --workdir=A --methods=projectable
  projectable-frontier --config=fashion_mnist --workdir=B --methods=source
  projectable-merge-frontiers --frontiers=A/frontier.json,B/frontier.json --workdir=DIR

The frontiers must share dataset, budget ladder (config and its overrides), source share,
distillation alpha and trained source; no (method, budget, seed) may appear twice.
"""

import json

from absl import app, flags

from projectable import launchers
from projectable.experiments import frontier_report

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


def run() -> None:
  """The ``projectable-merge-frontiers`` command."""
  launchers.serve(__name__, main)
