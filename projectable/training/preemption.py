"""Preemption: SIGTERM makes the loop save a checkpoint of the current step and exit."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

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


_COMPILE_THREAD = "compile-train-step"


def exit_process(code: int) -> None:
  """``sys.exit(code)``; at once (``os._exit``, after flushing) while a compilation that a
  stop abandoned still runs: finalising the interpreter under it can abort in XLA's C++
  (exit -6 instead of ``code``). Nothing is lost: no step trained, checkpoints are closed."""
  if any(t.name == _COMPILE_THREAD and t.is_alive() for t in threading.enumerate()):
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  sys.exit(code)


def compile_unless_stopped(
  jitted: Any, args: tuple, mesh: jax.sharding.Mesh, stop: StopRequest
) -> Callable | None:
  """``jitted`` compiled for ``args`` under ``mesh``, or None if SIGTERM comes first.

  Compilation runs in a daemon thread while this one waits on ``stop``, so a preemption
  notice during a long compilation stops the run at once instead of after the first step
  (nothing is lost: no step has trained since the state was restored or initialised).
  """
  outcome: dict[str, Any] = {}

  def compile_() -> None:
    try:
      with jax.set_mesh(mesh):  # The mesh context is per thread.
        outcome["compiled"] = jitted.lower(*args).compile()
    except BaseException as e:  # Raised again in the caller's thread.
      outcome["error"] = e

  thread = threading.Thread(target=compile_, name=_COMPILE_THREAD, daemon=True)
  thread.start()
  while thread.is_alive():
    if stop.event.wait(0.1):
      return None
  if "error" in outcome:
    raise outcome["error"]
  return outcome["compiled"]
