"""Workdir safety: a restart must match the run it resumes; SIGTERM saves and exits.

Fields that change what a checkpoint means (mode, data, architectures,
projector, seed, mesh-independent optimizer shape) must equal those of the
run that wrote the workdir; run-length and logging fields may change.
"""

from __future__ import annotations

import json
import os
import signal
import threading

import ml_collections

# Top-level sections or fields that may differ between a run and its resumption.
_MAY_CHANGE = {"mesh", "samples", "sharding"}
_TRAIN_MAY_CHANGE = {
  "learning_rate",
  "warmup_steps",
  "weight_decay",
  "grad_clip",
  "num_steps",
  "eval_every",
  "log_every",
  "checkpoint_every",
  "keep_checkpoints",
  "eval_chunk",
}


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(_flatten(value, name + "."))
    else:
      out[name] = value
  return out


def _relevant(name: str) -> bool:
  top, _, rest = name.partition(".")
  return top not in _MAY_CHANGE and not (top == "train" and rest in _TRAIN_MAY_CHANGE)


def check_compatible(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises with a diff when ``workdir`` holds a run of an incompatible config."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path) or not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return
  with open(path) as f:
    saved = _flatten(json.load(f))
  current = _flatten(json.loads(config.to_json_best_effort()))
  diff = [
    f"  {name}: workdir has {saved.get(name)!r}, config has {current.get(name)!r}"
    for name in sorted(set(saved) | set(current))
    if _relevant(name) and saved.get(name) != current.get(name)
  ]
  if diff:
    raise ValueError(
      f"{workdir} holds a run with a different config; resuming it would mix two "
      "experiments:\n" + "\n".join(diff) + "\nUse a new --workdir to start fresh, or "
      "restore the old values to resume."
    )


class Preempted(Exception):
  """Training stopped on SIGTERM after saving a checkpoint of the current step."""


class StopRequest:
  """Set by SIGTERM (preemption): the loop saves a checkpoint and exits cleanly."""

  def __init__(self):
    self.event = threading.Event()
    self._previous = None

  def __enter__(self) -> StopRequest:
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self.event.set())
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  @property
  def requested(self) -> bool:
    return self.event.is_set()
