"""Per-pixel losses of models on task-grouped batches: NLL and distillation KL.

Tokens are ``(M, N, L)``: M tasks, N images each; conditional models see each task's
descriptor ``(M, C)``, unconditional ones come stacked per task (``params_M``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from projectable.core import model
from projectable.core.model import ModelConfig


def conditional_logits(
  cfg: ModelConfig,
  params: dict,
  tokens_MxNxL: jax.Array,
  task_MxC: jax.Array,
  key: jax.Array | None,
) -> jax.Array:
  """Next-pixel logits (M, N, L, V) of a task-conditional model."""
  m, n, l = tokens_MxNxL.shape
  tokens = tokens_MxNxL.reshape(m * n, l)
  task = jnp.repeat(task_MxC, n, axis=0)
  logits_BxLxV = model.apply(cfg, params, tokens, task, key)
  return logits_BxLxV.reshape(m, n, l, -1)


def conditional_nll(
  cfg: ModelConfig,
  params: dict,
  tokens_MxNxL: jax.Array,
  task_MxC: jax.Array,
  key: jax.Array | None,
) -> jax.Array:
  """Per-pixel NLL (M, N, L) of a task-conditional model."""
  return model.token_nll(conditional_logits(cfg, params, tokens_MxNxL, task_MxC, key), tokens_MxNxL)


def per_task_logits(
  cfg: ModelConfig, params_M: dict, tokens_MxNxL: jax.Array, key: jax.Array | None
) -> jax.Array:
  """Next-pixel logits (M, N, L, V) of M unconditional models, each on its own images."""
  keys = jax.random.split(key, tokens_MxNxL.shape[0]) if key is not None else None

  def one(params, tokens, k):
    return model.apply(cfg, params, tokens, None, k)

  return jax.vmap(one)(params_M, tokens_MxNxL, keys)


def per_task_nll(
  cfg: ModelConfig, params_M: dict, tokens_MxNxL: jax.Array, key: jax.Array | None
) -> jax.Array:
  """Per-pixel NLL (M, N, L) of M unconditional models, each on its own images."""
  return model.token_nll(per_task_logits(cfg, params_M, tokens_MxNxL, key), tokens_MxNxL)


def token_kl(teacher_logits: jax.Array, student_logits: jax.Array) -> jax.Array:
  """Per-pixel KL(teacher || student) in nats: logits (..., V) -> (...)."""
  logp_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32), axis=-1)
  logp_s = jax.nn.log_softmax(student_logits.astype(jnp.float32), axis=-1)
  return (jnp.exp(logp_t) * (logp_t - logp_s)).sum(-1)


def distill_loss(
  alpha: float, nll: jax.Array, teacher_logits: jax.Array, student_logits: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """((1 - alpha) * nll + alpha * KL, KL): the KL of the fixed (stop-gradient) teacher,
  averaged over pixels like the NLL."""
  kl = token_kl(jax.lax.stop_gradient(teacher_logits), student_logits).mean()
  return (1 - alpha) * nll + alpha * kl, kl
