"""One writer per workdir, with real processes: a second writer is refused at once naming
the holder, a killed holder's lock is taken over, and two ``--fresh`` never share a dir."""

import os
import signal
import subprocess
import sys
import time

import pytest

from projectable.experiments.run import train_and_evaluate
from projectable.training import workdir_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLD = """
import sys
from projectable.training import workdir_lock
with workdir_lock.WorkdirLock(sys.argv[1], "test holder"):
  print("held", flush=True)
  sys.stdin.read()
"""
FRESH = """
import os, sys, time
from projectable.training import workdir_guard
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
  time.sleep(0.001)
print(workdir_guard.fresh_workdir(sys.argv[1]), flush=True)
sys.stdin.read()
"""
PROBE = """
import os, sys, time
from projectable.training import checkpoints
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
  time.sleep(0.001)
for _ in range(300):
  checkpoints._check_writable(sys.argv[1])
print("probed", flush=True)
sys.stdin.read()
"""


def _start(script: str, *args: str) -> subprocess.Popen:
  env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
  return subprocess.Popen(
    [sys.executable, "-c", script, *args],
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
    env=env,
  )


@pytest.fixture
def holder(tmp_path):
  """A live process holding the lock on ``tmp_path/run``; killed at the end."""
  workdir = str(tmp_path / "run")
  proc = _start(HOLD, workdir)
  assert proc.stdout.readline().strip() == "held"
  yield workdir, proc
  proc.kill()
  proc.wait()


def test_a_second_writer_is_refused_at_once_naming_the_holder(holder, tiny_config):
  workdir, proc = holder
  start = time.time()
  with pytest.raises(workdir_lock.WorkdirBusyError, match=rf"pid {proc.pid}.*--fresh"):
    train_and_evaluate(tiny_config, workdir)
  assert time.time() - start < 30  # Data loading only: no waiting on the holder.
  assert os.listdir(workdir) == [workdir_lock.LOCK_FILE]  # Nothing of a run was written.


def test_the_lock_of_a_killed_run_is_taken_over(holder):
  workdir, proc = holder
  assert not workdir_lock.try_claim(workdir, "second")
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert workdir_lock.holder(workdir)["pid"] == proc.pid  # The stale file is still there ...
  assert workdir_lock.try_claim(workdir, "second")  # ... and its lock is free.
  assert workdir_lock.holder(workdir)["pid"] == os.getpid()
  assert workdir_lock.try_claim(workdir, "again")  # Re-entrant within one process.
  workdir_lock.release(workdir)
  workdir_lock.release(workdir)
  assert workdir_lock.try_claim(workdir, "third")
  workdir_lock.release(workdir)


def test_two_fresh_runs_started_together_claim_different_workdirs(tmp_path):
  base, go = str(tmp_path / "run"), str(tmp_path / "go")
  procs = [_start(FRESH, base, go) for _ in range(2)]
  try:
    assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]
    open(go, "w").close()  # Both are polling for it: they ask for a directory together.
    chosen = sorted(p.stdout.readline().strip() for p in procs)
  finally:
    for p in procs:
      p.kill()
      p.wait()
  assert chosen == [base, f"{base}-1"]


def test_processes_of_one_run_probe_a_checkpoint_dir_together(tmp_path):
  """The processes of a multi-host run check one directory at once (a shared disk): each
  probe file is its own, so none removes another's (CI failed so once)."""
  directory, go = str(tmp_path / "run" / "best"), str(tmp_path / "go")
  procs = [_start(PROBE, directory, go) for _ in range(2)]
  try:
    assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]
    open(go, "w").close()
    assert [p.stdout.readline().strip() for p in procs] == ["probed", "probed"]
  finally:
    for p in procs:
      p.kill()
      p.wait()
  assert os.listdir(directory) == []


def test_the_launcher_refuses_a_busy_workdir_before_training(holder, run_launcher):
  workdir, proc = holder  # cli.run turns the error into exit status 2 (tests/test_cli.py).
  with pytest.raises(workdir_lock.WorkdirBusyError, match=f"pid {proc.pid}"):
    run_launcher("train", ["--config=configs/digits.py:tiny", f"--workdir={workdir}"])
  assert os.listdir(workdir) == [workdir_lock.LOCK_FILE]
