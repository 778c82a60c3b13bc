r"""Scores an exported specialist on the test images of a class set.

  projectable-evaluate --specialist=OUT/pair38 --workdir=/tmp/digits
  projectable-evaluate --specialist=OUT/3 --config=digits --classes=3,8

The data (and so the test split) come from the specialist's training run
(--workdir) or from a config file with overrides (--config); --classes (indices
or class names) defaults to the classes the specialist was made for. Prints the
test bits/dim of the set and of each of its classes and writes them as JSON to
--out (default SPECIALIST/eval/test_<classes>.json).
"""

import json
import os

from absl import app, flags
from ml_collections import config_flags

from projectable import launchers
from projectable.specialists import export
from projectable.training import restore, validation

FLAGS = flags.FLAGS
flags.DEFINE_string("specialist", None, "An exported specialist directory (OUT/<task>).")
flags.DEFINE_string("workdir", None, "The training workdir whose data config to use.")
config_flags.DEFINE_config_file(
  "config", None, "A config file whose data to use (or --workdir).", lock_config=True
)
flags.DEFINE_string("classes", None, "Comma-separated class indices or names (default: its own).")
flags.DEFINE_string("out", None, "JSON file for the scores.")
flags.mark_flags_as_required(["specialist"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if bool(FLAGS.workdir) == (FLAGS.config is not None):
    raise app.UsageError("give exactly one of --workdir or --config (where the data come from)")
  try:
    if FLAGS.config is not None:
      validation.validate(FLAGS.config)  # A bad value is one line naming the field.
    config = restore.read_config(FLAGS.workdir) if FLAGS.workdir else FLAGS.config
    scores = export.evaluate_specialist(FLAGS.specialist, config, FLAGS.classes)
  except (FileNotFoundError, ValueError) as e:
    raise app.UsageError(str(e)) from e
  classes = "_".join(str(c) for c in scores["classes"])
  out = FLAGS.out or os.path.join(FLAGS.specialist, "eval", f"test_{classes}.json")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    json.dump(scores, f, indent=2)
  print(
    f"{scores['task']} on test classes {scores['class_names']} ({scores['num_images']} images): "
    f"{scores['bits_per_dim']:.4f} bits/dim"
  )
  for name, score in scores["per_class"].items():
    print(f"  class {name}: {score['bits_per_dim']:.4f} bits/dim ({score['num_images']} images)")
  print(f"wrote {out}")


def run() -> None:
  """The ``projectable-evaluate`` command."""
  launchers.serve(__name__, main)
