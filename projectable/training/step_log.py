"""Log steps: a console line, ``train/`` scalars in TensorBoard, and the non-finite policy.

Metrics are read one step behind (nanodo's habit): a log step's values are fetched
after the next step has been dispatched, so logging never stalls the device. Log steps
that are also evaluation, checkpoint or last steps are read at once: the checkpoint must
not hold a non-finite state, and the evaluation waits for the step anyway.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
from absl import logging

from projectable.core.metrics import LN2
from projectable.training import console, tb_writer


class Diverged(FloatingPointError):
  """Training stopped at a non-finite loss or gradient; ``step``: the step that showed it."""

  def __init__(self, message: str, step: int):
    super().__init__(message)
    self.step = step


def check_finite(step: int, metrics: dict) -> None:
  """Raises naming the first non-finite metric of ``step`` (``train.nonfinite='stop'``)."""
  for name, value in metrics.items():
    if not math.isfinite(value):
      raise Diverged(
        f"non-finite {name}={value} at step {step}; no checkpoint of this state was written. "
        "Lower config.train.learning_rate or raise config.train.grad_clip's strictness, then "
        "rerun to resume from the last good checkpoint (or set config.train.nonfinite='skip').",
        step,
      )


class SkipCounter:
  """Steps skipped under ``train.nonfinite='skip'``, read at log steps (no per-step sync)."""

  def __init__(self, limit: int):
    self.limit = limit
    self.consecutive = 0
    self.pending: list[tuple[int, dict]] = []

  def add(self, step: int, metrics: dict) -> None:
    self.pending.append((step, metrics))

  def check(self, upto: int) -> int:
    """Skipped steps up to ``upto`` since the last check; raises once ``limit`` steps in a
    row were skipped."""
    skipped = 0
    ready = [(s, m) for s, m in self.pending if s <= upto]
    self.pending = [(s, m) for s, m in self.pending if s > upto]
    for step, metrics in jax.device_get(ready):
      self.consecutive = self.consecutive + 1 if metrics["skipped"] else 0
      skipped += bool(metrics["skipped"])
      if self.consecutive >= self.limit:
        bad = ", ".join(f"{k}={v}" for k, v in metrics.items() if not math.isfinite(v))
        raise Diverged(
          f"{self.consecutive} consecutive steps up to step {step} had a non-finite loss or "
          f"gradient and were skipped (last: {bad}); config.train.max_skipped_steps="
          f"{self.limit}. Weights and optimizer state are those before the skips, as is every "
          "checkpoint. Lower config.train.learning_rate, then rerun to resume.",
          step,
        )
    return skipped


class StepLog:
  """Writes log steps: ``add`` every step, ``log`` at log steps, ``flush`` after dispatching
  the next step (writes the log step held back)."""

  def __init__(
    self,
    train,
    writer: tb_writer.Writer,
    schedule: Callable[[int], float],
  ):
    self.writer = writer
    self.schedule = schedule
    self.total = train.num_steps
    self.skips = SkipCounter(train.max_skipped_steps) if train.nonfinite == "skip" else None
    self.throughput = console.Throughput(train.num_steps)
    self.held: tuple[int, dict] | None = None

  def add(self, step: int, metrics: dict) -> None:
    if self.skips is not None:
      self.skips.add(step, metrics)

  def log(self, step: int, metrics: dict, now: bool) -> None:
    """Writes ``step`` at once if ``now``, else at the next ``flush``."""
    self.flush()
    self.held = (step, metrics)
    if now:
      self.flush()

  def flush(self) -> None:
    if self.held is not None:
      step, metrics = self.held
      self.held = None
      self._write(step, metrics)

  def _write(self, step: int, metrics: dict) -> None:
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}  # Waits for the step.
    rate, eta = self.throughput.update(step)
    skipped = None
    if self.skips is not None:  # Skipped steps left the state finite; a long run of them stops.
      del values["skipped"]  # This step's flag; the count since the last log replaces it.
      skipped = self.skips.check(step)
    else:
      check_finite(step, values)
    # The learning rate of the update that made this step (the optimizer counts from 0).
    learning_rate = float(self.schedule(step - 1))
    scalars = {f"train/{k}": v for k, v in values.items()}
    scalars["train/bits_per_dim"] = values["nll"] / LN2
    scalars["train/learning_rate"] = learning_rate
    if skipped is not None:
      scalars["train/skipped_steps"] = skipped
    if not math.isnan(rate):
      scalars["train/steps_per_s"] = rate
    self.writer.write_scalars(step, scalars)
    logging.info(
      "%s",
      console.step_line(
        step,
        self.total,
        values["loss"],
        values["nll"] / LN2,
        learning_rate,
        rate,
        eta,
        skipped,
      ),
    )
