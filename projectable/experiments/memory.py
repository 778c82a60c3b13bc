"""Memory and compute plan of a config on a mesh, without allocating anything.

Parameter and optimizer-state bytes per device come from ``jax.eval_shape`` of
the real initialisation and the shardings the rules give each weight (the
largest shard, as a device holds it). Activation bytes are an analytic count
of what one step keeps for the backward pass (``train.remat``: block inputs, plus one
block's activations while it is recomputed).
Both come from the mode (``training.modes``, counted by ``core.costs``).
"""

from __future__ import annotations

import math

import jax
import ml_collections

from projectable.data.records import TaskData
from projectable.training.modes import make_method
from projectable.training.trainer import trainer_for


def shard_bytes(abstract_tree, shardings_tree) -> int:
  """Bytes one device holds of a tree of arrays sharded as ``shardings_tree``."""
  total = 0
  for leaf, s in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings_tree), strict=True):
    total += math.prod(s.shard_shape(leaf.shape)) * leaf.dtype.itemsize
  return total


def memory_plan(config: ml_collections.ConfigDict, data: TaskData, mesh: jax.sharding.Mesh) -> dict:
  """Per-device bytes (params, optimizer state, activations) and FLOPs of one step."""
  method = make_method(config, data)
  trainer = trainer_for(method, mesh)
  state = trainer.abstract_state
  shardings = trainer.state_shardings
  return {
    "mesh": dict(mesh.shape),
    "params_bytes": shard_bytes(state["params"], shardings["params"]),
    "opt_state_bytes": shard_bytes(state["opt_state"], shardings["opt_state"]),
    "activation_bytes": int(method.activation_bytes(mesh.shape["data"])),
    "flops_per_step": method.step_flops(),
    "num_params": method.num_params(state["params"]),
  }


def format_memory_plan(result: dict) -> str:
  """A short human-readable report."""
  gib = 2.0**30
  total = result["params_bytes"] + result["opt_state_bytes"] + result["activation_bytes"]
  lines = [
    f"mesh {result['mesh']}  params {result['num_params']}",
    f"per device: params {result['params_bytes'] / gib:.3f} GiB, optimizer state "
    f"{result['opt_state_bytes'] / gib:.3f} GiB, activations {result['activation_bytes'] / gib:.3f}"
    f" GiB, total {total / gib:.3f} GiB",
    f"FLOPs per step (all devices): {result['flops_per_step']:.4g}",
  ]
  return "\n".join(lines)
