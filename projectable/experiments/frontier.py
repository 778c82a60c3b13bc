"""Test bits/dim against training FLOPs: every method at a ladder of budgets.

Budgets are multiples of the reference budget, the training FLOPs of
``train.num_steps`` projectable steps (``arms.reference_flops``; multiple 1 is
``compare --budget=flops``); the command runs them at ``compute_optimal``'s λ.
The default ladder 1/16, 1/8, 1/4, 1/2, 1 spans 16x.
At budget B a method runs ``round(B / its per-step FLOPs)`` steps
(``frontier_plan``). A budget below one step of a method is an error, raised for
every point, every trial and every seed before any training starts.

Tuning (``tuning.Grid``): at each tuned budget (default: every budget) every method
trains each of its trials with the budget's first seed, and the trial with the lowest
validation bits/dim is its setting there; a budget that is not tuned takes the setting
of the nearest tuned one. The other seeds train that setting. With ``confirm_top`` K > 1,
a tuned budget with several seeds trains the first seed's K best trials on every seed
and chooses the lowest mean validation. Test figures never choose.

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

Budgets get ``seeds``; the largest, or every budget from ``multi_seed_from`` on, get
``top_seeds``. Each point lives in ``DIR/<method>_b<multiple>[_<settings>]_seed<s>/``
and resumes, or is reused when finished (``arms.run_arm``). ``extend_until_converged``
doubles the ladder until the best baseline's validation gains under 1% per doubling.
Writes DIR/frontier.{json,md,png}; ``merge`` joins frontiers
run apart (e.g. methods on different machines) on the same budget ladder.

``Shard`` splits one frontier over processes sharing its workdir (a SLURM array, one
process per core): each trains the points it owns (``i/N``: by hash; ``any/N``: any point
no other process is training) and reports every finished one; a choice waits for the
trials of every shard, so a shard reruns until nothing is missing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Collection, Sequence

import ml_collections
from absl import logging

from projectable.experiments import arms, frontier_plan, frontier_report, tuning
from projectable.experiments.frontier_plan import WHOLE, Point, Shard
from projectable.experiments.progress import PointProgress
from projectable.training import typed_config

ARMS = (
  "projectable",
  "universal",
  "specialists",
  "source",
  "projectable_rank0",
  *arms.FROM_SOURCE,
)
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
  grid: tuning.Grid = tuning.UNTUNED,
  multi_seed_from: float | None = None,
) -> tuple[float, list[Point]]:
  """(reference FLOPs, every point any trial may run, cheapest budget first).

  Making them all validates every budget, seed and trial before any training.
  """
  unknown = set(methods) - set(ARMS)
  if unknown:
    raise ValueError(f"unknown methods {sorted(unknown)}; known: {ARMS}")
  if not budgets or min(budgets) <= 0:
    raise ValueError(f"budgets must be positive multiples of the reference, got {budgets}")
  frontier_plan.check_source_shares((source_share, *grid.source_shares))
  planner = frontier_plan.Planner(config, workdir, source_share, distill_weight, source_workdir)
  if source_workdir:
    frontier_plan.check_trained_source(config, source_workdir, tuple(methods))
  ladder = sorted(set(budgets))
  return planner.reference, [
    planner.point(method, budget, seed, settings)
    for budget in ladder
    for seed in _seeds_at(budget, ladder, seeds, top_seeds, multi_seed_from)
    for method in methods
    for settings in grid.trials(method)
  ]


def _seeds_at(
  budget: float,
  ladder: Sequence[float],
  seeds: Sequence[int],
  top_seeds: Sequence[int],
  multi_seed_from: float | None,
) -> Sequence[int]:
  """``top_seeds`` at the largest budget and from ``multi_seed_from`` on, else ``seeds``."""
  return top_seeds if budget >= min(multi_seed_from or math.inf, max(ladder)) else seeds


def _record(point: Point, metrics: dict, source: dict | None) -> dict:
  """The frontier.json entry of a finished point."""
  record = {
    "method": point.method,
    "budget": point.budget,
    "budget_flops": point.budget_flops,
    "train_flops": metrics["train_flops"],
    "steps": metrics["final_step"]["step"],
    "seed": point.seed,
    "settings": dict(point.settings),
    "bits_per_dim": {k: metrics["bits_per_dim"][k] for k in ("mean", "per_task")},
    "val_bits_per_dim": metrics.get("val_bits_per_dim", {}).get("mean", math.nan),
    "wall_s": metrics["wall_s"],
  }
  if "diverged_at" in metrics:
    record["diverged_at"] = metrics["diverged_at"]
  if source is not None:
    record["train_flops"] += source["train_flops"]
    record["wall_s"] += source["wall_s"]
    record["source_flops"] = source["train_flops"]
    record["source_steps"] = source["final_step"]["step"]
    record["source_workdir"] = os.path.basename(point.source.workdir)
  return record


class _Runner:
  """Trains (or reuses) points once each, logging "point k/N" with an ETA; or, with
  ``train=False`` or for another shard's points, reports finished ones and names the rest
  as missing."""

  def __init__(self, total: int, train: bool, shard: Shard = WHOLE, finished: int = 0):
    self.train, self.shard = train, shard
    to_train = max(total - finished, 0)
    self.progress = PointProgress(total, processes=shard.count, to_train=to_train)
    self.records: dict[str, dict | None] = {}
    self.missing: list[str] = []

  def __call__(self, point: Point) -> dict | None:
    name = os.path.basename(point.workdir)
    if name not in self.records:
      self.records[name] = self._run(point, name)
    return self.records[name]

  def _run(self, point: Point, name: str) -> dict | None:
    unfinished = _unfinished(point)
    if not unfinished:
      return self._train(point, name, timed=False)
    if self.train:
      with self.shard.claim(point, unfinished) as mine:
        if mine:  # Another process may have finished it since: then it is reused.
          return self._train(point, name, timed=bool(_unfinished(point)))
    self.missing.append(name)
    return None

  def _train(self, point: Point, name: str, timed: bool) -> dict:
    """Trains (or with ``timed`` False reuses) ``point``, logging "point k/N"."""
    self.progress.start(len(self.records) + 1, name + ("" if timed else " (finished: reused)"))
    source = None
    if point.source is not None:
      source = arms.run_arm(point.source.config, point.source.workdir)
    record = _record(point, arms.run_arm(point.config, point.workdir), source)
    self.progress.done(timed=timed)
    return record


def _tune(
  runner: _Runner,
  by_key: dict,
  methods: Sequence[str],
  tuned: Sequence[float],
  seeds_at: Callable[[float], Sequence[int]],
  grid: tuning.Grid,
  confirm_top: int,
) -> tuple[dict, list[dict]]:
  """({(method, tuned budget): chosen settings}, the trials' records) by validation."""
  chosen, trials_record = {}, []
  for budget in tuned:
    seeds = seeds_at(budget)
    for method in methods:
      trials = grid.trials(method)
      runs = {s: runner(by_key[(method, budget, seeds[0], s)]) for s in trials}
      if len(trials) == 1:  # Nothing to choose.
        chosen[(method, budget)] = trials[0]
        continue
      if any(r is None for r in runs.values()):
        continue  # Report only, trials unfinished: its points are missing.
      vals = {s: r["val_bits_per_dim"] for s, r in runs.items()}
      record = {
        "method": method,
        "budget": budget,
        "seed": seeds[0],
        "chosen": dict(tuning.select(vals)),
        "trials": [
          {
            "settings": dict(s),
            "val_bits_per_dim": r["val_bits_per_dim"],
            "test_bits_per_dim": r["bits_per_dim"]["mean"],
          }
          for s, r in runs.items()
        ],
      }
      if confirm_top > 1 and len(seeds) > 1:
        shortlist = tuning.shortlist(vals, confirm_top)
        by_seed = _confirm(runner, by_key, method, budget, seeds, shortlist)
        if by_seed is None:
          continue  # Report only, confirmation runs unfinished.
        means = {s: math.fsum(v) / len(v) for s, v in by_seed.items()}
        record["chosen"] = dict(tuning.select(means))
        record["confirmation"] = [
          {"settings": dict(s), "seeds": list(seeds), "val_bits_per_dim": v, "mean": means[s]}
          for s, v in by_seed.items()
        ]
      chosen[(method, budget)] = tuple(sorted(record["chosen"].items()))
      trials_record.append(record)
  return chosen, trials_record


def _confirm(
  runner: _Runner,
  by_key: dict,
  method: str,
  budget: float,
  seeds: Sequence[int],
  shortlist: Sequence[tuning.Settings],
) -> dict | None:
  """{settings: validation bits/dim on each of ``seeds``} (None: some run unfinished)."""
  by_seed = {}
  for settings in shortlist:
    runs = [runner(by_key[(method, budget, seed, settings)]) for seed in seeds]
    if any(r is None for r in runs):
      return None
    by_seed[settings] = [r["val_bits_per_dim"] for r in runs]
  return by_seed


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
  grid: tuning.Grid = tuning.UNTUNED,
  tune_budgets: Sequence[float] = (),
  multi_seed_from: float | None = None,
  confirm_top: int = 1,
  shard: Shard = WHOLE,
) -> dict:
  """Tunes, trains (or reuses) every point; writes frontier.{json,md,png}; returns the json.

  ``tune_budgets`` (default: every budget) are where ``grid``'s trials run;
  ``confirm_top`` > 1 chooses among that many on every seed of a multi-seed budget. With
  ``source_workdir`` this is the amortised frontier (``frontier_plan``). With
  ``train=False`` nothing trains: the report holds the finished points and lists the
  others under ``missing`` (a look at a frontier still running elsewhere); ``shard``
  trains only its own points.
  """
  ladder = sorted(set(budgets))
  tuned = sorted(set(tune_budgets or ladder))
  if not set(tuned) <= set(ladder):
    raise ValueError(f"tune_budgets {sorted(set(tuned) - set(ladder))} are not on the ladder")
  reference, points = schedule(
    config,
    workdir,
    ladder,
    seeds,
    top_seeds,
    methods,
    source_share,
    distill_weight,
    source_workdir,
    grid,
    multi_seed_from,
  )
  by_key = {(p.method, p.budget, p.seed, p.settings): p for p in points}
  seeds_at = lambda b: _seeds_at(b, ladder, seeds, top_seeds, multi_seed_from)
  total = _planned_runs(methods, ladder, tuned, seeds_at, grid, confirm_top)
  runner = _Runner(total, train, shard, sum(map(_finished, points)))
  chosen, trials_record = _tune(runner, by_key, methods, tuned, seeds_at, grid, confirm_top)
  records = []
  for budget in ladder:
    for seed in seeds_at(budget):
      for method in methods:
        settings = chosen.get((method, tuning.nearest_tuned(budget, tuned)))
        if settings is None:
          runner.missing.append(f"{method}_b{budget:g}_seed{seed} (tuning unfinished)")
          continue
        record = runner(by_key[(method, budget, seed, settings)])
        if record is not None:
          records.append(record)
  result = {
    "dataset": config.data.name,
    "command": command,
    "reference_flops": reference,
    "reference_steps": config.train.num_steps,
    "lambda_source": config.lambda_source,
    "projector_lr_scale": typed_config.projector_lr_scale(config),
    "source_share": source_share,
    "distill_weight": distill_weight,
    "grid": {k: list(v) for k, v in dataclasses.asdict(grid).items()},
    "tuned_budgets": tuned,
    "confirm_top": confirm_top,
    "tuning": trials_record,
    "points": records,
    "missing": runner.missing,
  }
  if source_workdir:
    result["trained_source"] = _trained_source(source_workdir)
  frontier_report.write(result, workdir)
  return result


def _unfinished(point: Point) -> list[str]:
  """Workdirs of ``point``'s runs (its source first) that have not finished."""
  runs = [p for p in (point.source, point) if p is not None]
  return [p.workdir for p in runs if arms.finished_metrics(p.config, p.workdir) is None]


def _finished(point: Point) -> bool:
  """Whether ``point`` (and the source it builds on) finished: a rerun reuses it."""
  return not _unfinished(point)


def _planned_runs(
  methods: Sequence[str],
  ladder: Sequence[float],
  tuned: Sequence[float],
  seeds_at: Callable[[float], Sequence[int]],
  grid: tuning.Grid,
  confirm_top: int,
) -> int:
  """How many points the frontier trains or reuses (the N of its "point k/N" lines)."""
  tuning_runs = sum(len(grid.trials(m)) for m in methods) * len(tuned)
  finals = sum(len(seeds_at(b)) - 1 for b in ladder) * len(methods)
  confirming = sum(
    (min(confirm_top, len(grid.trials(m))) - 1) * (len(seeds_at(b)) - 1)
    for b in tuned
    if confirm_top > 1 and len(seeds_at(b)) > 1
    for m in methods
  )
  untuned = len(methods) * (len(ladder) - len(tuned))
  return tuning_runs + finals + confirming + untuned


def _trained_source(workdir: str) -> dict:
  """What the amortised frontier's report says of the trained source in ``workdir``."""
  with open(os.path.join(workdir, "eval", "metrics.json")) as f:
    trained = json.load(f)
  return {
    "workdir": os.path.abspath(workdir),
    "train_flops": trained["train_flops"],
    "steps": trained["final_step"]["step"],
    "bits_per_dim": trained["bits_per_dim"]["mean"],
  }


def extend_until_converged(
  run: Callable[[Sequence[float]], dict], budgets: Sequence[float], max_budget: float
) -> dict:
  """Runs ``run(ladder)``, doubling the ladder's top until the best baseline converges.

  Converged: the validation bits/dim of the best method other than projectable at the
  top budget gains less than ``stats.CONVERGED_GAIN`` over the last doubling
  (``frontier_report.baseline_convergence``), or the next doubling would pass
  ``max_budget``. Finished points are reused, so each extension trains only the new rung.
  """
  ladder = sorted(set(budgets))
  while True:
    result = run(ladder)
    _, converged = frontier_report.baseline_convergence(result)
    if converged or 2 * ladder[-1] > max_budget:
      return result
    ladder.append(2 * ladder[-1])
    logging.info("best baseline still improving: extending the ladder to %gx", ladder[-1])
