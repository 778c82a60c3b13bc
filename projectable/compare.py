"""Every method under one matched budget, several seeds, and ablation sweeps.

Each run lives in its own sub-workdir ``DIR/<run>/`` and resumes (or is
skipped when finished) on a rerun. Budgets (``budget``):

* ``steps``: every method runs ``train.num_steps`` steps of the same task-grouped
  batch, so all see the same images (the paper's comparison);
* ``flops``: every method gets the training FLOPs of the projectable run
  (``projectable.flops``), so cheaper small-model methods run more steps.

``weight_selection`` is the fixed selection of the trained ``source`` run,
evaluated as is; ``weight_selection_ft`` fine-tunes it per task with the
specialists' budget (its FLOPs include the source's pretraining);
``projectable_tuned`` and ``projectable_frozen`` train projectors on that source,
tuning it through the projections or keeping it fixed (the amortised setting).
``universal_distill`` and ``specialists_distill`` train those small models from
scratch with that source as their frozen teacher (``config.distill``, alpha =
``distill_weight``), charged alike: their own steps (teacher forwards included)
plus the source's pretraining.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import ml_collections
import numpy as np

from projectable import data as data_lib
from projectable import flops, images, sharding, train, warmstart
from projectable.modes import make_method
from projectable.trainer import Trainer

TRAINED = ("source", "projectable", "universal", "specialists")
# Methods trained from the seed's trained ``source`` run: warm-started, or distilled from it.
PROJECTORS_ON_SOURCE = ("projectable_tuned", "projectable_frozen")
FROM_SOURCE = (
  *PROJECTORS_ON_SOURCE,
  "weight_selection_ft",
  "universal_distill",
  "specialists_distill",
)
# Of those, the ones that start from the source's weights (the rest distill from it).
_WARM_STARTED = (*PROJECTORS_ON_SOURCE, "weight_selection_ft")
METHODS = (*TRAINED, "weight_selection", *FROM_SOURCE)
# What a comparison runs unless told: every method but the projectors on a trained source.
DEFAULT_METHODS = tuple(m for m in METHODS if m not in PROJECTORS_ON_SOURCE)
_MODES = {
  "projectable_tuned": "projectable",
  "projectable_frozen": "projectable",
  "weight_selection_ft": "specialists",
  "universal_distill": "universal",
  "specialists_distill": "specialists",
}
# alpha of the *_distill methods: NLL and teacher KL weighted equally (see docs/method.md).
DISTILL_WEIGHT = 0.5


def scaled(config: ml_collections.ConfigDict, num_steps: int) -> ml_collections.ConfigDict:
  """``config`` with ``num_steps`` and its periods scaled alike."""
  config = config.copy_and_resolve_references()
  ratio = num_steps / config.train.num_steps
  train_cfg = config.train

  def period(every: int) -> int:
    """As many evaluations (or saves) as before, the last one on the last step."""
    return math.ceil(num_steps / max(1, round(train_cfg.num_steps / every)))

  train_cfg.eval_every = period(train_cfg.eval_every)
  train_cfg.checkpoint_every = period(train_cfg.checkpoint_every)
  train_cfg.warmup_steps = min(round(train_cfg.warmup_steps * ratio), num_steps - 1)
  train_cfg.num_steps = num_steps
  return config


def mode_config(
  base: ml_collections.ConfigDict,
  method: str,
  source_workdir: str,
  distill_weight: float = DISTILL_WEIGHT,
) -> ml_collections.ConfigDict:
  """``base`` training ``method``; the ``FROM_SOURCE`` methods start from (projectable_*,
  weight_selection_ft) or distill from (*_distill, alpha = ``distill_weight``) the source
  in ``source_workdir``; projectable_frozen keeps it fixed."""
  config = base.copy_and_resolve_references()
  config.mode = _MODES.get(method, method)
  if method in _WARM_STARTED:
    config.init.source_workdir = source_workdir
    if method == "projectable_frozen":
      config.train.freeze_source = True
  elif method in FROM_SOURCE:
    config.distill.weight = distill_weight
    config.distill.teacher_workdir = source_workdir
  return config


def step_flops(config: ml_collections.ConfigDict, data: data_lib.TaskData) -> float:
  """Training FLOPs of one step of ``config.mode``."""
  return flops.train_step_flops(config, make_method(config, data))


def reference_flops(base: ml_collections.ConfigDict, data: data_lib.TaskData) -> float:
  """The matched-FLOPs budget: ``base.train.num_steps`` steps of projectable."""
  return base.train.num_steps * step_flops(mode_config(base, "projectable", ""), data)


def method_config(
  base: ml_collections.ConfigDict,
  method: str,
  budget: str,
  data: data_lib.TaskData,
  source_workdir: str,
  distill_weight: float = DISTILL_WEIGHT,
) -> ml_collections.ConfigDict:
  """The training config of one method under the matched budget."""
  config = mode_config(base, method, source_workdir, distill_weight)
  if budget == "steps" or method == "projectable":
    return config
  steps = max(1, round(reference_flops(base, data) / step_flops(config, data)))
  return scaled(config, steps)


def finished_metrics(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  """The metrics plus wall time of the run in ``workdir`` if it finished ``config``'s steps."""
  done = os.path.join(workdir, "eval", "metrics.json")
  wall_path = os.path.join(workdir, "wall_s.json")
  if os.path.exists(done) and os.path.exists(wall_path):
    with open(done) as f, open(wall_path) as g:
      metrics = json.load(f)
      if metrics["final_step"]["step"] == config.train.num_steps:
        return {**metrics, "wall_s": json.load(g)["wall_s"]}
  return None


def run_method(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes, or reuses) one run; its metrics plus wall time."""
  finished = finished_metrics(config, workdir)
  if finished is not None:
    return finished
  start = time.time()
  metrics = train.train_and_evaluate(config, workdir)
  wall_s = time.time() - start
  with open(os.path.join(workdir, "wall_s.json"), "w") as f:
    json.dump({"wall_s": wall_s}, f)
  return {**json.loads(json.dumps(metrics)), "wall_s": wall_s}


def weight_selection(
  config: ml_collections.ConfigDict, source_workdir: str, source_metrics: dict
) -> dict:
  """Test bits/dim of the fixed selection of the trained source, no training."""
  config = config.copy_and_resolve_references()
  config.mode, config.init.source_workdir = "specialists", source_workdir
  data = data_lib.load(config.data)
  mesh = sharding.make_mesh(config.mesh)
  with jax.set_mesh(mesh):
    method = make_method(config, data)
    trainer = Trainer(config, method, mesh)
    params = warmstart.warm_params(
      method, method.init(jax.random.key(0)), warmstart.load_source(config, data)
    )
    params = jax.device_put(params, trainer.param_shardings)
    test = trainer.evaluate(params, data, data.test)["main"]
  return {
    "bits_per_dim": test,
    "num_params": method.num_params(params),
    "train_flops": source_metrics["train_flops"],
    "wall_s": 0.0,
    "final_step": {"step": 0},
  }


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
  methods: tuple[str, ...] = DEFAULT_METHODS,
  distill_weight: float = DISTILL_WEIGHT,
) -> dict:
  """Runs ``methods`` for each seed under ``budget``; writes comparison.{json,md,png}."""
  if budget not in ("steps", "flops"):
    raise ValueError(f"--budget={budget!r}: use 'steps' or 'flops'")
  unknown = set(methods) - set(METHODS)
  if unknown:
    raise ValueError(f"unknown methods {sorted(unknown)}; known: {METHODS}")
  data = data_lib.load(config.data)
  runs: dict[str, list[dict]] = {m: [] for m in methods}
  for seed in seeds:
    seeded = config.copy_and_resolve_references()
    seeded.seed = seed
    source_dir = os.path.join(workdir, f"source_seed{seed}")
    needs_source = {"source", "weight_selection", *FROM_SOURCE} & set(methods)
    source_metrics = (
      run_method(method_config(seeded, "source", budget, data, source_dir), source_dir)
      if needs_source
      else None
    )
    for method in methods:
      if method == "source":
        runs[method].append(source_metrics)
      elif method == "weight_selection":
        runs[method].append(weight_selection(seeded, source_dir, source_metrics))
      else:
        run_dir = os.path.join(workdir, f"{method}_seed{seed}")
        run_config = method_config(seeded, method, budget, data, source_dir, distill_weight)
        metrics = run_method(run_config, run_dir)
        if method in FROM_SOURCE:
          metrics["train_flops"] += source_metrics["train_flops"]
        runs[method].append(metrics)
  result = {
    "dataset": data.name,
    "budget": budget,
    "seeds": seeds,
    "distill_weight": distill_weight,
    "methods": {m: summarize(r) for m, r in runs.items()},
  }
  write_reports(result, workdir)
  return result


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
    for other in ("universal", "specialists", *FROM_SOURCE):
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
  for value in values:
    per_seed = []
    for seed in seeds:
      variant = config.copy_and_resolve_references()
      variant.mode, variant.seed = "projectable", seed
      (variant[section] if section else variant)[name] = value
      per_seed.append(run_method(variant, os.path.join(workdir, f"{field}={value}_seed{seed}")))
    runs[f"{field}={value}"] = summarize(per_seed)
  result = {"dataset": config.data.name, "budget": "steps", "seeds": seeds, "methods": runs}
  write_reports(result, workdir, name=f"sweep_{field}")
  return result
