"""The command-line entry points: ``projectable-train``, ``-export``, ``-sample``, ...

Each module here is one command: its flags, ``main(argv)`` (absl's main) and ``run()``, the
console script, which ends in ``cli.run(main)``; ``launch/<name>.py`` wraps the same module.

Importing this package prepares the process for command-line use, before any launcher
imports TensorFlow (TFLite conversion, TensorBoard writers): TensorFlow's C++ logs below
errors (the converter's warnings) and its Python warnings are dropped.
``TF_CPP_MIN_LOG_LEVEL`` becomes 2 when unset or 1, which JAX's import sets when it is unset
and which still lets TF print INFO lines; any other value a user sets (0 to see everything)
is kept. The two INFO lines TF prints as it loads (oneDNN) ignore a level set inside the
process: set it in the shell to drop them too.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable

if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "1") == "1":
  os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
warnings.filterwarnings("ignore", module=r"(tensorflow|tf_keras|keras|tensorboard)(\.|$)")

from absl import flags  # noqa: E402

from projectable.experiments import cli  # noqa: E402
from projectable.training import log_filters  # noqa: E402


def serve(module_name: str, main: Callable[[list[str]], None]) -> None:
  """Runs launcher ``module_name``'s ``main`` as the command: library logs quieted, its
  docstring and flags in ``--help`` (absl shows the main module's), ``cli.run``'s exits."""
  log_filters.quiet_library_logs()
  module = sys.modules[module_name]
  main_module = sys.modules["__main__"]
  main_module.__doc__ = module.__doc__
  command = sys.argv[0]
  for flag in flags.FLAGS.get_flags_for_module(module_name):
    flags.FLAGS.register_key_flag_for_module(command, flag)
  cli.run(main)
