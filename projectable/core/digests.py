"""SHA-256 digests of weight trees: what a checkpoint or specialist is verified against."""

from __future__ import annotations

import hashlib
import json

import jax
import numpy as np


class DamagedCheckpointError(RuntimeError):
  """Saved weights (a checkpoint step, best weights, a specialist) cannot be read intact."""


def array_digest(x: np.ndarray) -> str:
  """SHA-256 of an array's dtype, shape and bytes (C order)."""
  a = np.ascontiguousarray(x)
  h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
  h.update(a.tobytes())
  return h.hexdigest()


def tree_digests(tree) -> dict[str, str]:
  """Per leaf of a tree of host arrays, its ``array_digest``, keyed by its path."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {jax.tree_util.keystr(path): array_digest(np.asarray(x)) for path, x in leaves}


def mismatched(expected: dict[str, str], tree) -> list[str]:
  """The paths whose arrays in ``tree`` do not have the ``expected`` digests (or are missing)."""
  actual = tree_digests(tree)
  return sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))


def binding(fields: dict, digests: dict[str, str]) -> str:
  """SHA-256 binding a config section to the weights it describes."""
  text = json.dumps({"config": fields, "weights": digests}, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()
