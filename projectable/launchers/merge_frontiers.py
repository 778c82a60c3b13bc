r"""Joins frontiers run apart into one: DIR/frontier.{json,md,png}.

  projectable-frontier --config=fashion_mnist --workdir=A --methods=projectable
  projectable-frontier --config=fashion_mnist --workdir=B --methods=source
  projectable-merge-frontiers --frontiers=A/frontier.json,B/frontier.json --workdir=DIR
  # B's baselines only, beside A's projected points (rerun at a new default):
  projectable-merge-frontiers --frontiers=A/frontier.json,B/frontier.json \
    --methods=all,universal+specialists --workdir=DIR

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
flags.DEFINE_list(
  "methods",
  [],
  "Per frontier, in --frontiers' order, the methods to keep, '+'-separated ('' or 'all': every "
  "one); e.g. an older frontier's baselines beside projected points rerun at a new default.",
)
flags.mark_flags_as_required(["frontiers", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.methods and len(FLAGS.methods) != len(FLAGS.frontiers):
    raise app.UsageError(
      f"--methods has {len(FLAGS.methods)} entries for {len(FLAGS.frontiers)} --frontiers"
    )
  results = []
  for path in FLAGS.frontiers:
    with open(path) as f:
      results.append(json.load(f))
  for i, kept in enumerate(FLAGS.methods):
    if kept not in ("", "all"):
      try:
        results[i] = frontier_report.keep_methods(results[i], kept.split("+"))
      except ValueError as e:
        raise app.UsageError(f"--methods={kept} of {FLAGS.frontiers[i]}: {e}") from None
  try:
    merged = frontier_report.merge(results)
  except ValueError as e:
    raise app.UsageError(f"--frontiers={','.join(FLAGS.frontiers)}: {e}") from None
  frontier_report.write(merged, FLAGS.workdir)
  print(frontier_report.markdown(merged))


def run() -> None:
  """The ``projectable-merge-frontiers`` command."""
  launchers.serve(__name__, main)
