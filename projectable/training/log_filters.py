"""Keeps the entry points' logs readable: library INFO chatter is dropped."""

from __future__ import annotations

import logging

from absl import logging as absl_logging

_NOISY = ("orbax", "etils", "jax/_src", "tensorflow")
# Warnings a library logs on every normal run: Orbax restoring some items of a composite
# checkpoint (the weights of a train state, as export and evaluation do).
_EXPECTED_WARNINGS = ("was found in the checkpoint, but could not be restored",)


class QuietLibraries(logging.Filter):
  """Drops INFO records logged from Orbax, etils, JAX internals and TF, and the warnings
  Orbax logs on every partial restore; keeps every other warning."""

  def filter(self, record: logging.LogRecord) -> bool:
    noisy = any(p in record.pathname for p in _NOISY)
    if record.levelno >= logging.WARNING:
      return not (noisy and any(w in record.getMessage() for w in _EXPECTED_WARNINGS))
    return not noisy


def quiet_library_logs() -> None:
  """Installs ``QuietLibraries`` on absl's log handler, which prints what absl, JAX's and
  TensorFlow's loggers log (call from an entry point; installing it twice is harmless)."""
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, QuietLibraries) for f in handler.filters):
    handler.addFilter(QuietLibraries())
