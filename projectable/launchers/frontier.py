r"""Test bits/dim against training FLOPs: every method at a ladder of budgets.

  projectable-frontier --config=digits --workdir=DIR
  projectable-frontier --config=digits --workdir=DIR \
      --budgets=1/8,1/4,1/2,1,2 --seeds=0 --top_seeds=0,1,2
  projectable-frontier --config=digits --workdir=DIR \
      --source_workdir=SOURCE_RUN   # amortised: every method builds on one trained source
  projectable-frontier --config=digits --workdir=DIR \
      --multi_seed_from=1/4 --extend_until_converged --max_budget=16
  taskset -c 0 projectable-frontier --config=digits --workdir=DIR --shard=0/2 --poll_s=60 &
  taskset -c 1 projectable-frontier --config=digits --workdir=DIR --shard=1/2 --poll_s=60
  # or --shard=any/2 in both: each takes whichever point no other process is training

Every method is tuned alike on validation bits/dim (never test): at each budget of
--tune_budgets (default: all) it trains every learning rate of --learning_rates with
every dropout of --dropouts (and, built on a source, every --source_shares), and its
best trial there is its setting at that budget and the nearest untuned ones; an empty
list keeps the config's value (--learning_rates= --dropouts= : no tuning). With
--confirm_top=K, a tuned budget with several seeds trains the K best trials of its first
seed on every seed and chooses the lowest mean validation.

Budgets are multiples of the training FLOPs of ``train.num_steps`` projectable
steps. Projectable runs (the reference included) use ``lambda_source=0``, the
best projectable setting at equal FLOPs (docs/results), unless the command line
sets ``--config.lambda_source`` (e.g. 1: training's default, the paper's). See
projectable/experiments/frontier.py for the steps each method gets and how
weight_selection_ft and the *_distill methods pay for their source. Writes
DIR/frontier.{json,md,png}; each point has its own sub-workdir, and rerunning
resumes unfinished points and reuses finished ones.
"""

import fractions
import os
import shlex
import sys
import time
from collections.abc import Callable

from absl import app, flags, logging
from ml_collections import config_flags

from projectable import launchers
from projectable.experiments import arms, frontier, frontier_report, tuning
from projectable.training import host_memory, log_filters, validation

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory holding one sub-workdir per point.")
flags.DEFINE_list(
  "budgets",
  ["1/16", "1/8", "1/4", "1/2", "1"],
  "Training budgets as multiples (e.g. 0.25 or 1/4) of the FLOPs of train.num_steps "
  "projectable steps.",
)
flags.DEFINE_list("seeds", ["0"], "Seeds at every budget but the largest.")
flags.DEFINE_list("top_seeds", ["0", "1", "2"], "Seeds at the largest budget.")
flags.DEFINE_list(
  "methods",
  None,
  f"Methods to run, of {', '.join(frontier.ARMS)}. Default: "
  f"{', '.join(frontier.DEFAULT_ARMS)}; with --source_workdir, "
  f"{', '.join(arms.FROM_SOURCE)}.",
)
flags.DEFINE_string(
  "source_workdir",
  "",
  "Amortised frontier: a finished source run that every method built on a source uses; "
  "budgets then count their own training only.",
)
flags.DEFINE_float(
  "source_share",
  0.5,
  "Share of the budget of the methods built on a source spent training it (without "
  "--source_workdir).",
)
flags.DEFINE_float(
  "distill_weight",
  arms.DISTILL_WEIGHT,
  "alpha of universal_distill and specialists_distill: (1 - alpha) * NLL + alpha * KL.",
)
flags.DEFINE_list(
  "learning_rates",
  [f"{v:g}" for v in tuning.DEFAULT_LEARNING_RATES],
  "Learning rates every method is tuned over.",
)
flags.DEFINE_list(
  "dropouts", [f"{v:g}" for v in tuning.DEFAULT_DROPOUTS], "Dropouts of the trained model."
)
flags.DEFINE_list(
  "source_shares",
  [f"{v:g}" for v in tuning.DEFAULT_SOURCE_SHARES],
  "Shares of the budget the methods built on a source spend on it (tuned; empty: --source_share).",
)
flags.DEFINE_list(
  "projector_lr_scales",
  [],
  "Projector learning-rate multiples the projected methods are also tuned over (default: "
  "none, train.projector_lr_scale); give the baselines as many trials.",
)
flags.DEFINE_list(
  "lambda_sources",
  [],
  "Weights of the source's own NLL the projected methods are also tuned over (default: none, "
  "λ=0 or --config.lambda_source); a trial at λ > 0 buys fewer steps of its budget.",
)
flags.DEFINE_list("tune_budgets", [], "Budgets where tuning runs (default: every budget).")
flags.DEFINE_integer(
  "confirm_top",
  1,
  "At a tuned budget with several seeds, train the first seed's K best trials on every seed "
  "and choose the lowest mean validation (1: the first seed chooses).",
  lower_bound=1,
)
flags.DEFINE_string(
  "multi_seed_from", None, "Budgets from this one on get --top_seeds (default: the largest)."
)
flags.DEFINE_bool(
  "extend_until_converged",
  False,
  "Double the ladder's top until the best baseline's validation gains < 1% per doubling.",
)
flags.DEFINE_string("max_budget", "64", "extend_until_converged stops before passing this.")
flags.DEFINE_string(
  "shard",
  "0/1",
  "INDEX/COUNT: this process trains only its share of the points (e.g. one process per core "
  "or a SLURM array task each, all on one --workdir) and reports every finished one; "
  "any/COUNT: any point no other process is training (balanced when some are finished).",
)
flags.DEFINE_integer(
  "poll_s",
  0,
  "With --shard: while points of other shards are missing, check again every this many "
  "seconds (a choice waits for every shard's trials) until the frontier is complete.",
  lower_bound=0,
)
flags.DEFINE_bool(
  "report_only",
  False,
  "Train nothing: report the finished points, list the others as missing.",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  log_filters.quiet_library_logs()
  validation.validate(FLAGS.config)  # A bad value is one line (exit 2) before any point.
  host_memory.retain_freed_memory()
  default_methods = arms.FROM_SOURCE if FLAGS.source_workdir else frontier.DEFAULT_ARMS
  overridden = config_flags.get_override_values(FLAGS["config"])
  grid = tuning.Grid(
    tuple(_numbers("learning_rates")),
    tuple(_numbers("dropouts")),
    tuple(_numbers("source_shares")),
    tuple(_numbers("projector_lr_scales")),
    tuple(_numbers("lambda_sources")),
  )
  seed_from = _numbers("multi_seed_from")
  try:
    shard = frontier.Shard.parse(FLAGS.shard)
  except ValueError as e:
    raise app.UsageError(f"--shard={FLAGS.shard}: {e}") from None
  run = lambda budgets: frontier.frontier(
    frontier.compute_optimal(FLAGS.config, overridden),
    FLAGS.workdir,
    budgets,
    seeds=[int(s) for s in FLAGS.seeds],
    top_seeds=[int(s) for s in FLAGS.top_seeds],
    methods=tuple(FLAGS.methods or default_methods),
    source_share=FLAGS.source_share,
    command=_command(sys.argv),
    distill_weight=FLAGS.distill_weight,
    source_workdir=FLAGS.source_workdir,
    train=not FLAGS.report_only,
    grid=grid,
    tune_budgets=_numbers("tune_budgets"),
    multi_seed_from=seed_from[0] if seed_from else None,
    confirm_top=FLAGS.confirm_top,
    shard=shard,
  )
  budgets = _numbers("budgets")
  if FLAGS.extend_until_converged:
    (max_budget,) = _numbers("max_budget")
    go = lambda: frontier.extend_until_converged(run, budgets, max_budget)
  else:
    go = lambda: run(budgets)
  print(frontier_report.markdown(_until_complete(go)))


def _until_complete(go: Callable[[], dict]) -> dict:
  """``go()``'s frontier; with --poll_s, ``go()`` again until no point is missing."""
  result = go()
  while FLAGS.poll_s and result["missing"] and not FLAGS.report_only:
    logging.info(
      "shard %s: %d points missing, trained elsewhere or waiting on them; checking again in %ds",
      FLAGS.shard,
      len(result["missing"]),
      FLAGS.poll_s,
    )
    time.sleep(FLAGS.poll_s)
    result = go()
  return result


def _numbers(name: str) -> list[float]:
  """Flag ``name``'s values (a list, or one string) as floats; fractions like 1/4 allowed."""
  values = FLAGS[name].value
  values = [values] if isinstance(values, str) else values or []
  try:
    return [float(fractions.Fraction(v)) for v in values]
  except ValueError as e:
    raise app.UsageError(f"--{name}={','.join(values)}: {e}") from None


def _command(argv: list[str]) -> str:
  """The command as typed: ``python launch/frontier.py ...`` or ``projectable-frontier ...``."""
  if argv[0].endswith(".py"):
    return shlex.join(["python", *argv])
  return shlex.join([os.path.basename(argv[0]), *argv[1:]])


def run() -> None:
  """The ``projectable-frontier`` command."""
  launchers.serve(__name__, main)
