"""``projectable-frontier`` as a script (projectable/launchers/frontier.py)."""

import sys

# A fresh import each time this file runs: tests execute it repeatedly in one process and
# drop the flags it defined in between, so the launcher's module must define them again.
sys.modules.pop("projectable.launchers.frontier", None)

from projectable.launchers.frontier import main, run  # noqa: E402

__all__ = ["main"]

if __name__ == "__main__":
  run()
