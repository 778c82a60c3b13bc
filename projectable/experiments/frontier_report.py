"""A frontier's reports: frontier.{json,md,png}, and frontiers run apart merged into one."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from projectable.experiments import arms


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
