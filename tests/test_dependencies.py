"""TensorFlow stays off the paths that do not need it (issue 31, item 2): TFDS prepares and
reads the datasets, and export, sampling, evaluation and planning start, without importing it.

TFDS treats TensorFlow as absent unless it is already imported (``"tensorflow" in
sys.modules``), so a fresh process that never imports it takes TFDS's TensorFlow-free path.
Training still imports it: clu's metric writers (``training/loop.py``) import TensorFlow.
"""

import os
import subprocess
import sys

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


def test_data_preparation_and_the_non_training_commands_never_import_tensorflow(tmp_path):
  result = subprocess.run(
    [sys.executable, "-c", CHECK, str(tmp_path)],
    cwd=REPO,
    env={**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"},
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().splitlines()[-1] == "[]"
  assert os.listdir(tmp_path)  # It did prepare the dataset there.
