"""A frontier's reports: frontier.{json,md,png}, and frontiers run apart merged into one."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Collection, Sequence

import numpy as np
from matplotlib.figure import Figure

from projectable.experiments import arms, stats


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
  rates = {_projector_rate(r) for r in results} - {None}
  if len(rates) > 1:
    raise ValueError(
      f"frontiers whose projected methods train at different projector_lr_scale {sorted(rates)} "
      "do not merge"
    )
  # Recorded since --confirm_top; older frontiers chose on their first seed (1).
  confirm = {r.get("confirm_top", 1) for r in results}
  if len(confirm) > 1:
    raise ValueError(f"frontiers chosen with different confirm_top {sorted(confirm)} do not merge")
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
  merged["tuning"] = [t for r in results for t in r.get("tuning", [])]
  merged["missing"] = [m for r in results for m in r.get("missing", [])]
  merged["confirm_top"] = confirm.pop()
  grids = [r["grid"] for r in results if "grid" in r]
  if grids:  # Each knob's values over every frontier, so the grid-edge flags still hold.
    knobs = {k: None for g in grids for k in g}
    merged["grid"] = {k: sorted({v for g in grids for v in g.get(k, [])}) for k in knobs}
  if lambdas:
    merged["lambda_source"] = lambdas.pop()
  if rates:
    merged["projector_lr_scale"] = rates.pop()
  if "trained_source" in first:
    merged["trained_source"] = first["trained_source"]
  return merged


def keep_methods(result: dict, methods: Collection[str]) -> dict:
  """``result`` with only ``methods``' points, tuning records and missing points: e.g. an
  older frontier's baselines, to merge with projected points rerun at a new default.

  Raises ValueError naming any of ``methods`` that ``result`` has no point of.
  """
  absent = sorted(set(methods) - {p["method"] for p in result["points"]})
  if absent:
    raise ValueError(f"no points of {absent}; it has {sorted(_grouped(result['points']))}")
  kept = dict(result)
  kept["points"] = [p for p in result["points"] if p["method"] in methods]
  kept["tuning"] = [t for t in result.get("tuning", []) if t["method"] in methods]
  # Missing points are run names, "<method>_b<budget>...".
  kept["missing"] = [
    m for m in result.get("missing", []) if any(m.startswith(f"{x}_b") for x in methods)
  ]
  return kept


def _projector_rate(result: dict) -> float | None:
  """The projectors' default rate multiple of a frontier's projected points (None: it has
  none); frontiers from before it was recorded trained them at 1."""
  if not any(p["method"].startswith("projectable") for p in result["points"]):
    return None
  return result.get("projector_lr_scale", 1.0)


def _grouped(points: list[dict]) -> dict[str, dict[float, list[dict]]]:
  """{method: {budget: [point per seed]}}, methods and budgets in first-seen order."""
  groups: dict[str, dict[float, list[dict]]] = {}
  for p in points:
    groups.setdefault(p["method"], {}).setdefault(p["budget"], []).append(p)
  return groups


def _test(runs: list[dict]) -> list[float]:
  """Test bits/dim of each seed's run."""
  return [r["bits_per_dim"]["mean"] for r in runs]


def _bits_cell(runs: list[dict]) -> str:
  """Mean test bits/dim over seeds, with the sample std and seed count when there are several."""
  values = _test(runs)
  if len(values) == 1:
    return f"{values[0]:.4f}"
  return f"{np.mean(values):.4f} ± {stats.sample_std(values):.4f} ({len(values)} seeds)"


def _settings_cell(runs: list[dict]) -> str:
  """The tuned settings the runs trained with (the config's own when none)."""
  settings = runs[0].get("settings") or {}
  return ", ".join(f"{k} {v:g}" for k, v in sorted(settings.items())) or "config"


def _val_curve(by_budget: dict[float, list[dict]]) -> dict[float, float]:
  """{budget: mean validation bits/dim over seeds} of one method."""
  return {
    b: float(np.mean([r.get("val_bits_per_dim", np.nan) for r in rs]))
    for b, rs in by_budget.items()
  }


def baseline_convergence(result: dict) -> tuple[str | None, bool]:
  """(the best baseline at the top budget by validation, whether its curve has converged).

  Baselines are the methods other than projectable and its rank-0 control.
  """
  groups = _grouped(result["points"])
  baselines = {m: g for m, g in groups.items() if not m.startswith("projectable")}
  if not baselines:
    return None, False
  top = max(b for g in baselines.values() for b in g)
  at_top = {m: _val_curve(g)[top] for m, g in baselines.items() if top in g}
  best = min(at_top, key=at_top.__getitem__)
  return best, stats.converged(_val_curve(baselines[best]))


def _significance(groups: dict[str, dict[float, list[dict]]]) -> list[str]:
  """Table lines: projectable against the best other small model at each multi-seed budget.

  A budget where some other small model has fewer seeds than projectable gets no verdict:
  a win over the methods that happen to have finished is not a win.
  """
  ours = groups.get("projectable", {})
  rivals = [m for m in groups if m not in ("projectable", "source")]
  lines = []
  for budget, runs in sorted(ours.items()):
    if len(runs) < 2 or not rivals:
      continue
    short = [m for m in rivals if len(groups[m].get(budget, [])) < len(runs)]
    if short:
      seeds = ", ".join(f"{m} {len(groups[m].get(budget, []))}" for m in short)
      lines.append(f"| {budget:g}x | – | – | – | incomplete (seeds of {len(runs)}: {seeds}) |")
      continue
    best = min(rivals, key=lambda m: np.mean(_test(groups[m][budget])))
    a, b = _test(runs), _test(groups[best][budget])
    lines.append(
      f"| {budget:g}x | {best} | {np.mean(a) - np.mean(b):+.4f} | {stats.welch_p(a, b):.3g} "
      f"| projectable {stats.verdict(a, b)} |"
    )
  if not lines:
    return []
  return [
    "",
    "## Projectable against the best other method (Welch's t-test on test bits/dim)",
    "",
    "| budget | best other | difference | p | verdict (p < 0.05) |",
    "|---|---|---|---|---|",
    *lines,
  ]


def _convergence(groups: dict[str, dict[float, list[dict]]], best: str | None) -> list[str]:
  """Table lines: each method's validation gain per doubling of budget."""
  gains = {m: stats.doubling_gains(_val_curve(g)) for m, g in groups.items()}
  budgets = sorted({b for g in gains.values() for b in g})
  if not budgets:
    return []
  lines = [
    "",
    "## Validation gain per doubling of budget (converged below "
    f"{stats.CONVERGED_GAIN:.0%}; best baseline at the top: {best})",
    "",
    "| method | " + " | ".join(f"to {b:g}x" for b in budgets) + " |",
    "|---" * (len(budgets) + 1) + "|",
  ]
  for method, by_budget in gains.items():
    cells = [f"{by_budget[b]:.1%}" if b in by_budget else "" for b in budgets]
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return lines


def _at_edge(chosen: dict, grid: dict) -> list[str]:
  """The knobs whose chosen value is the smallest or largest of a grid of 3 or more."""
  return [
    knob
    for knob, values in grid.items()
    if len(values) > 2 and chosen.get(knob.removesuffix("s")) in (min(values), max(values))
  ]


def _tuning(trials: list[dict], grid: dict) -> list[str]:
  """Table lines: every trial's validation bits/dim, the chosen one in bold, and a flag where
  the choice sits on an edge of a grid (the best may lie beyond it)."""
  if not trials:
    return []
  lines = _section(
    "Tuning: validation bits/dim of every trial (chosen in bold; test never chooses)",
    "| method | budget | trials | chosen at a grid's edge |",
  )
  for t in trials:
    cells = [
      _trial_cell(trial["settings"], _val(trial["val_bits_per_dim"]), t["chosen"])
      for trial in t["trials"]
    ]
    edge = ", ".join(_at_edge(t["chosen"], grid)) or "no"
    lines.append(f"| {t['method']} | {t['budget']:g}x | " + "; ".join(cells) + f" | {edge} |")
  return lines + _confirmation([t for t in trials if "confirmation" in t])


def _confirmation(trials: list[dict]) -> list[str]:
  """Table lines: the first seed's best trials on every seed, the lowest mean chosen."""
  if not trials:
    return []
  lines = _section(
    "Confirmation: the first seed's best trials on every seed (lowest mean chosen, bold)",
    "| method | budget | seeds | settings: mean validation (per seed) |",
  )
  for t in trials:
    cells = []
    for c in t["confirmation"]:
      per_seed = " / ".join(_val(v) for v in c["val_bits_per_dim"])
      cells.append(_trial_cell(c["settings"], f"{_val(c['mean'])} ({per_seed})", t["chosen"]))
    seeds = ",".join(str(s) for s in t["confirmation"][0]["seeds"])
    lines.append(f"| {t['method']} | {t['budget']:g}x | {seeds} | " + "; ".join(cells) + " |")
  return lines


def _section(title: str, header: str) -> list[str]:
  """A titled table's first lines: ``header`` is its row of column names."""
  return ["", f"## {title}", "", header, "|" + "---|" * header.count(" | ") + "---|"]


def _trial_cell(settings: dict, figure: str, chosen: dict) -> str:
  """'knob value, ...: figure', in bold where ``settings`` are the chosen ones."""
  cell = ", ".join(f"{k} {v:g}" for k, v in sorted(settings.items())) + f": {figure}"
  return f"**{cell}**" if settings == chosen else cell


def _val(value: float) -> str:
  """A validation figure; an infinite one is a diverged run."""
  return f"{value:.4f}" if value != math.inf else "diverged"


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
  rate = _projector_rate(result)
  if rate is not None:
    budgets_are += f" Projectors train at {rate:g} x the learning rate unless a trial sets it."
  on_source = sorted({p["method"] for p in result["points"]} & set(arms.FROM_SOURCE))
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
    ("Test bits/dim (mean ± sample std over seeds)", _bits_cell),
    ("Steps (methods built on a source: source + own)", _steps_cell),
    ("Settings (chosen on validation at the nearest tuned budget)", _settings_cell),
  ):
    lines += ["", f"## {title}", "", header, rule]
    for method, by_budget in groups.items():
      cells = [cell(by_budget[b]) if b in by_budget else "" for b, _ in budgets]
      lines.append(f"| {method} | " + " | ".join(cells) + " |")
  lines += _significance(groups)
  lines += _convergence(groups, baseline_convergence(result)[0])
  lines += _tuning(result.get("tuning", []), result.get("grid", {}))
  return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
  """Test bits/dim against training FLOPs and against measured training seconds (log x),
  one line per method, the seeds' sample std as bars."""
  fig = Figure(figsize=(12.0, 4.5))
  amortised = "trained_source" in result
  panels = (
    ("train_flops", "own training FLOPs (source apart)" if amortised else "training FLOPs"),
    ("wall_s", "measured training seconds on this machine"),
  )
  for i, (key, label) in enumerate(panels):
    ax = fig.add_subplot(1, 2, i + 1)
    for method, by_budget in _grouped(result["points"]).items():
      runs = [_test(by_budget[b]) for b in sorted(by_budget)]
      ax.errorbar(
        [np.mean([r[key] for r in by_budget[b]]) for b in sorted(by_budget)],
        [np.mean(values) for values in runs],
        yerr=[stats.sample_std(values) if len(values) > 1 else 0.0 for values in runs],
        marker="o",
        capsize=3,
        label=method,
      )
    ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("test bits/dim")
    ax.grid(alpha=0.3, which="both")
    if result["points"]:  # A report of unfinished points only has no lines to name.
      ax.legend(fontsize="small")
  fig.suptitle(f"{result['dataset']}: test bits/dim against training compute")
  # Fixed margins: tight_layout measured every label and took 45% of the plot's time, and a
  # frontier redraws it at every (polling) report.
  fig.subplots_adjust(left=0.06, right=0.98, bottom=0.12, top=0.9, wspace=0.18)
  fig.savefig(path, dpi=100)
