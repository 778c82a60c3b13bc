"""What a training run prints: one short line per log step and per evaluation.

Every message stays within ``MAX_LINE`` characters; per-task values go only to TensorBoard
and ``eval/metrics.json``. ``Throughput`` turns the times at which log steps finished
into the recent steps/s and an ETA from the mean pace since the first step.
"""

from __future__ import annotations

import time
from collections.abc import Callable

MAX_LINE = 144  # Characters of a message: with absl's ~55-character prefix a line fits in 200.


def format_duration(seconds: float) -> str:
  """``'1:02:03'``, ``'2:03'`` or ``'4s'``; ``'?'`` when not finite or negative."""
  if not 0 <= seconds < float("inf"):
    return "?"
  seconds = round(seconds)
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f"{hours}:{minutes:02d}:{secs:02d}"
  return f"{minutes}:{secs:02d}" if minutes else f"{secs}s"


class Throughput:
  """Steps/s since the previous log step, and an ETA from the mean pace of the run.

  The pace is measured from ``mark`` (the end of the run's first step, which waits for
  compilation) or else from the first ``update``.
  """

  def __init__(self, total: int, clock: Callable[[], float] = time.monotonic):
    self.total = total
    self.clock = clock
    self.first: tuple[int, float] | None = None  # (step, time) the pace is measured from.
    self.last: tuple[int, float] | None = None

  def mark(self, step: int) -> None:
    """``step`` has just finished: the pace of the ETA is measured from here."""
    self.first = self.last = (step, self.clock())

  def update(self, step: int) -> tuple[float, float]:
    """(steps/s since the previous call, seconds left) once ``step`` has finished; NaN for
    the steps/s of the first call and an unknown ETA (inf) until two steps are timed."""
    now = self.clock()
    rate = float("nan")
    if self.last is not None and step > self.last[0]:
      rate = (step - self.last[0]) / max(now - self.last[1], 1e-9)
    if self.first is None:
      self.first = (step, now)
    self.last = (step, now)
    done, elapsed = step - self.first[0], now - self.first[1]
    left = (self.total - step) * elapsed / done if done > 0 else float("inf")
    return rate, 0.0 if step >= self.total else left


def step_line(
  step: int,
  total: int,
  loss: float,
  bits_per_dim: float,
  learning_rate: float,
  steps_per_s: float,
  eta_s: float,
  skipped: int | None = None,
) -> str:
  """``step 3/6 loss=2.83315 bits/dim=4.0874 lr=6.67e-04 steps/s=1.52 ETA 4s``."""
  rate = "-" if steps_per_s != steps_per_s else f"{steps_per_s:.3g}"
  line = (
    f"step {step}/{total} loss={loss:.6g} bits/dim={bits_per_dim:.4f} "
    f"lr={learning_rate:.3g} steps/s={rate} ETA {format_duration(eta_s)}"
  )
  if skipped is not None:
    line += f" skipped={skipped}"
  return line[:MAX_LINE]


def eval_line(
  step: int,
  total: int,
  val: float,
  test: float,
  best_val: float,
  best_step: int,
  num_tasks: int,
  extra: dict[str, float] | None = None,
) -> str:
  """One evaluation: mean val and test bits/dim over tasks, and the best val so far."""
  more = "".join(f", {name} test {value:.4f}" for name, value in (extra or {}).items())
  line = (
    f"eval step {step}/{total}: val {val:.4f} test {test:.4f} bits/dim "
    f"(mean of {num_tasks} tasks{more}); best val {best_val:.4f} at step {best_step}"
  )
  return line[:MAX_LINE]
