"""A ``jax.profiler`` trace of a window of training steps (TensorBoard's Profile tab)."""

from __future__ import annotations

import jax
from absl import logging

# Steps of a (re)started run left untraced first: the step's compilation and warm-up.
WARMUP_STEPS = 3


class StepTrace:
  """Traces ``num_steps`` train steps of this run into ``logdir``/plugins/profile.

  The window starts ``WARMUP_STEPS`` after ``start_step`` (the run's first step is
  ``start_step + 1``); ``num_steps`` 0 traces nothing. Call ``before(step, state)`` before
  dispatching a step and ``after(step, outputs)`` once it is dispatched; leaving the
  ``with`` block ends a trace that the run outlived (or an error cut short). The trace
  starts and stops on finished work, so it holds whole steps.
  """

  def __init__(self, logdir: str, start_step: int, num_steps: int):
    self._logdir = logdir
    self._first = start_step + 1 + WARMUP_STEPS
    self._last = self._first + num_steps - 1
    self._running = False

  def before(self, step: int, state) -> None:
    if step == self._first and self._last >= self._first:
      jax.block_until_ready(state)
      jax.profiler.start_trace(self._logdir)
      self._running = True

  def after(self, step: int, outputs) -> None:
    if self._running and step == self._last:
      jax.block_until_ready(outputs)
      self._stop(step)

  def __enter__(self) -> StepTrace:
    return self

  def __exit__(self, *exc_info) -> None:
    if self._running:
      self._stop(None)

  def _stop(self, step: int | None) -> None:
    jax.profiler.stop_trace()
    self._running = False
    until = f"-{step}" if step is not None else " to the run's end"
    logging.info(
      "jax.profiler trace of steps %d%s in %s/plugins/profile (TensorBoard: Profile)",
      self._first,
      until,
      self._logdir,
    )
