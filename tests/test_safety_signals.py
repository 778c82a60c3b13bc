"""Workdir safety under signals: SIGTERM saves the current step or stops a compilation at
once, SIGKILL at any moment loses no work (``launch/train.py`` subprocesses; the rest of the
safety tests are in test_safety.py, a file of their own so that xdist runs both at once)."""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(workdir: str, log: str, *flags: str) -> subprocess.Popen:
  """``launch/train.py`` on the tiny config, logging to ``log``; shares this process's
  compilation cache, and its 4 CPU devices (XLA_FLAGS) and mesh as ``tiny_config``."""
  env = {
    **os.environ,
    "PYTHONPATH": REPO,
    "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
  }
  command = [sys.executable, os.path.join(REPO, "launch", "train.py")]
  command += ["--config", os.path.join(REPO, "configs", "digits.py") + ":tiny"]
  command += [f"--workdir={workdir}", "--config.mesh=data:1,model:1", *flags]
  with open(log, "w") as f:
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=f)


def _wait_until(proc: subprocess.Popen, log: str, condition, poll: float = 0.005) -> bool:
  """Polls ``condition()`` until it holds (True) or ``proc`` exits (False); bounded."""
  deadline = time.time() + 300
  while not condition():
    if proc.poll() is not None:
      return False
    if time.time() > deadline:
      proc.kill()
      with open(log) as f:
        pytest.fail("launch/train.py never got there:\n" + f.read()[-3000:])
    time.sleep(poll)
  return True


def _logged(log: str, pattern: str) -> bool:
  with open(log) as f:
    return re.search(pattern, f.read()) is not None


def test_sigterm_saves_the_current_step_and_exits_cleanly(tmp_path):
  workdir, log = str(tmp_path / "run"), str(tmp_path / "log")
  proc = _launch(
    workdir,
    log,
    "--config.train.num_steps=100000",
    "--config.train.checkpoint_every=100000",
    "--config.train.eval_every=100000",
  )
  assert _wait_until(proc, log, lambda: _logged(log, r"step 3/\d+ loss="), poll=0.2)
  proc.send_signal(signal.SIGTERM)
  proc.wait(timeout=120)
  with open(log) as f:
    err = f.read()
  assert proc.returncode == 143, err[-2000:]
  steps = [int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()]
  stopped_at = int(err.split("stopped by SIGTERM at step ")[1].split(";")[0])
  assert steps == [stopped_at] and 3 <= stopped_at < 100000


def test_sigterm_while_compiling_stops_at_once_without_training(tmp_path):
  """A preemption notice during the first compilation does not wait for it to finish."""
  workdir, log = str(tmp_path / "run"), str(tmp_path / "log")
  # A train step of its own shape: no cache hit can finish before the signal, and the
  # step, never compiled to the end, never enters the cache.
  proc = _launch(workdir, log, "--config.train.examples_per_task=5")
  assert _wait_until(proc, log, lambda: _logged(log, "compiling the train step"), poll=0.05)
  proc.send_signal(signal.SIGTERM)
  proc.wait(timeout=120)
  with open(log) as f:
    err = f.read()
  assert proc.returncode == 143, err[-2000:]
  assert "SIGTERM while compiling: stopping before step 1" in err
  assert "compiled the train step" not in err and not re.search(r"step 1/\d+ loss=", err)
  assert "stopped by SIGTERM at step 0; no step had trained yet" in err
  assert not os.path.exists(os.path.join(workdir, "config.json"))  # Rerun: a fresh start.


def test_sigkill_at_any_moment_loses_no_work(tiny_config, tmp_path, saved_states, trained_tiny_run):
  """Kills after a step and inside a checkpoint write; the rerun ends bit-identical to an
  uninterrupted run (saving every third step: the saves do not change the training). The
  first launch, with --fresh, trains beside that reference."""
  rng = np.random.default_rng(8)
  reference, workdir = str(tmp_path), str(tmp_path) + "-1"
  expected = trained_tiny_run
  flags = ["--config.train.checkpoint_every=1"]
  ckpt_dir = os.path.join(workdir, "checkpoints")

  def latest() -> int:
    return max([0] + [int(s) for s in os.listdir(ckpt_dir) if s.isdigit()])

  def writes() -> list[str]:  # Unfinished (temporary) step directories of both managers.
    return glob.glob(os.path.join(workdir, "*", "*.orbax-checkpoint-tmp*"))

  log = str(tmp_path / "log1")  # 1. A seeded moment after a seeded step.
  proc = _launch(reference, log, "--fresh", *flags)
  step = int(rng.integers(1, 3))
  assert _wait_until(proc, log, lambda: _logged(log, rf"step {step}/\d+ loss="), poll=0.01)
  time.sleep(rng.uniform(0, 0.2))
  proc.kill()
  assert proc.wait() == -signal.SIGKILL
  assert _logged(log, re.escape(f"training in {workdir}")) and latest() < 6
  log, target = str(tmp_path / "log2"), int(rng.integers(latest() + 1, 7))
  proc = _launch(workdir, log, *flags)  # 2. Inside the checkpoint write of a seeded step.
  # A step comes after the removal of the unfinished writes of the first kill.
  assert _wait_until(proc, log, lambda: _logged(log, r"step \d/\d+ loss="), poll=0.01)
  unfinished = os.path.join(ckpt_dir, f"{target}.orbax-checkpoint-tmp*")
  assert _wait_until(proc, log, lambda: glob.glob(unfinished))
  proc.kill()
  assert proc.wait() == -signal.SIGKILL
  assert glob.glob(unfinished) and latest() < target, "the kill missed the checkpoint write"
  proc = _launch(workdir, str(tmp_path / "log3"), *flags)  # 3. Cleans up and finishes.
  assert proc.wait() == 0
  assert not writes()
  want, got = (
    saved_states(tiny_config, reference, [6])[6],
    saved_states(tiny_config, workdir, [6])[6],
  )
  jax.tree.map(np.testing.assert_array_equal, want, got)
  with open(os.path.join(workdir, "eval", "metrics.json")) as f:
    assert json.load(f)["bits_per_dim"] == expected["bits_per_dim"]
