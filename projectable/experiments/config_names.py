"""Shipped configs by name: ``--config=digits:tiny`` as well as ``--config=configs/digits.py:tiny``.

The configs live in the checkout's top-level ``configs/`` directory; a wheel ships that same
directory as the package ``projectable.configs`` (``[tool.setuptools.package-dir]``), so a
name resolves to the one copy either way. A value with a ``/`` or a ``.py`` is a path, as
``ml_collections.config_flags`` reads it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

CONFIG_FLAGS = ("--config",)  # The launchers' config-file flags.


def config_dir() -> Path:
  """The directory of the shipped configs: the installed package's, else the checkout's."""
  spec = importlib.util.find_spec("projectable.configs")
  if spec is not None and spec.submodule_search_locations:
    return Path(next(iter(spec.submodule_search_locations)))
  return Path(__file__).resolve().parents[2] / "configs"


def names() -> list[str]:
  """The shipped configs' names (``digits``, ``fashion_mnist``, ...)."""
  return sorted(p.stem for p in config_dir().glob("*.py") if not p.stem.startswith("_"))


def resolve(value: str) -> str:
  """``name[:variant]`` -> ``/path/to/name.py[:variant]``; a path is returned as given.

  An unknown name is a ValueError that lists the shipped ones."""
  path, sep, variant = value.partition(":")
  if not path or "/" in path or os.sep in path or path.endswith(".py"):
    return value
  file = config_dir() / f"{path}.py"
  if not file.is_file() or path.startswith("_"):
    raise ValueError(
      f"--config={value}: no shipped config named {path!r}; use one of {names()} "
      "(e.g. --config=digits:tiny) or a path (e.g. --config=configs/digits.py:tiny)"
    )
  return f"{file}{sep}{variant}"


def resolve_argv(argv: list[str]) -> list[str]:
  """``argv`` with every config flag's name resolved to its file (``--config=NAME`` and
  ``--config NAME`` forms)."""
  out = list(argv)
  for i, arg in enumerate(out):
    name, eq, value = arg.partition("=")
    if name in CONFIG_FLAGS and eq:
      out[i] = f"{name}={resolve(value)}"
    elif arg in CONFIG_FLAGS and i + 1 < len(out) and i > 0:
      out[i + 1] = resolve(out[i + 1])
  return out
