"""The arms an experiment compares, under a matched budget, and how each one runs.

Trained from scratch (``TRAINED``): the four modes, and ``projectable_rank0``, the
projectable control with ``projector.rank=0``: the pure reparameterisation of the
small model's weights as projections of the source's, with no task-conditioned part
(every task gets the same projection, so no specialisation). ``weight_selection`` is the
fixed selection of a trained ``source`` run, evaluated as is; the ``FROM_SOURCE``
arms build on that source: ``weight_selection_ft`` fine-tunes its selection per
task; ``projectable_tuned`` and ``projectable_frozen`` train projectors on it,
tuning it through the projections or keeping it fixed; ``universal_distill`` and
``specialists_distill`` train those small models from scratch with it as their
frozen teacher (``config.distill``, alpha = ``distill_weight``). Each run lives in
its own workdir and resumes (or is reused when finished) on a rerun.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import ml_collections
from absl import logging

from projectable import data as data_lib
from projectable.experiments import run
from projectable.training import sharding, step_log, warmstart
from projectable.training.modes import make_method
from projectable.training.trainer import trainer_for

TRAINED = ("source", "projectable", "universal", "specialists", "projectable_rank0")
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
ARMS = (*TRAINED, "weight_selection", *FROM_SOURCE)
# What a comparison runs unless told: every method but the projectors on a trained source.
DEFAULT_ARMS = tuple(m for m in ARMS if m not in PROJECTORS_ON_SOURCE)
MODES = {  # The training mode of each method that is not a mode itself.
  "projectable_rank0": "projectable",
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
  config.mode = MODES.get(method, method)
  if method == "projectable_rank0":
    config.projector.rank = 0
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
  return make_method(config, data).step_flops()


def reference_flops(base: ml_collections.ConfigDict, data: data_lib.TaskData) -> float:
  """The matched-FLOPs budget: ``base.train.num_steps`` steps of projectable."""
  return base.train.num_steps * step_flops(mode_config(base, "projectable", ""), data)


def arm_config(
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


# Written where a run stopped at a non-finite loss: its result is that it diverged.
DIVERGED = "diverged.json"


def finished_metrics(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  """The metrics plus wall time of the run in ``workdir`` if it finished ``config``'s steps
  (or diverged on the way: ``_diverged_metrics``)."""
  diverged = os.path.join(workdir, DIVERGED)
  if os.path.exists(diverged):
    with open(diverged) as f:
      record = json.load(f)
    if record["num_steps"] == config.train.num_steps:
      return _diverged_metrics(record)
  done = os.path.join(workdir, "eval", "metrics.json")
  wall_path = os.path.join(workdir, "wall_s.json")
  if os.path.exists(done) and os.path.exists(wall_path):
    with open(done) as f, open(wall_path) as g:
      metrics = json.load(f)
      if metrics["final_step"]["step"] == config.train.num_steps:
        return {**metrics, "wall_s": json.load(g)["wall_s"]}
  return None


def run_arm(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes, or reuses) one run; its metrics plus wall time."""
  finished = finished_metrics(config, workdir)
  if finished is not None:
    return finished
  start = time.time()
  try:
    metrics = run.train_and_evaluate(config, workdir)
  except step_log.Diverged as error:
    # A result, not a crash: the sweep goes on, and validation never chooses it.
    record = {
      "step": error.step,
      "num_steps": config.train.num_steps,
      "wall_s": time.time() - start,
      "error": str(error),
    }
    with open(os.path.join(workdir, DIVERGED), "w") as f:
      json.dump(record, f, indent=2)
    logging.warning(
      "%s diverged at step %d (remove its %s to train it again)", workdir, error.step, DIVERGED
    )
    return _diverged_metrics(record)
  wall_s = time.time() - start
  with open(os.path.join(workdir, "wall_s.json"), "w") as f:
    json.dump({"wall_s": wall_s}, f)
  return {**json.loads(json.dumps(metrics)), "wall_s": wall_s}


def _diverged_metrics(record: dict) -> dict:
  """A diverged run's figures: infinite bits/dim (never chosen, never averaged away)."""
  return {
    "bits_per_dim": {"mean": math.inf, "per_task": {}},
    "val_bits_per_dim": {"mean": math.inf},
    "final_step": {"step": record["step"]},
    "train_flops": math.nan,
    "wall_s": record["wall_s"],
    "diverged_at": record["step"],
  }


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
    trainer = trainer_for(method, mesh)
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
