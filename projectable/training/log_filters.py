"""Keeps the entry points' logs readable: library INFO chatter is dropped."""

from __future__ import annotations

import logging

_NOISY = ("orbax", "etils", "jax/_src", "tensorflow")


class QuietLibraries(logging.Filter):
  """Drops INFO records logged from Orbax, etils, JAX internals and TF; keeps warnings."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not any(p in record.pathname for p in _NOISY)


def quiet_library_logs() -> None:
  """Installs ``QuietLibraries`` on absl's logger (call from an entry point's main)."""
  logging.getLogger("absl").addFilter(QuietLibraries())
