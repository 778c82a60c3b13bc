r"""Samples a PNG grid of images from an exported specialist or from a workdir's model.

  python launch/sample.py --specialist=/tmp/specialists/3 --num=64 --out=grid.png
  python launch/sample.py --workdir=/tmp/digits --task=3 --out=grid.png --temperature=0.8

With --workdir, the task (name or index) is drawn by the run's own generator from
its best weights (or --step's checkpoint): the conditional source or universal
model given the task, or the task's specialist in the other modes.
"""

import jax
from absl import app, flags

from projectable.experiments import cli
from projectable.specialists import export, images
from projectable.specialists.artifact import load_specialist
from projectable.training import restore

FLAGS = flags.FLAGS
flags.DEFINE_string("specialist", None, "An exported specialist directory (OUT/<task>).")
flags.DEFINE_string("workdir", None, "A training workdir (instead of --specialist).")
flags.DEFINE_string("task", None, "With --workdir: the task to sample, by name or index.")
flags.DEFINE_integer("step", None, "With --workdir: the checkpoint step (default: best).")
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
  cfg, weights, task_C = run.method.sampler(run.params, t, run.data.task_descriptors()[t])
  return cfg, weights, task_C, run.data.image_shape, run.data.levels


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if bool(FLAGS.specialist) == bool(FLAGS.workdir):
    raise app.UsageError("give exactly one of --specialist or --workdir")
  if FLAGS.workdir and not FLAGS.task:
    raise app.UsageError("--workdir needs --task (a task name or index)")
  if FLAGS.specialist and (FLAGS.task or FLAGS.step is not None):
    raise app.UsageError("--task and --step go with --workdir; a specialist has one task")
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


if __name__ == "__main__":
  cli.run(main)
