"""Test bits/dim against training FLOPs: every method at a ladder of budgets.

Budgets are multiples of the reference budget, the training FLOPs of
``train.num_steps`` projectable steps (``compare.reference_flops``; multiple 1 is
``compare --budget=flops``); the command runs them at ``compute_optimal``'s λ.
The default ladder 1/16, 1/8, 1/4, 1/2, 1 spans 16x.
At budget B a method runs ``round(B / its per-step FLOPs)`` steps, its eval,
checkpoint and warmup periods scaled alike (``compare.scaled``), so its training
FLOPs are within half a step of B. A budget below one step of a method is an
error, raised for every point before any training starts.

The methods built on a trained source (``compare.FROM_SOURCE``) pay for it out of
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
(``compare.run_method``). Writes DIR/frontier.{json,md,png}; ``merge`` joins frontiers
run apart (e.g. methods on different machines) on the same budget ladder.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Collection, Sequence

import ml_collections
import numpy as np
from matplotlib.figure import Figure

from projectable import compare, warmstart
from projectable import data as data_lib

METHODS = ("projectable", "universal", "specialists", "source", *compare.FROM_SOURCE)
# What a from-scratch frontier runs unless told: every method but the projectors on a source.
DEFAULT_METHODS = tuple(m for m in METHODS if m not in compare.PROJECTORS_ON_SOURCE)
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
  source: Point | None = None  # compare.FROM_SOURCE methods: the source point they build on.


def plan(
  config: ml_collections.ConfigDict,
  workdir: str,
  budgets: Sequence[float],
  seeds: Sequence[int],
  top_seeds: Sequence[int],
  methods: Sequence[str],
  source_share: float,
  distill_weight: float = compare.DISTILL_WEIGHT,
  source_workdir: str = "",
) -> tuple[float, list[Point]]:
  """(reference FLOPs, every point cheapest budget first); validates all before any training.

  With ``source_workdir`` (a finished source run) the ``compare.FROM_SOURCE`` methods all
  build on that source and spend their whole budget on their own training.
  """
  unknown = set(methods) - set(METHODS)
  if unknown:
    raise ValueError(f"unknown methods {sorted(unknown)}; known: {METHODS}")
  if not budgets or min(budgets) <= 0:
    raise ValueError(f"budgets must be positive multiples of the reference, got {budgets}")
  if not 0 < source_share < 1:
    raise ValueError(f"source_share must lie strictly between 0 and 1, got {source_share}")
  data = data_lib.load(config.data)
  reference = compare.reference_flops(config, data)

  def point(method: str, budget: float, seed: int) -> Point:
    seeded = config.copy_and_resolve_references()
    seeded.seed = seed
    source, share, source_dir = None, 1.0, source_workdir
    if method in compare.FROM_SOURCE and not source_workdir:
      try:
        source = point("source", budget * source_share, seed)
      except ValueError as e:
        raise ValueError(
          f"{method} at budget {budget:g} spends {source_share:g} of it on its source: {e}"
        ) from None
      share, source_dir = 1 - source_share, source.workdir
    run_config = compare.mode_config(seeded, method, source_dir, distill_weight)
    per_step = compare.step_flops(run_config, data)
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
      compare.scaled(run_config, round(available / per_step)),
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
  for method in set(methods) & set(compare.FROM_SOURCE):
    warmstart.check_sources(compare.mode_config(config, method, workdir))


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
  methods: Sequence[str] = DEFAULT_METHODS,
  source_share: float = 0.5,
  command: str = "",
  distill_weight: float = compare.DISTILL_WEIGHT,
  source_workdir: str = "",
  train: bool = True,
) -> dict:
  """Trains (or reuses) every point; writes frontier.{json,md,png} and returns the json.

  With ``source_workdir`` this is the amortised frontier (see ``plan``). With
  ``train=False`` nothing trains: the report holds the finished points and lists the
  others under ``missing`` (a look at a frontier still running elsewhere).
  """
  reference, points = plan(
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
    if not train and any(compare.finished_metrics(p.config, p.workdir) is None for p in runs):
      missing.append(os.path.basename(point.workdir))
      continue
    source = None
    if point.source is not None:
      source = compare.run_method(point.source.config, point.source.workdir)
    metrics = compare.run_method(point.config, point.workdir)
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
  write(result, workdir)
  return result


def write(result: dict, workdir: str) -> None:
  """DIR/frontier.{json,md,png} of ``result``."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "frontier.json"), "w") as f:
    json.dump(result, f, indent=2)
  with open(os.path.join(workdir, "frontier.md"), "w") as f:
    f.write(markdown(result))
  plot(result, os.path.join(workdir, "frontier.png"))


# What every merged frontier must share: its points are then on one budget ladder.
_SHARED = ("dataset", "reference_flops", "reference_steps", "source_share", "distill_weight")


def merge(results: Sequence[dict]) -> dict:
  """One frontier of several (e.g. methods run on different machines) on the same ladder.

  Raises ValueError where they differ in dataset, reference budget, source share,
  distillation alpha or trained source, or where two hold the same (method, budget, seed).
  """
  if not results:
    raise ValueError("merge needs at least one frontier")
  first = results[0]
  for i, other in enumerate(results[1:], start=1):
    for key in (*_SHARED, "trained_source"):
      if other.get(key) != first.get(key):
        raise ValueError(
          f"frontier {i} has {key}={other.get(key)!r} but frontier 0 has {first.get(key)!r}: "
          "only frontiers of the same config and budget ladder merge (same --config "
          "overrides, --source_share, --distill_weight, --source_workdir)"
        )
  # Recorded since the frontier's λ default; older frontiers lack it (their ladder still says).
  lambdas = {r["lambda_source"] for r in results if "lambda_source" in r}
  if len(lambdas) > 1:
    raise ValueError(f"frontiers of different lambda_source {sorted(lambdas)} do not merge")
  seen: dict[tuple, int] = {}
  for i, result in enumerate(results):
    for p in result["points"]:
      key = (p["method"], p["budget"], p["seed"])
      if key in seen:
        raise ValueError(
          f"frontiers {seen[key]} and {i} both hold point {key} (method, budget, seed)"
        )
      seen[key] = i
  merged = {key: first[key] for key in _SHARED}
  merged["command"] = "\n".join(r["command"] for r in results if r["command"])
  merged["points"] = [p for r in results for p in r["points"]]
  merged["missing"] = [m for r in results for m in r.get("missing", [])]
  if lambdas:
    merged["lambda_source"] = lambdas.pop()
  if "trained_source" in first:
    merged["trained_source"] = first["trained_source"]
  return merged


def _grouped(points: list[dict]) -> dict[str, dict[float, list[dict]]]:
  """{method: {budget: [point per seed]}}, methods and budgets in first-seen order."""
  groups: dict[str, dict[float, list[dict]]] = {}
  for p in points:
    groups.setdefault(p["method"], {}).setdefault(p["budget"], []).append(p)
  return groups


def _bits_cell(runs: list[dict]) -> str:
  """Mean test bits/dim over seeds, with the std and seed count when there are several."""
  values = [r["bits_per_dim"]["mean"] for r in runs]
  if len(values) == 1:
    return f"{values[0]:.4f}"
  return f"{np.mean(values):.4f} ± {np.std(values):.4f} ({len(values)} seeds)"


def _steps_cell(runs: list[dict]) -> str:
  """Steps (the same for every seed); methods built on a source as source + own steps."""
  run = runs[0]
  return f"{run['source_steps']} + {run['steps']}" if "source_steps" in run else str(run["steps"])


def _preamble(result: dict) -> str:
  """What the budgets are and how the methods built on a source pay for it."""
  at_lambda = f" at λ={result['lambda_source']:g}" if "lambda_source" in result else ""
  budgets_are = (
    f"Budgets are multiples of {result['reference_steps']} projectable steps{at_lambda} "
    f"({result['reference_flops']:.4g} FLOPs)."
  )
  on_source = sorted({p["method"] for p in result["points"]} & set(compare.FROM_SOURCE))
  if "trained_source" in result:
    src = result["trained_source"]
    about = (
      f"Amortised: {', '.join(on_source) or 'no method'} build on the source trained in "
      f"{src['workdir']} ({src['steps']} steps, {src['train_flops']:.4g} FLOPs, test "
      f"{src['bits_per_dim']:.4f} bits/dim), reported apart: budgets count own training only."
    )
  elif on_source:
    about = (
      f"{', '.join(on_source)} spend {result['source_share']:g} of each budget on their "
      "source and the rest on their own training."
    )
  else:
    about = ""
  distilled = ""
  if any(m.endswith("_distill") for m in on_source):
    distilled = f"Distillation alpha = {result['distill_weight']:g}."
  return " ".join(filter(None, (budgets_are, about, distilled)))


def markdown(result: dict) -> str:
  """Tables a person reads: test bits/dim and steps, rows methods, columns budgets."""
  groups = _grouped(result["points"])
  budgets = sorted({p["budget"]: p["budget_flops"] for p in result["points"]}.items())
  header = "| method | " + " | ".join(f"{b:g}x ({f:.3g} FLOPs)" for b, f in budgets) + " |"
  rule = "|---" * (len(budgets) + 1) + "|"
  lines = [
    f"# {result['dataset']}: test bits/dim against training FLOPs",
    "",
    _preamble(result),
  ]
  if result["command"]:
    lines += ["", "```", result["command"], "```"]
  if result.get("missing"):
    lines += ["", f"Not finished, left out: {', '.join(result['missing'])}."]
  for title, cell in (
    ("Test bits/dim (mean ± std over seeds)", _bits_cell),
    ("Steps (methods built on a source: source + own)", _steps_cell),
  ):
    lines += ["", f"## {title}", "", header, rule]
    for method, by_budget in groups.items():
      cells = [cell(by_budget[b]) if b in by_budget else "" for b, _ in budgets]
      lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
  """Test bits/dim against training FLOPs (log x), one line per method, seed std as bars."""
  fig = Figure(figsize=(7.0, 4.5))
  ax = fig.add_subplot()
  for method, by_budget in _grouped(result["points"]).items():
    runs = [by_budget[b] for b in sorted(by_budget)]
    ax.errorbar(
      [np.mean([r["train_flops"] for r in rs]) for rs in runs],
      [np.mean([r["bits_per_dim"]["mean"] for r in rs]) for rs in runs],
      yerr=[np.std([r["bits_per_dim"]["mean"] for r in rs]) for rs in runs],
      marker="o",
      capsize=3,
      label=method,
    )
  ax.set_xscale("log")
  amortised = "trained_source" in result
  ax.set_xlabel("own training FLOPs (source apart)" if amortised else "training FLOPs")
  ax.set_ylabel("test bits/dim")
  ax.set_title(f"{result['dataset']}: test bits/dim against training FLOPs")
  ax.grid(alpha=0.3, which="both")
  if result["points"]:  # A report of unfinished points only has no lines to name.
    ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
