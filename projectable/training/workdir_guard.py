"""Workdir safety: a restart must match the run it resumes; ``--fresh`` never reuses a run.

Fields that change what a checkpoint means (mode, data, architectures,
projector, seed, mesh-independent optimizer shape) must equal those of the
run that wrote the workdir; run-length, logging and recovery fields may change.
``fresh_workdir`` picks and claims where ``--fresh`` trains without touching existing runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from projectable.training import workdir_lock
from projectable.training.config import with_defaults

# Top-level sections or fields that may differ between a run and its resumption.
_MAY_CHANGE = {"mesh", "samples", "sharding", "restore_step"}
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
  "unroll_layers",
  "fast_compile",
  "compute_dtype",
  "remat",
  "attention",
  "nonfinite",
  "max_skipped_steps",
  "profile_steps",
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


DATA_KEY = "data_fingerprint"  # config.json's record of the data the run trained on.


class DataMismatchError(ValueError):
  """The workdir's run trained on other data than the config now gives."""


def _read_config_json(workdir: str) -> dict | None:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(
        f"{path} is not valid JSON ({e}); restore it from the run's command line, or train "
        "with --fresh in a new workdir"
      ) from e


def saved_config(workdir: str) -> dict | None:
  """The config.json of the run in ``workdir``, fields added since it was written at their
  defaults (``with_defaults``), or None; without the data fingerprint."""
  saved = _read_config_json(workdir)
  if saved is None:
    return None
  saved.pop(DATA_KEY, None)
  return with_defaults(saved)


def check_same_data(fingerprint: dict, workdir: str) -> None:
  """Raises ``DataMismatchError`` with both fingerprints when ``workdir``'s run was trained
  on other data (runs written before fingerprints existed are not checked)."""
  saved = (_read_config_json(workdir) or {}).get(DATA_KEY)
  if saved is None or saved == fingerprint:
    return
  diff = [
    f"  {key}: workdir's run had {saved.get(key)!r}, the config's data has {fingerprint[key]!r}"
    for key in fingerprint
    if saved.get(key) != fingerprint[key]
  ]
  raise DataMismatchError(
    f"{workdir} holds a run trained on other data; resuming it would mix two datasets:\n"
    + "\n".join(diff)
    + "\nPoint config.data at the data it was trained on, or train with --fresh in a new "
    "workdir (nothing is deleted). Its checkpoints are not damaged."
  )


def holds_run(workdir: str) -> bool:
  """Whether ``workdir`` has a run's config.json or checkpoints."""
  return any(os.path.exists(os.path.join(workdir, p)) for p in ("config.json", "checkpoints"))


def first_free(path: str, taken: Callable[[str], bool] = os.path.exists) -> str:
  """``path`` if not ``taken``, else the first ``<path>-N`` (N = 1, 2, ...) that is not."""
  path = os.path.normpath(path)
  candidate, n = path, 0
  while taken(candidate):
    n += 1
    candidate = f"{path}-{n}"
  return candidate


def _claimed_elsewhere_or_run(path: str) -> bool:
  """Whether ``path`` holds a run or another writer; claims its lock for this process if not."""
  if holds_run(path) or not workdir_lock.try_claim(path, "training (--fresh)"):
    return True
  if holds_run(path):  # A run finished there between the check and the claim.
    workdir_lock.release(path)
    return True
  return False


def fresh_workdir(workdir: str) -> str:
  """Where ``--fresh`` trains: ``workdir``, or the first ``<workdir>-N`` holding no run,
  claimed atomically (its lock, kept by this process): two ``--fresh`` started at the same
  moment get different directories."""
  if jax.process_index() == 0:
    chosen = first_free(workdir, _claimed_elsewhere_or_run)
  else:  # Overwritten by process 0's choice below.
    chosen = first_free(workdir, holds_run)
  if jax.process_count() > 1:  # A process may already see another's run there: use process 0's.
    padded = np.frombuffer(chosen.encode().ljust(4096, b"\0"), np.uint8)
    chosen = bytes(multihost_utils.broadcast_one_to_all(padded)).rstrip(b"\0").decode()
  if chosen != os.path.normpath(workdir):
    logging.warning("--fresh: %s holds a run, which is kept; training in %s", workdir, chosen)
  return chosen


def check_compatible(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises with a diff when ``workdir`` holds a run of an incompatible config."""
  saved = saved_config(workdir)
  if saved is None or not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return
  saved = _flatten(saved)
  current = _flatten(json.loads(config.to_json_best_effort()))
  diff = [
    f"  {name}: workdir has {saved.get(name)!r}, config has {current.get(name)!r}"
    for name in sorted(set(saved) | set(current))
    if _relevant(name) and saved.get(name) != current.get(name)
  ]
  if diff:
    raise ValueError(
      f"{workdir} holds a run with a different config; resuming it would mix two "
      "experiments:\n" + "\n".join(diff) + "\nRerun with --fresh to start this config in "
      f"the first free {os.path.normpath(workdir)}-N (nothing is deleted), or restore the old "
      "values to resume."
    )
