"""Every arm under one matched budget, several seeds, and ablation sweeps.

Each run lives in its own sub-workdir ``DIR/<run>/`` and resumes (or is
skipped when finished) on a rerun. Budgets (``budget``):

* ``steps``: every arm runs ``train.num_steps`` steps of the same task-grouped
  batch, so all see the same images (the paper's comparison);
* ``flops``: every arm gets the training FLOPs of the projectable run
  (``arms.reference_flops``), so cheaper small-model arms run more steps.

Arms built on the trained source are charged its pretraining too (``arms``).
"""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np

from projectable import data as data_lib
from projectable.experiments import arms
from projectable.experiments.progress import PointProgress
from projectable.specialists import images


def summarize(runs: list[dict]) -> dict:
  """Mean, spread and per-seed values of one method's runs."""
  means = [r["bits_per_dim"]["mean"] for r in runs]
  tasks = runs[0]["bits_per_dim"]["per_task"]
  return {
    "bits_per_dim": {
      "mean": float(np.mean(means)),
      "std": float(np.std(means)),
      "per_seed": means,
      "per_task": {
        t: float(np.mean([r["bits_per_dim"]["per_task"][t] for r in runs])) for t in tasks
      },
    },
    "num_params_small": runs[0]["num_params"]["small"],
    "train_flops": float(np.mean([r["train_flops"] for r in runs])),
    "steps": runs[0]["final_step"]["step"],
    "wall_s": float(np.mean([r["wall_s"] for r in runs])),
  }


def compare(
  config: ml_collections.ConfigDict,
  workdir: str,
  seeds: list[int],
  budget: str,
  methods: tuple[str, ...] = arms.DEFAULT_ARMS,
  distill_weight: float = arms.DISTILL_WEIGHT,
) -> dict:
  """Runs ``methods`` for each seed under ``budget``; writes comparison.{json,md,png}."""
  if budget not in ("steps", "flops"):
    raise ValueError(f"--budget={budget!r}: use 'steps' or 'flops'")
  unknown = set(methods) - set(arms.ARMS)
  if unknown:
    raise ValueError(f"unknown methods {sorted(unknown)}; known: {arms.ARMS}")
  data = data_lib.load(config.data)
  runs: dict[str, list[dict]] = {m: [] for m in methods}
  needs_source = bool({"source", "weight_selection", *arms.FROM_SOURCE} & set(methods))
  per_seed = ["source"] * needs_source + [m for m in methods if m != "source"]
  progress = PointProgress(len(seeds) * len(per_seed))
  points = iter(range(1, progress.total + 1))
  for seed in seeds:
    seeded = config.copy_and_resolve_references()
    seeded.seed = seed
    source_dir = os.path.join(workdir, f"source_seed{seed}")
    source_metrics = None
    if needs_source:
      source_config = arms.arm_config(seeded, "source", budget, data, source_dir)
      source_metrics = _run_point(
        progress, next(points), f"source seed {seed}", source_config, source_dir
      )
    for method in methods:
      if method == "source":
        runs[method].append(source_metrics)
      elif method == "weight_selection":
        progress.start(next(points), f"weight_selection seed {seed} (evaluation only)")
        runs[method].append(arms.weight_selection(seeded, source_dir, source_metrics))
        progress.done(timed=False)  # Seconds of evaluation: not a training point's time.
      else:
        run_dir = os.path.join(workdir, f"{method}_seed{seed}")
        run_config = arms.arm_config(seeded, method, budget, data, source_dir, distill_weight)
        metrics = _run_point(progress, next(points), f"{method} seed {seed}", run_config, run_dir)
        if method in arms.FROM_SOURCE:
          metrics["train_flops"] += source_metrics["train_flops"]
        runs[method].append(metrics)
  progress.done()
  result = {
    "dataset": data.name,
    "budget": budget,
    "seeds": seeds,
    "distill_weight": distill_weight,
    "methods": {m: summarize(r) for m, r in runs.items()},
  }
  write_reports(result, workdir)
  return result


def _run_point(
  progress: PointProgress, k: int, name: str, config: ml_collections.ConfigDict, run_dir: str
) -> dict:
  """``arms.run_arm`` as point ``k``: logged with an ETA; a reused finished run is not timed."""
  reused = arms.finished_metrics(config, run_dir) is not None
  name = f"{name}, {config.train.num_steps} steps in {run_dir}"
  progress.start(k, name + (" (finished: reused)" if reused else ""))
  metrics = arms.run_arm(config, run_dir)
  progress.done(timed=not reused)
  return metrics


def _verdict(a: dict, b: dict) -> str:
  """'better', 'worse' or 'no difference' of a against b, judged against the seed spread."""
  diff = b["bits_per_dim"]["mean"] - a["bits_per_dim"]["mean"]
  spread = max(a["bits_per_dim"]["std"], b["bits_per_dim"]["std"])
  if abs(diff) <= spread:
    return f"no difference ({diff:+.4f} bits/dim, spread {spread:.4f})"
  return f"{'better' if diff > 0 else 'worse'} by {abs(diff):.4f} bits/dim (spread {spread:.4f})"


def markdown(result: dict) -> str:
  """A table a person reads, with the headline verdicts."""
  methods = result["methods"]
  lines = [
    f"# {result['dataset']}: comparison at matched {result['budget']}, seeds {result['seeds']}",
    "",
    "| method | test bits/dim (mean ± std) | small params | steps | train FLOPs | wall s |",
    "|---|---|---|---|---|---|",
  ]
  for name, m in methods.items():
    bpd = m["bits_per_dim"]
    lines.append(
      f"| {name} | {bpd['mean']:.4f} ± {bpd['std']:.4f} | {m['num_params_small']} "
      f"| {m['steps']} | {m['train_flops']:.3g} | {m['wall_s']:.0f} |"
    )
  if any(name.endswith("_distill") for name in methods):
    lines += ["", f"*_distill: alpha = {result['distill_weight']:g}, teacher = the source run."]
  if "projectable" in methods:
    lines.append("")
    for other in ("universal", "specialists", *arms.FROM_SOURCE):
      if other in methods:
        lines.append(
          f"- projectable vs {other}: {_verdict(methods['projectable'], methods[other])}"
        )
    if "universal" in methods and "source" in methods:
      gap = methods["universal"]["bits_per_dim"]["mean"] - methods["source"]["bits_per_dim"]["mean"]
      closed = (
        methods["universal"]["bits_per_dim"]["mean"]
        - methods["projectable"]["bits_per_dim"]["mean"]
      )
      lines.append(
        f"- fraction of the universal→source gap closed by projection: {closed / gap:.2f}"
        if gap > 0
        else "- the source is not better than the universal model here, so there is no gap to close"
      )
  return "\n".join(lines) + "\n"


def write_reports(result: dict, workdir: str, name: str = "comparison") -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, f"{name}.json"), "w") as f:
    json.dump(result, f, indent=2)
  with open(os.path.join(workdir, f"{name}.md"), "w") as f:
    f.write(markdown(result))
  series = {m: v["bits_per_dim"]["per_task"] for m, v in result["methods"].items()}
  images.save_bar_chart(
    series,
    os.path.join(workdir, f"{name}.png"),
    title=f"{result['dataset']}: test bits/dim per task (matched {result['budget']})",
    ylabel="bits/dim",
  )


def sweep(
  config: ml_collections.ConfigDict, workdir: str, field: str, values: list, seeds: list[int]
) -> dict:
  """Projectable runs with ``config.<field>`` set to each value; writes sweep_<field>.*."""
  section, _, name = field.rpartition(".")
  runs = {}
  progress = PointProgress(len(values) * len(seeds))
  points = iter(range(1, progress.total + 1))
  for value in values:
    per_seed = []
    for seed in seeds:
      variant = config.copy_and_resolve_references()
      variant.mode, variant.seed = "projectable", seed
      (variant[section] if section else variant)[name] = value
      run_dir = os.path.join(workdir, f"{field}={value}_seed{seed}")
      label = f"{field}={value} seed {seed}"
      per_seed.append(_run_point(progress, next(points), label, variant, run_dir))
    runs[f"{field}={value}"] = summarize(per_seed)
  result = {"dataset": config.data.name, "budget": "steps", "seeds": seeds, "methods": runs}
  write_reports(result, workdir, name=f"sweep_{field}")
  return result
