"""Preemption: SIGTERM makes the loop save a checkpoint of the current step and exit."""

from __future__ import annotations

import signal
import threading

import jax


class Preempted(Exception):
  """Training stopped on SIGTERM after saving a checkpoint of the current step."""


class StopRequest:
  """Set by SIGTERM (preemption): the loop saves a checkpoint and exits cleanly.

  Single-process runs only: with several processes, JAX's preemption service (on by
  default with ``jax.distributed``; TPU maintenance events included) takes SIGTERM on any
  host and Orbax's ``reached_preemption`` stops every host at the same step.
  """

  def __init__(self):
    self.event = threading.Event()
    self._previous = None

  def __enter__(self) -> StopRequest:
    if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self.event.set())
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  @property
  def requested(self) -> bool:
    return self.event.is_set()
