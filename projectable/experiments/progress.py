"""Progress of an experiment of many points (runs): ``point k/N: <name> (ETA ...)``.

    progress = PointProgress(len(points))
    for k, (name, config) in enumerate(points, 1):
      progress.start(k, name)  # Logs "point 3/12: universal seed 1 (ETA 4:10)".
      ...train the point...
      progress.done()  # Or done(timed=False) for a point that was reused, not run.

The ETA is the mean wall time of the points finished so far (those ``done`` with
``timed=True``) times the points left, the one starting included, shared by ``processes``
(the shards of a frontier); ``?`` until one point has been timed. Where ``to_train`` says
how many points were left to train when the run started (a resumed frontier reuses the
others), the points left are at most those, less what the processes have trained since.
``start`` ends a point still open, as ``done()`` would.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from absl import logging

from projectable.training.console import format_duration


class PointProgress:
  """Logs the start of each of ``total`` points with an ETA from their mean wall time."""

  def __init__(
    self,
    total: int,
    clock: Callable[[], float] = time.monotonic,
    processes: int = 1,
    to_train: int | None = None,
  ):
    if total < 0:
      raise ValueError(f"total must be >= 0, got {total}")
    self.total, self.processes, self.to_train = total, processes, to_train
    self.clock = clock
    self.seconds: list[float] = []  # Wall time of each timed point, in order.
    self._open: float | None = None  # Start time of the point in progress.

  def eta_s(self, k: int) -> float:
    """Seconds left when point ``k`` (1-based) starts: mean point time x points left, over
    the processes that share them."""
    if not self.seconds:
      return float("inf")
    left = self.total - k + 1
    if self.to_train is not None:  # Each process is taken to have trained as many as this one.
      left = min(left, max(self.to_train - len(self.seconds) * self.processes, 1))
    return left * sum(self.seconds) / len(self.seconds) / self.processes

  def start(self, k: int, name: str) -> str:
    """Logs and returns ``point k/N: name (ETA ...)``; ends the previous point if open."""
    if self._open is not None:
      self.done()
    line = f"point {k}/{self.total}: {name} (ETA {format_duration(self.eta_s(k))})"
    logging.info("%s", line)
    self._open = self.clock()
    return line

  def done(self, timed: bool = True) -> None:
    """Ends the open point; ``timed=False`` leaves its time out of the ETA (e.g. reused)."""
    if self._open is not None and timed:
      self.seconds.append(self.clock() - self._open)
    self._open = None
