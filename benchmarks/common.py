"""Timing helpers shared by the benchmarks: medians of compiled calls, power-law fits."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from projectable.core import model, sampling


def median_seconds(fn: Callable[[int], Any], repeats: int) -> float:
  """Median wall time of ``fn(r)`` for r = 1..repeats, after one untimed ``fn(0)`` (compile)."""
  jax.block_until_ready(fn(0))
  times = []
  for r in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(r + 1))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def sample_seconds(cfg: model.ModelConfig, params: dict, task_C, batch: int, repeats: int) -> float:
  """Median wall time of one KV-cached ``sample`` call of ``batch`` images (fresh keys)."""
  return median_seconds(
    lambda r: sampling.sample(cfg, params, batch, jax.random.key(r), task_C), repeats
  )


def power_law_exponent(xs: Sequence[float], ys: Sequence[float]) -> float:
  """Slope of the least-squares line through (log x, log y): y ~ x^slope."""
  return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])
