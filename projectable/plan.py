"""Memory and compute plan of a config on a mesh, without allocating anything.

Parameter and optimizer-state bytes per device come from ``jax.eval_shape`` of
the real initialisation and the shardings the rules give each weight (the
largest shard, as a device holds it). Activation bytes are an analytic count
of what one step keeps for the backward pass (``train.remat``: block inputs, plus one
block's activations while it is recomputed).
FLOPs per step come from ``projectable.flops``.
"""

from __future__ import annotations

import math

import jax
import ml_collections

from projectable import flops
from projectable.data import TaskData
from projectable.model import ModelConfig
from projectable.modes import ProjectableMethod, make_method
from projectable.trainer import Trainer


def shard_bytes(abstract_tree, shardings_tree) -> int:
  """Bytes one device holds of a tree of arrays sharded as ``shardings_tree``."""
  total = 0
  for leaf, s in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings_tree), strict=True):
    total += math.prod(s.shard_shape(leaf.shape)) * leaf.dtype.itemsize
  return total


def activation_bytes_per_sequence(cfg: ModelConfig, bytes_per_float: int = 4) -> int:
  """Activations one sequence keeps for the backward pass of ``cfg``."""
  l, d, a, f = cfg.seq_len, cfg.d, cfg.heads * cfg.head_dim, cfg.mlp_dim
  # Per layer: LN inputs/outputs and residuals (5d), q, k, v and attention output (4a),
  # attention probabilities (heads x L; cuDNN's flash attention keeps one log-sum-exp a
  # head instead), MLP pre- and post-activation (2f).
  probs = cfg.heads * (1 if cfg.attention == "cudnn" else l)
  per_layer = l * (5 * d + 4 * a + 2 * f + probs)
  logits = 2 * l * cfg.vocab_size  # logits and log-probabilities
  if cfg.remat:
    return bytes_per_float * (cfg.depth * l * d + per_layer + logits)
  return bytes_per_float * (cfg.depth * per_layer + logits)


def plan(config: ml_collections.ConfigDict, data: TaskData, mesh: jax.sharding.Mesh) -> dict:
  """Per-device bytes (params, optimizer state, activations) and FLOPs of one step."""
  method = make_method(config, data)
  trainer = Trainer(config, method, mesh)
  state = trainer.abstract_state
  shardings = trainer.state_shardings
  data_size = mesh.shape["data"]
  sequences = config.train.batch_tasks * config.train.examples_per_task / data_size
  if isinstance(method, ProjectableMethod):
    small_cfg = method.small
    activations = sequences * activation_bytes_per_sequence(small_cfg)
    n_src = config.source_examples_per_task
    if method.uses_source_loss:
      src_sequences = sequences if n_src == -1 else config.train.batch_tasks * n_src / data_size
      activations += src_sequences * activation_bytes_per_sequence(method.src)
    # Each task's projected weights are materialised (and kept for the backward pass).
    small = jax.eval_shape(method.specialist, state["params"], 0, data.task_descriptors()[0])
    activations += config.train.batch_tasks * sum(
      math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(small)
    )
  else:
    cfg = method.src if method.name == "source" else method.small
    activations = sequences * activation_bytes_per_sequence(cfg)
  return {
    "mesh": dict(mesh.shape),
    "params_bytes": shard_bytes(state["params"], shardings["params"]),
    "opt_state_bytes": shard_bytes(state["opt_state"], shardings["opt_state"]),
    "activation_bytes": int(activations),
    "flops_per_step": flops.train_step_flops(config, method),
    "num_params": method.num_params(state["params"]),
  }


def format_plan(result: dict) -> str:
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
