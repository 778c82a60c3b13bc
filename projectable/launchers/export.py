r"""Exports specialists from a training workdir in one shot.

  projectable-export --workdir=/tmp/digits --out=/tmp/specialists
  projectable-export --workdir=/tmp/digits --tasks=0,3 --out=/tmp/s --step=200 \
      --format=tflite --overwrite
  projectable-export --workdir=/tmp/digits --tasks='3;pair38:3,8;round:0,6,8' --out=/tmp/s

Writes ``OUT/<task>/`` (a specialist: Orbax weights + config.json with its
classes and its test bits/dim measured at export; with --format=tflite also
model.tflite and saved_model/) from the best-on-validation weights, or from
--step's checkpoint. --tasks takes ';'-separated items: training tasks ('all',
or comma-separated names or indices) and, from a projectable run, class sets
'name:class,class,...' (as in config.data.tasks) that need not be training tasks.
"""

from absl import app, flags

from projectable import launchers
from projectable.specialists import export
from projectable.training import workdir_lock

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Workdir of a finished (or running) training run.")
flags.DEFINE_string(
  "tasks",
  "all",
  "';'-separated: 'all', comma-separated task names or indices, or a class set "
  "'name:class,class,...' that need not be a training task (projectable runs).",
)
flags.DEFINE_string("out", None, "Directory that receives one subdirectory per task.")
flags.DEFINE_integer("step", None, "Export the train state saved at this step (default: best).")
flags.DEFINE_bool("overwrite", False, "Replace specialists already in OUT/<task>/.")
flags.DEFINE_enum(
  "format",
  "orbax",
  export.FORMATS,
  "orbax: weights + config.json; tflite: also model.tflite and saved_model/.",
)
flags.mark_flags_as_required(["workdir", "out"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    summary = export.export(
      FLAGS.workdir, FLAGS.out, FLAGS.tasks, FLAGS.step, FLAGS.overwrite, FLAGS.format
    )
  except (FileNotFoundError, FileExistsError, ValueError, workdir_lock.WorkdirBusyError) as e:
    raise app.UsageError(str(e)) from e
  print(f"{summary['weights']} weights of step {summary['step']} -> {FLAGS.out}")
  for name, path in zip(summary["tasks"], summary["paths"], strict=True):
    print(f"  {name}: {summary['test_bits_per_dim'][name]:.4f} test bits/dim  {path}")
  print(
    f"emitted {len(summary['tasks'])} specialists in {summary['emit_seconds'] * 1e3:.2f} ms "
    f"(one jitted vmapped call; compiled in {summary['compile_seconds']:.2f} s)"
  )


def run() -> None:
  """The ``projectable-export`` command."""
  launchers.serve(__name__, main)
