"""How every launcher ends: ``cli.run(main)`` instead of ``absl.app.run(main)``.

A user error (a bad flag or config value, missing or mismatched data, a busy workdir, a
refused overwrite) prints one ``error: ...`` line (the message may continue on the lines
below it) and exits with status 2, with no traceback; a fault the project names (a
damaged checkpoint, a failed checkpoint write, a non-finite loss) prints its name and
message and exits with status 1. Tracebacks stay available in the log at verbosity 1
(``--verbosity=1``).
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable

import jax
from absl import app, flags, logging

from projectable.experiments import config_names
from projectable.training.checkpoints import CheckpointWriteError, DamagedCheckpointError
from projectable.training.workdir_lock import WorkdirBusyError

USER_ERROR = 2  # The command cannot run as given: fix the command, the config or the data.
FAULT = 1  # Something the project detected went wrong while running.
USER_ERRORS = (
  app.UsageError,
  flags.Error,
  ValueError,  # Config validation, data, tasks (DataMismatchError included).
  FileNotFoundError,
  FileExistsError,
  PermissionError,  # An unwritable workdir (checkpoints probe it before training).
  WorkdirBusyError,
)
FAULTS = (DamagedCheckpointError, CheckpointWriteError, FloatingPointError)
_CACHE_DIR = flags.DEFINE_string(
  "compilation_cache_dir",
  "~/.cache/projectable/jax",
  "JAX's persistent cache of compiled programs: a rerun, a resume and the points of a sweep "
  "that differ only in learning rate, warmup, steps or seed reuse one compiled train step "
  "('' turns it off; the JAX_COMPILATION_CACHE_DIR variable, when set, wins).",
)


def _fail(status: int, message: str) -> None:
  logging.debug("The error's traceback:", exc_info=True)
  print(message, file=sys.stderr)
  # Asynchronous reads and writes cut short by the error can still report it again while
  # the interpreter shuts down (e.g. "Event loop is closed" tracebacks from Orbax's
  # TensorStore callbacks); the message above stays the last line.
  atexit.register(_silence_stderr)
  sys.exit(status)


def _silence_stderr() -> None:
  """Points file descriptor 2 at /dev/null (the last exit handler registered runs first)."""
  sys.stderr.flush()
  os.dup2(os.open(os.devnull, os.O_WRONLY), 2)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, a bad flag or ``--config.<field>`` override as one line; a
  shipped config may be named (``--config=digits:tiny``, ``experiments.config_names``)."""
  try:
    argv = config_names.resolve_argv(argv)
  except ValueError as e:
    _fail(USER_ERROR, f"error: {e}")
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    cause = e
    while cause.__cause__ or cause.__context__:
      cause = cause.__cause__ or cause.__context__
    if isinstance(cause, (AttributeError, KeyError)):  # An override of a field that is not.
      name = str(cause).strip("\"'")
      given = [a.partition("=")[0] for a in argv if a.partition("=")[0].endswith(f".{name}")]
      _fail(USER_ERROR, f"error: {', '.join(given) or name}: the config has no such field")
    _fail(USER_ERROR, f"error: {e}")


def _use_compilation_cache(path: str) -> None:
  """Points JAX's persistent compilation cache at ``path`` unless the environment named one."""
  if path and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))


def run(main: Callable[[list[str]], None]) -> None:
  """Runs a launcher's ``main`` under absl, mapping errors to statuses as described above."""

  def guarded(argv: list[str]) -> None:
    _use_compilation_cache(_CACHE_DIR.value)
    try:
      main(argv)
    except FAULTS as e:
      _fail(FAULT, f"error: {type(e).__name__}: {e}")
    except USER_ERRORS as e:
      _fail(USER_ERROR, f"error: {e}")

  app.run(guarded, flags_parser=_parse_flags)
