"""Test bits/dim against training FLOPs: every method at a ladder of budgets.

Budgets are multiples of the reference budget, the training FLOPs of
``train.num_steps`` projectable steps (``arms.reference_flops``; multiple 1 is
``compare --budget=flops``); the command runs them at ``compute_optimal``'s λ.
The default ladder 1/16, 1/8, 1/4, 1/2, 1 spans 16x.
At budget B a method runs ``round(B / its per-step FLOPs)`` steps, its eval,
checkpoint and warmup periods scaled alike (``arms.scaled``), so its training
FLOPs are within half a step of B. A budget below one step of a method is an
error, raised for every point before any training starts.

The methods built on a trained source (``arms.FROM_SOURCE``) pay for it out of
their own budget: at budget B they start from the ``source`` point at budget
``source_share * B`` (same seed; with the default halving ladder and share 1/2
that is the source point one rung down, trained once and reused by all of them)
and spend the remaining ``(1 - source_share) * B`` on their own training:
``weight_selection_ft`` fine-tunes specialists from that source's weight
selection; ``universal_distill`` and ``specialists_distill`` train from scratch
with it as frozen teacher (alpha = ``distill_weight``; their steps include the
teacher's forward). Their ``train_flops`` is the sum, so every point's x position
is all the compute behind it; ``source_flops`` is reported apart, for the
amortised view where one source serves many task sets (own training alone =
train_flops - source_flops). Their ``wall_s`` likewise adds the source's.

The amortised frontier (``source_workdir``): one source, trained elsewhere, serves
every point; the FROM_SOURCE methods (projectors on it, tuned through the
projections or frozen; fine-tuned weight selection; distillation from it) spend
each whole budget on their own training, and the source's cost is reported apart.

Budgets get ``seeds``, the largest ``top_seeds``. Each point lives in
``DIR/<method>_b<multiple>_seed<s>/`` and resumes, or is reused when finished
(``arms.run_arm``). Writes DIR/frontier.{json,md,png}; ``merge`` joins frontiers
run apart (e.g. methods on different machines) on the same budget ladder.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Collection, Sequence

import ml_collections

from projectable import data as data_lib
from projectable.experiments import arms, frontier_report
from projectable.training import warmstart

ARMS = ("projectable", "universal", "specialists", "source", *arms.FROM_SOURCE)
# What a from-scratch frontier runs unless told: every method but the projectors on a source.
DEFAULT_ARMS = tuple(m for m in ARMS if m not in arms.PROJECTORS_ON_SOURCE)
DEFAULT_BUDGETS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)
# The λ a frontier's projectable runs use unless the command line sets lambda_source: the
# source learns only through its projections, the cheapest projectable step and the best
# projectable setting at equal FLOPs on digits and Fashion-MNIST (docs/results). Training's
# default stays λ=1, which keeps the source a good universal model.
COMPUTE_OPTIMAL_LAMBDA = 0.0


def compute_optimal(
  config: ml_collections.ConfigDict, overridden: Collection[str]
) -> ml_collections.ConfigDict:
  """``config`` at ``COMPUTE_OPTIMAL_LAMBDA`` unless ``lambda_source`` is in ``overridden``."""
  config = config.copy_and_resolve_references()
  if "lambda_source" not in overridden:
    config.lambda_source = COMPUTE_OPTIMAL_LAMBDA
  return config


@dataclasses.dataclass(frozen=True)
class Point:
  """One training run of the frontier."""

  method: str
  budget: float  # Multiple of the reference budget.
  budget_flops: float
  seed: int
  config: ml_collections.ConfigDict
  workdir: str
  source: Point | None = None  # arms.FROM_SOURCE methods: the source point they build on.


def schedule(
  config: ml_collections.ConfigDict,
  workdir: str,
  budgets: Sequence[float],
  seeds: Sequence[int],
  top_seeds: Sequence[int],
  methods: Sequence[str],
  source_share: float,
  distill_weight: float = arms.DISTILL_WEIGHT,
  source_workdir: str = "",
) -> tuple[float, list[Point]]:
  """(reference FLOPs, every point cheapest budget first); validates all before any training.

  With ``source_workdir`` (a finished source run) the ``arms.FROM_SOURCE`` methods all
  build on that source and spend their whole budget on their own training.
  """
  unknown = set(methods) - set(ARMS)
  if unknown:
    raise ValueError(f"unknown methods {sorted(unknown)}; known: {ARMS}")
  if not budgets or min(budgets) <= 0:
    raise ValueError(f"budgets must be positive multiples of the reference, got {budgets}")
  if not 0 < source_share < 1:
    raise ValueError(f"source_share must lie strictly between 0 and 1, got {source_share}")
  data = data_lib.load(config.data)
  reference = arms.reference_flops(config, data)

  def point(method: str, budget: float, seed: int) -> Point:
    seeded = config.copy_and_resolve_references()
    seeded.seed = seed
    source, share, source_dir = None, 1.0, source_workdir
    if method in arms.FROM_SOURCE and not source_workdir:
      try:
        source = point("source", budget * source_share, seed)
      except ValueError as e:
        raise ValueError(
          f"{method} at budget {budget:g} spends {source_share:g} of it on its source: {e}"
        ) from None
      share, source_dir = 1 - source_share, source.workdir
    run_config = arms.mode_config(seeded, method, source_dir, distill_weight)
    per_step = arms.step_flops(run_config, data)
    available = share * budget * reference
    if available < per_step:
      what = f"budget {budget:g} x reference = {budget * reference:.4g} FLOPs"
      if source:
        what = f"the fine-tuning share {share:g} of {what} ({available:.4g} FLOPs)"
      raise ValueError(
        f"{what} buys less than one training step of {method} ({per_step:.4g} FLOPs per "
        f"step); the reference is {config.train.num_steps} projectable steps = "
        f"{reference:.4g} FLOPs"
      )
    return Point(
      method,
      budget,
      budget * reference,
      seed,
      arms.scaled(run_config, round(available / per_step)),
      os.path.join(workdir, f"{method}_b{budget:g}_seed{seed}"),
      source,
    )

  if source_workdir:
    _check_trained_source(config, source_workdir, methods)
  ladder = sorted(set(budgets))
  return reference, [
    point(method, budget, seed)
    for budget in ladder
    for seed in (top_seeds if budget == ladder[-1] else seeds)
    for method in methods
  ]


def _check_trained_source(
  config: ml_collections.ConfigDict, workdir: str, methods: Sequence[str]
) -> None:
  """Raises unless ``workdir`` holds a finished source run that ``config`` can build on."""
  if not os.path.exists(os.path.join(workdir, "eval", "metrics.json")):
    raise FileNotFoundError(
      f"source_workdir={workdir!r} holds no finished run (no eval/metrics.json): train a "
      "source there first (launch/train.py --config.mode=source) or fix the path"
    )
  for method in set(methods) & set(arms.FROM_SOURCE):
    warmstart.check_sources(arms.mode_config(config, method, workdir))


def _record(point: Point, metrics: dict, source: dict | None) -> dict:
  """The frontier.json entry of a finished point."""
  record = {
    "method": point.method,
    "budget": point.budget,
    "budget_flops": point.budget_flops,
    "train_flops": metrics["train_flops"],
    "steps": metrics["final_step"]["step"],
    "seed": point.seed,
    "bits_per_dim": {k: metrics["bits_per_dim"][k] for k in ("mean", "per_task")},
    "wall_s": metrics["wall_s"],
  }
  if source is not None:
    record["train_flops"] += source["train_flops"]
    record["wall_s"] += source["wall_s"]
    record["source_flops"] = source["train_flops"]
    record["source_steps"] = source["final_step"]["step"]
    record["source_workdir"] = os.path.basename(point.source.workdir)
  return record


def frontier(
  config: ml_collections.ConfigDict,
  workdir: str,
  budgets: Sequence[float] = DEFAULT_BUDGETS,
  seeds: Sequence[int] = (0,),
  top_seeds: Sequence[int] = (0, 1, 2),
  methods: Sequence[str] = DEFAULT_ARMS,
  source_share: float = 0.5,
  command: str = "",
  distill_weight: float = arms.DISTILL_WEIGHT,
  source_workdir: str = "",
  train: bool = True,
) -> dict:
  """Trains (or reuses) every point; writes frontier.{json,md,png} and returns the json.

  With ``source_workdir`` this is the amortised frontier (see ``schedule``). With
  ``train=False`` nothing trains: the report holds the finished points and lists the
  others under ``missing`` (a look at a frontier still running elsewhere).
  """
  reference, points = schedule(
    config,
    workdir,
    budgets,
    seeds,
    top_seeds,
    methods,
    source_share,
    distill_weight,
    source_workdir,
  )
  records, missing = [], []
  for point in points:
    runs = [p for p in (point.source, point) if p is not None]
    if not train and any(arms.finished_metrics(p.config, p.workdir) is None for p in runs):
      missing.append(os.path.basename(point.workdir))
      continue
    source = None
    if point.source is not None:
      source = arms.run_arm(point.source.config, point.source.workdir)
    metrics = arms.run_arm(point.config, point.workdir)
    records.append(_record(point, metrics, source))
  result = {
    "dataset": config.data.name,
    "command": command,
    "reference_flops": reference,
    "reference_steps": config.train.num_steps,
    "lambda_source": config.lambda_source,
    "source_share": source_share,
    "distill_weight": distill_weight,
    "points": records,
    "missing": missing,
  }
  if source_workdir:
    with open(os.path.join(source_workdir, "eval", "metrics.json")) as f:
      trained = json.load(f)
    result["trained_source"] = {
      "workdir": os.path.abspath(source_workdir),
      "train_flops": trained["train_flops"],
      "steps": trained["final_step"]["step"],
      "bits_per_dim": trained["bits_per_dim"]["mean"],
    }
  frontier_report.write(result, workdir)
  return result
