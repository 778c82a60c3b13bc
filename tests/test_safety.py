"""Workdir safety: SIGTERM saves the current step; incompatible restarts are refused."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from projectable import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sigterm_saves_the_current_step_and_exits_cleanly(tmp_path):
  workdir = str(tmp_path)
  env = {**os.environ, "XLA_FLAGS": "", "PYTHONPATH": REPO}
  proc = subprocess.Popen(
    [
      sys.executable,
      os.path.join(REPO, "launch", "train.py"),
      "--config",
      os.path.join(REPO, "configs", "digits.py") + ":tiny",
      f"--workdir={workdir}",
      "--config.train.num_steps=100000",
      "--config.train.checkpoint_every=100000",
      "--config.train.eval_every=100000",
    ],
    env=env,
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.time() + 120
  events = None
  while time.time() < deadline and not events:  # Wait until training is under way.
    time.sleep(0.5)
    events = [f for f in os.listdir(workdir) if f.startswith("events")]
  time.sleep(3)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err[-2000:]
  assert "stopped by SIGTERM at step" in err
  steps = [int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()]
  stopped_at = int(err.split("stopped by SIGTERM at step ")[1].split(";")[0])
  assert steps == [stopped_at] and 0 < stopped_at < 100000


def test_restart_with_an_incompatible_config_is_refused_with_a_diff(tiny_config, tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_config, workdir)
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  tiny_config.small.d = 8
  tiny_config.mode = "universal"
  with pytest.raises(ValueError, match=r"(?s)mode: workdir has 'projectable'.*small\.d"):
    train.train_and_evaluate(tiny_config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


def test_non_finite_loss_stops_with_the_step_and_keeps_good_checkpoints(tiny_config, tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_config, workdir)
  tiny_config.train.num_steps = 12
  tiny_config.train.learning_rate = 1e7  # Diverges at once.
  with pytest.raises(FloatingPointError, match=r"non-finite \w+=\S+ at step (7|8|9)\b"):
    train.train_and_evaluate(tiny_config, workdir)
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  assert steps == [3, 6]
  _, params, _ = train.restore_params(tiny_config, workdir, step=6)
  assert all(np.isfinite(p).all() for p in jax.tree.leaves(params))
