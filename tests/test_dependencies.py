"""TensorFlow stays off the paths that do not need it (issue 31, item 2): TFDS prepares and
reads the datasets, and export, sampling, evaluation and planning start, without importing it,
and a run trains and writes its TensorBoard events (``training.tb_writer``) with TensorFlow
not installed; only ``--format=tflite`` exports need it (the ``tflite`` extra).

TFDS treats TensorFlow as absent unless it is already imported (``"tensorflow" in
sys.modules``), so a fresh process that never imports it takes TFDS's TensorFlow-free path.
The training check hides TensorFlow from ``sys.path``'s finder, as if it were not installed.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

from projectable.specialists import export, tflite

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHECK = """
import sys
from projectable.launchers import export  # noqa: F401  (one: their flags share names)
from projectable.experiments import memory  # noqa: F401  (plan)
from projectable.specialists import artifact, export, images  # noqa: F401  (evaluate, sample)
from projectable.training import restore  # noqa: F401
from configs import digits
from projectable import data as data_lib

config = digits.get_config("tiny")
config.data.tfds_data_dir = sys.argv[1]  # Empty: TFDS prepares digits here first.
data = data_lib.load(config.data)
assert data.num_tasks == 10, data.num_tasks
print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorboard")))
"""


def _python(code: str, *args, timeout: int) -> subprocess.CompletedProcess:
  """``code`` run by a fresh interpreter in the repo on ``args``, on the CPU; never raises."""
  return subprocess.run(
    [sys.executable, "-c", code, *map(str, args)],
    cwd=REPO,
    env={**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"},
    capture_output=True,
    text=True,
    timeout=timeout,
    check=False,
  )


def test_data_preparation_and_the_non_training_commands_never_import_tensorflow(tmp_path):
  result = _python(CHECK, tmp_path, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().splitlines()[-1] == "[]"
  assert os.listdir(tmp_path)  # It did prepare the dataset there.


TRAIN_WITHOUT_TENSORFLOW = """
import importlib.machinery
import importlib.util
import sys


class WithoutTensorFlow(importlib.machinery.PathFinder):
  @classmethod
  def find_spec(cls, name, path=None, target=None):
    if name.split(".")[0] == "tensorflow":
      return None
    return super().find_spec(name, path, target)


sys.meta_path[:] = [
  WithoutTensorFlow if f is importlib.machinery.PathFinder else f for f in sys.meta_path
]
assert importlib.util.find_spec("tensorflow") is None

from configs import digits
from projectable.training import loop

config = digits.get_config("tiny")
config.mesh = "data:1,model:1"
config.data.tfds_data_dir = sys.argv[2]
loop.train(config, sys.argv[1])
print(sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow"))
"""


def test_a_run_trains_and_writes_tensorboard_events_with_tensorflow_not_installed(tmp_path):
  workdir, tfds_dir = tmp_path / "run", tmp_path / "tfds"
  result = _python(TRAIN_WITHOUT_TENSORFLOW, workdir, tfds_dir, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().splitlines()[-1] == "[]"
  (events,) = [f for f in os.listdir(workdir) if f.startswith("events.out.tfevents.")]
  assert os.path.getsize(workdir / events) > 1000  # Scalars, texts, hparams and samples.


def test_a_tflite_export_without_the_extra_names_it_before_any_work(monkeypatch, tmp_path):
  real = importlib.util.find_spec
  monkeypatch.setattr(
    importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real(name, *a)
  )
  with pytest.raises(ValueError, match=r"needs tensorflow, .*projectable\[tflite\]"):
    export.export(str(tmp_path / "no_run"), str(tmp_path / "out"), fmt="tflite")
  monkeypatch.undo()
  tflite.require()  # This venv has the extra.
