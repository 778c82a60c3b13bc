"""Bits per dimension from per-pixel negative log-likelihoods in nats."""

from __future__ import annotations

import math

import numpy as np

LN2 = math.log(2.0)


def bits_per_dim(nll_T: np.ndarray, task_names: tuple[str, ...]) -> dict:
  """{"mean", "per_task"} from per-task mean per-pixel NLLs in nats."""
  per_task = {name: float(v / LN2) for name, v in zip(task_names, nll_T, strict=True)}
  return {"mean": float(np.mean(list(per_task.values()))), "per_task": per_task}
