r"""Samples a PNG grid of images from an exported specialist or from a workdir's model.

  projectable-sample --specialist=/tmp/specialists/3 --num=64 --out=grid.png
  projectable-sample --workdir=/tmp/digits --task=3 --out=grid.png --temperature=0.8

With --workdir, the task (name or index) is drawn from the run's best weights (or
--step's checkpoint) by the model the run scores for it: the task's specialist in
projectable and specialists runs (projected or trained), the conditional model given
the task in universal and source runs. --model chooses instead: ``specialist`` (runs
that have specialists) or ``source`` (the conditional source of a projectable or
source run, given the task):

  projectable-sample --workdir=/tmp/digits --task=3 --model=source --out=source3.png
"""

import jax
from absl import app, flags

from projectable import launchers
from projectable.specialists import export, images
from projectable.specialists.artifact import load_specialist
from projectable.training import restore

FLAGS = flags.FLAGS
MODELS = ("specialist", "source")
flags.DEFINE_string("specialist", None, "An exported specialist directory (OUT/<task>).")
flags.DEFINE_string("workdir", None, "A training workdir (instead of --specialist).")
flags.DEFINE_string("task", None, "With --workdir: the task to sample, by name or index.")
flags.DEFINE_integer("step", None, "With --workdir: the checkpoint step (default: best).")
flags.DEFINE_enum(
  "model",
  None,
  MODELS,
  "With --workdir: the task's specialist or the conditional source given the task "
  "(default: the model the run scores for the task).",
)
flags.DEFINE_integer("num", 64, "Number of images.")
flags.DEFINE_string("out", None, "Path of the PNG grid.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_float("temperature", 1.0, "Sampling temperature; 0 is greedy.")
flags.mark_flags_as_required(["out"])


def _generator() -> tuple:
  """(cfg, weights, task descriptor or None, image shape, levels) of the chosen model."""
  if FLAGS.specialist:
    specialist, meta = load_specialist(FLAGS.specialist)
    missing = [k for k in ("image_shape", "levels") if k not in meta]
    if missing:
      raise ValueError(f"{FLAGS.specialist}/config.json lacks {missing}; cannot draw images")
    return specialist.cfg, specialist.params, None, tuple(meta["image_shape"]), meta["levels"]
  run = restore.load_run(FLAGS.workdir, FLAGS.step)
  task_ids = export.resolve_tasks(FLAGS.task, run.data.task_names)
  if len(task_ids) != 1:
    raise ValueError(f"--task must name one task, got {FLAGS.task!r}")
  t = task_ids[0]
  task_C = run.data.task_descriptors()[t]
  cfg, weights, task_C = _sampler(run, t, task_C, FLAGS.model)
  return cfg, weights, task_C, run.data.image_shape, run.data.levels


def _sampler(run: restore.Run, t: int, task_C: jax.Array, model: str | None) -> tuple:
  """(cfg, weights, descriptor or None) of ``model`` (None: the run's scored model) for task
  ``t``; a model the run's mode does not train is a ValueError naming what it has."""
  method = run.method
  mode = run.config.mode
  if model == "specialist" and not method.has_specialists:
    raise ValueError(
      f"--model=specialist: a {mode} run has no specialists; sample its model without --model"
    )
  if model == "source":
    if "source" not in run.params:
      raise ValueError(
        f"--model=source: a {mode} run has no source; sample its model without --model"
      )
    return method.src, run.params["source"], task_C
  if model == "specialist":
    return method.small, method.specialist(run.params, t, task_C), None
  return tuple(method.sampler(run.params, t, task_C))


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if bool(FLAGS.specialist) == bool(FLAGS.workdir):
    raise app.UsageError("give exactly one of --specialist or --workdir")
  if FLAGS.workdir and not FLAGS.task:
    raise app.UsageError("--workdir needs --task (a task name or index)")
  if FLAGS.specialist and (FLAGS.task or FLAGS.step is not None or FLAGS.model):
    raise app.UsageError(
      "--task, --step and --model go with --workdir; a specialist is one model of one task"
    )
  try:
    cfg, weights, task_C, image_shape, levels = _generator()
    images.save_samples(
      cfg,
      weights,
      task_C,
      FLAGS.num,
      jax.random.key(FLAGS.seed),
      FLAGS.temperature,
      image_shape,
      levels,
      FLAGS.out,
    )
  except (FileNotFoundError, ValueError) as e:
    raise app.UsageError(str(e)) from e
  print(f"wrote {FLAGS.num} samples to {FLAGS.out}")


def run() -> None:
  """The ``projectable-sample`` command."""
  launchers.serve(__name__, main)
