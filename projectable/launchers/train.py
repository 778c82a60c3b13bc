r"""Trains one mode of projectable.

  projectable-train --config=digits --workdir=/tmp/digits
  projectable-train --config=digits:tiny --workdir=/tmp/t \
      --config.mode=universal --config.train.num_steps=20

Rerunning the same command resumes from the workdir's latest checkpoint, also after
SIGTERM (exit code 143) or SIGKILL. ``--config.restore_step=S`` resumes from step S
instead (newer steps are moved to DIR/checkpoints_set_aside/, never deleted).
``--fresh`` never resumes: if --workdir holds a run, training goes to the first free
``<workdir>-1``, ``<workdir>-2``, ... (logged) and nothing is deleted; to resume that
run later, pass its directory as --workdir without --fresh. One run writes to a workdir
at a time: a second is refused at once (exit status 2) naming the first's host and pid.
User errors (bad flags or config values, data, a busy workdir) exit with status 2 and one
``error:`` line; named faults (a damaged checkpoint, a non-finite loss) with status 1.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from projectable import launchers
from projectable.experiments.run import train_and_evaluate
from projectable.training import (
  distributed,
  host_memory,
  log_filters,
  preemption,
  validation,
  workdir_guard,
)

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and exports.")
flags.DEFINE_bool(
  "fresh", False, "Never resume: if --workdir holds a run, train in the first free <workdir>-N."
)
flags.DEFINE_string("coordinator", None, "host:port of process 0, for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.DEFINE_enum(
  "require_platform",
  None,
  ["gpu", "tpu", "cpu"],
  "Refuse to start unless JAX runs on this platform (cluster scripts: no silent CPU runs).",
)
flags.mark_flags_as_required(["config", "workdir"])
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, as schedulers expect of a terminated job.


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  log_filters.quiet_library_logs()
  host_memory.retain_freed_memory()
  distributed.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
  distributed.require_platform(FLAGS.require_platform)
  validation.validate(FLAGS.config)  # A bad value is one line (exit 2), before any work.
  overrides = config_flags.get_override_values(FLAGS["config"])
  # The whole config goes to config.json and TensorBoard's text tab; --verbosity=1 prints it.
  logging.info("config %s, overrides: %s", FLAGS["config"].config_filename, overrides or "none")
  logging.debug("Config:\n%s", FLAGS.config)
  workdir = workdir_guard.fresh_workdir(FLAGS.workdir) if FLAGS.fresh else FLAGS.workdir
  try:
    train_and_evaluate(FLAGS.config, workdir)
  except preemption.Preempted as e:
    logging.warning("%s", e)
    if FLAGS.fresh:
      logging.warning("--fresh starts anew: to resume, rerun with --workdir=%s only.", workdir)
    preemption.exit_process(PREEMPTED_EXIT_CODE)


def run() -> None:
  """The ``projectable-train`` command."""
  launchers.serve(__name__, main)
