"""A finished run read back from its workdir: its config and its best or checkpointed weights."""

from __future__ import annotations

import os
from typing import NamedTuple

import jax
import ml_collections

from projectable import data as data_lib
from projectable.data.records import TaskData
from projectable.training import checkpoints, sharding, workdir_guard
from projectable.training.modes import Method, make_method
from projectable.training.trainer import trainer_for


class Run(NamedTuple):
  """A training run restored from its workdir."""

  config: ml_collections.ConfigDict
  method: Method
  params: dict
  data: TaskData
  step: int  # The training step of the restored weights.
  weights: str  # 'best' (best on validation) or 'checkpoint' (the train state at ``step``).


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config from ``workdir/config.json``."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"no workdir at {workdir}")
  saved = workdir_guard.saved_config(workdir)
  if saved is None:
    raise FileNotFoundError(f"{workdir} has no config.json; is it a workdir of launch/train.py?")
  return ml_collections.ConfigDict(saved)


def _saved_steps(workdir: str, kind: str) -> list[int]:
  """Steps of the finished checkpoints under ``workdir/<kind>/`` ('checkpoints' or 'best')."""
  root = os.path.join(workdir, kind)
  if not os.path.isdir(root):
    return []
  return sorted(
    int(n) for n in os.listdir(root) if n.isdigit() and os.path.isdir(os.path.join(root, n))
  )


def load_run(workdir: str, step: int | None = None) -> Run:
  """The run in ``workdir``: its best weights, or the train state saved at ``step``."""
  workdir = os.path.abspath(workdir)
  config = read_config(workdir)
  if step is None:
    best = _saved_steps(workdir, "best")
    if not best:
      raise FileNotFoundError(
        f"{workdir} has no best-on-validation checkpoint (best/<step>/); "
        "has its training reached an evaluation?"
      )
    chosen, weights = best[-1], "best"
  else:
    saved = _saved_steps(workdir, "checkpoints")
    if step not in saved:
      raise FileNotFoundError(
        f"{workdir}/checkpoints has no step {step}; saved steps: {saved or 'none'}"
      )
    chosen, weights = step, "checkpoint"
  method, params, data = restore_params(config, workdir, step)
  return Run(config, method, params, data, chosen, weights)


def restore_params(
  config: ml_collections.ConfigDict, workdir: str, step: int | None = None
) -> tuple:
  """(method, params, data) from a workdir: the best weights, or the state at ``step``."""
  data = data_lib.load(config.data)
  method = make_method(config, data)
  mesh = sharding.make_mesh(config.mesh)
  with jax.set_mesh(mesh):
    trainer = trainer_for(method, mesh)
    ckpts = checkpoints.Checkpoints(workdir, config.train.keep_checkpoints)
    try:
      if step is None:
        params = ckpts.restore_best_params(trainer.abstract_state["params"])
      else:
        params = ckpts.restore_state(trainer.abstract_state, step)["params"]
    finally:
      ckpts.close()
  return method, params, data
