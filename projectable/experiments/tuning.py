"""Equal tuning for every method of a frontier, chosen on validation bits/dim, never test.

A ``Grid`` gives every method the same trials: each learning rate crossed with each
dropout of the model it trains (the small model's ``small.dropout``; the source's
``model.dropout`` for the ``source`` method). The methods built on a source
(``arms.FROM_SOURCE``) also choose the share of their budget spent on that source, so
they get ``len(source_shares)`` times as many trials: more tuning for the controls,
never less. ``projector_lr_scales`` and ``lambda_sources`` (empty by default) are knobs
of the projected methods only; where set, give the baselines as many trials (e.g. a finer
learning-rate grid). A trial at lambda_source > 0 pays for the source's own loss: it buys
fewer steps of the same budget.
A method's settings at a budget are the trial with the lowest validation
bits/dim at that budget when the budget is tuned, else those of the nearest tuned
budget on the log scale (the cheaper one on a tie). Where a tuned budget has several
seeds, ``confirm_top`` K > 1 guards against a lucky first seed: the K best trials of the
first seed each train every seed, and the lowest mean validation over them is chosen.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import ml_collections

from projectable.experiments import arms

Settings = tuple[tuple[str, float], ...]  # Sorted (knob, value) pairs; () = the config's own.

# A log grid spanning 100x (5e-4 to 5e-2, steps of ~2.5x) and the small models' dropout on and
# off. Up to 8e-3 only, the universal model's choice sat at the grid's edge (digits 1/4x: 2e-2).
DEFAULT_LEARNING_RATES = (5e-4, 1.26e-3, 3.17e-3, 8e-3, 2e-2, 5e-2)
DEFAULT_DROPOUTS = (0.0, 0.1)
DEFAULT_SOURCE_SHARES = (0.1, 0.25, 0.5)


@dataclasses.dataclass(frozen=True)
class Grid:
  """The trials of every method; an empty axis keeps the config's (or the command's) value."""

  learning_rates: tuple[float, ...] = DEFAULT_LEARNING_RATES
  dropouts: tuple[float, ...] = DEFAULT_DROPOUTS
  source_shares: tuple[float, ...] = ()
  projector_lr_scales: tuple[float, ...] = ()
  lambda_sources: tuple[float, ...] = ()

  def trials(self, method: str) -> list[Settings]:
    """Every setting ``method`` is trained with at a tuned budget, in a fixed order."""
    axes = [("learning_rate", self.learning_rates), ("dropout", self.dropouts)]
    if method in arms.FROM_SOURCE:
      axes.append(("source_share", self.source_shares))
    if arms.MODES.get(method, method) == "projectable":
      axes.append(("projector_lr_scale", self.projector_lr_scales))
      axes.append(("lambda_source", self.lambda_sources))
    settings: list[Settings] = [()]
    for knob, values in axes:
      if values:
        settings = [(*s, (knob, v)) for s in settings for v in values]
    return [tuple(sorted(s)) for s in settings]


UNTUNED = Grid(learning_rates=(), dropouts=())


def apply(config: ml_collections.ConfigDict, method: str, settings: Settings) -> None:
  """Sets ``settings``' learning rate and dropout on ``config`` in place (shares: the planner)."""
  for knob, value in settings:
    if knob == "learning_rate":
      config.train.learning_rate = value
    elif knob == "dropout":
      (config.model if method == "source" else config.small).dropout = value
    elif knob == "projector_lr_scale":
      config.train.projector_lr_scale = value
    elif knob == "lambda_source":
      config.lambda_source = value


def tag(settings: Settings) -> str:
  """A short, path-safe name of ``settings`` ('' for the config's own)."""
  short = {
    "learning_rate": "lr",
    "dropout": "do",
    "source_share": "ss",
    "projector_lr_scale": "ps",
    "lambda_source": "lam",
  }
  return "_".join(f"{short[k]}{v:g}" for k, v in settings)


def select(trials: Mapping[Settings, float]) -> Settings:
  """The settings of the lowest validation bits/dim (the first listed on a tie).

  Raises ValueError where no trial has a finite validation figure.
  """
  finite = {s: v for s, v in trials.items() if math.isfinite(v)}
  if not finite:
    raise ValueError(f"no trial has a finite validation bits/dim: {dict(trials)}")
  return min(finite, key=finite.__getitem__)


def shortlist(trials: Mapping[Settings, float], k: int) -> list[Settings]:
  """The ``k`` settings of the lowest finite validation bits/dim, best first."""
  finite = [s for s, v in trials.items() if math.isfinite(v)]
  return sorted(finite, key=trials.__getitem__)[:k]


def nearest_tuned(budget: float, tuned: Sequence[float]) -> float:
  """The tuned budget closest to ``budget`` on the log scale, the cheaper one on a tie."""
  return min(sorted(tuned), key=lambda t: abs(math.log(t / budget)))
