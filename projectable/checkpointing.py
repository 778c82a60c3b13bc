"""Orbax checkpoints of the train state and of the best-on-validation weights.

``DIR/checkpoints/<step>/state``: the full train state (step, params, optimizer
state), the last ``keep`` steps, written atomically; restore-or-init resumes
from the latest. ``DIR/best/<step>/{params,metrics}``: the weights of the step
with the lowest validation bits/dim and its metrics (JSON), kept once.
Restores always target abstract arrays carrying the current mesh's shardings,
so a checkpoint written under one mesh loads under another.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of ``tree`` (arrays or structs) with the given shardings."""
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
  )


class Checkpoints:
  """The workdir's two checkpoint managers."""

  def __init__(self, workdir: str, keep: int):
    self.state = ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
    )
    self.best = ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "best"),
      options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
    )

  def latest_step(self) -> int | None:
    return self.state.latest_step()

  def save_state(self, step: int, state: Any, data_iter: Any = None) -> None:
    """Saves the train state and, if given, the grain iterator's state (item 'data')."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    self.state.save(step, args=ocp.args.Composite(**items))

  def restore_state(
    self, abstract_state: Any, step: int | None = None, data_iter: Any = None
  ) -> Any:
    """The train state; also restores ``data_iter`` in place where the step saved one."""
    step = self.state.latest_step() if step is None else step
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None and "data" in self.state.item_metadata(step):
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    return self.state.restore(step, args=ocp.args.Composite(**items)).state

  def save_best(self, step: int, params: Any, metrics: dict) -> None:
    self.best.save(
      step,
      args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), metrics=ocp.args.JsonSave(metrics)
      ),
    )

  def best_metrics(self) -> dict | None:
    step = self.best.latest_step()
    if step is None:
      return None
    return self.best.restore(step, args=ocp.args.Composite(metrics=ocp.args.JsonRestore())).metrics

  def restore_best_params(self, abstract_params: Any) -> Any:
    step = self.best.latest_step()
    restored = self.best.restore(
      step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params))
    )
    return restored.params

  def wait(self) -> None:
    self.state.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.state.close()
    self.best.close()
