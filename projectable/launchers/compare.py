r"""Trains and compares every method under one matched budget.

  projectable-compare --config=digits --workdir=DIR --seeds=0,1,2
  projectable-compare --config=digits --workdir=DIR --budget=flops
  projectable-compare --config=digits --workdir=DIR \
      --sweep=projector.rank=0,1,4,16

Writes DIR/comparison.{json,md,png} (or DIR/sweep_<field>.* for a sweep). Each run
has its own sub-workdir; rerunning resumes unfinished runs and reuses finished ones.
"""

import json

from absl import app, flags
from ml_collections import config_flags

from projectable import launchers
from projectable.experiments import arms, compare
from projectable.training import host_memory, log_filters, validation

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory holding one sub-workdir per run.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of every method.")
flags.DEFINE_enum("budget", "steps", ["steps", "flops"], "What is matched across methods.")
flags.DEFINE_list("methods", list(arms.DEFAULT_ARMS), f"Methods to run, of {', '.join(arms.ARMS)}.")
flags.DEFINE_float(
  "distill_weight",
  arms.DISTILL_WEIGHT,
  "alpha of universal_distill and specialists_distill: (1 - alpha) * NLL + alpha * KL.",
)
flags.DEFINE_string(
  "sweep",
  None,
  "Ablation instead of the comparison: 'field=v1,v2,...' over projectable "
  "runs, e.g. projector.rank=0,1,4,16 or lambda_source=0.0,1.0.",
)
flags.mark_flags_as_required(["config", "workdir"])


def _value(text: str) -> object:
  """A sweep value: a bool, a number, or else the text itself (e.g. projector.form=full)."""
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    return text


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  log_filters.quiet_library_logs()
  validation.validate(FLAGS.config)  # A bad value is one line (exit 2) before any run starts.
  host_memory.retain_freed_memory()
  seeds = [int(s) for s in FLAGS.seeds]
  if FLAGS.sweep:
    field, sep, values = FLAGS.sweep.partition("=")
    if not sep or not values:
      raise app.UsageError("--sweep needs 'field=v1,v2,...'")
    parsed = [_value(v) for v in values.split(",")]
    result = compare.sweep(FLAGS.config, FLAGS.workdir, field, parsed, seeds)
  else:
    result = compare.compare(
      FLAGS.config,
      FLAGS.workdir,
      seeds,
      FLAGS.budget,
      tuple(FLAGS.methods),
      distill_weight=FLAGS.distill_weight,
    )
  print(compare.markdown(result))


def run() -> None:
  """The ``projectable-compare`` command."""
  launchers.serve(__name__, main)
