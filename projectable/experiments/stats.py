"""The statistics a frontier reports: sample spread, Welch's t-test, convergence of a curve."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

# A win is called only below this p-value of Welch's two-sided t-test.
SIGNIFICANCE = 0.05
# A curve has converged when its last doubling of budget improves it by less than this share.
CONVERGED_GAIN = 0.01


def sample_std(values: Sequence[float]) -> float:
  """The sample standard deviation (ddof=1); nan for fewer than two values."""
  return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
  """Two-sided p-value of Welch's t-test (unequal variances) that ``a`` and ``b`` share a mean.

  nan when either side has fewer than two values (no variance to test with).
  """
  if len(a) < 2 or len(b) < 2:
    return float("nan")
  return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def verdict(ours: Sequence[float], theirs: Sequence[float]) -> str:
  """'wins', 'loses' (lower is better) or 'no significant difference' at ``SIGNIFICANCE``."""
  p = welch_p(ours, theirs)
  if not p < SIGNIFICANCE:
    return "no significant difference"
  return "wins" if np.mean(ours) < np.mean(theirs) else "loses"


def doubling_gains(curve: Mapping[float, float]) -> dict[float, float]:
  """{budget B: relative improvement of a lower-is-better curve from B/2 to B}.

  Only budgets whose half is also on the curve; negative where the curve turned up.
  """
  return {
    b: (curve[b / 2] - value) / curve[b / 2] for b, value in sorted(curve.items()) if b / 2 in curve
  }


def converged(curve: Mapping[float, float], gain: float = CONVERGED_GAIN) -> bool:
  """Whether the last doubling of ``curve`` (budget -> validation bits/dim) gained < ``gain``."""
  gains = doubling_gains(curve)
  top = max(curve, default=None)
  return top in gains and gains[top] < gain
