"""One writer per workdir: an exclusive lock on ``DIR/.writer_lock`` for a run's lifetime.

The lock is ``fcntl.flock`` on that file: a second writer is refused at once, naming the
holder (host, pid, what it runs, since when) from the file's JSON. The kernel drops the
lock when its holder exits, SIGKILL included, so a lock file left by a killed run is
simply taken over (its stale JSON is rewritten). Within one process the lock is
re-entrant: ``--fresh`` claims its directory, and the training run it starts holds the
same lock. Multi-process runs lock on process 0 only (``jax.process_index() == 0``).
flock is per host: on a shared filesystem two hosts are told apart only where the
filesystem supports it (local disks and most NFSv4 mounts do).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time

LOCK_FILE = ".writer_lock"
_HELD: dict[str, list[int]] = {}  # realpath of the workdir -> [fd, depth]


class WorkdirBusyError(RuntimeError):
  """Another process is writing to the workdir."""


def _path(workdir: str) -> str:
  return os.path.realpath(workdir)


def holder(workdir: str) -> dict | None:
  """What the lock file says about its last holder (None if unreadable or absent)."""
  try:
    with open(os.path.join(workdir, LOCK_FILE)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def try_claim(workdir: str, what: str) -> bool:
  """Takes (or re-enters) the lock on ``workdir``, creating it; False if another holds it."""
  key = _path(workdir)
  if key in _HELD:
    _HELD[key][1] += 1
    return True
  os.makedirs(key, exist_ok=True)
  fd = os.open(os.path.join(key, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    return False
  info = {"host": socket.gethostname(), "pid": os.getpid(), "what": what}
  info["since"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps(info).encode(), 0)
  _HELD[key] = [fd, 1]
  return True


def release(workdir: str) -> None:
  """Leaves one level of this process's lock on ``workdir``; unlocks at the outermost."""
  key = _path(workdir)
  entry = _HELD[key]
  entry[1] -= 1
  if entry[1] == 0:
    del _HELD[key]
    fcntl.flock(entry[0], fcntl.LOCK_UN)
    os.close(entry[0])


class WorkdirLock:
  """``with WorkdirLock(workdir, what):`` holds the lock or raises ``WorkdirBusyError``."""

  def __init__(self, workdir: str, what: str, enabled: bool = True):
    self.workdir, self.what, self.enabled = workdir, what, enabled

  def __enter__(self) -> WorkdirLock:
    if self.enabled and not try_claim(self.workdir, self.what):
      held = holder(self.workdir) or {}
      by = ", ".join(f"{k} {held[k]}" for k in ("what", "host", "pid", "since") if k in held)
      raise WorkdirBusyError(
        f"{self.workdir} is in use by another run ({by or 'holder unknown'}); two writers "
        "would mix their checkpoints and results. Wait for it to finish, or pass --fresh "
        "(or another --workdir) to run this one apart."
      )
    return self

  def __exit__(self, *exc) -> None:
    if self.enabled:
      release(self.workdir)
