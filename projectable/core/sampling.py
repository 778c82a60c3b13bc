"""Autoregressive sampling of pixel tokens: a KV-cached sampler and a naive reference.

Both draw token i with ``jax.random.categorical(fold_in(key, i), logits / temperature)``
(argmax when the temperature is 0), so for the same key they give the same tokens.
``sample`` runs one jitted scan over positions and caches every layer's keys and
values, shape (B, heads, L, head_dim) per layer; each step embeds one token and
attends over the cached prefix (``decode.cached_layer``, the layer math of ``model``).
``sample_naive`` recomputes the whole sequence with ``model.apply`` per position.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from projectable.core import decode, model
from projectable.core.model import ModelConfig


def sample(
  cfg: ModelConfig,
  params: dict,
  num: int,
  key: jax.Array,
  task_C: jax.Array | None = None,
  temperature: float = 1.0,
) -> jax.Array:
  """``num`` int32 token sequences (num, seq_len) drawn with a KV cache.

  ``task_C`` is the task descriptor of a conditional model (None for an
  unconditional specialist). The scan is compiled once per (cfg, num,
  temperature) and weight shapes; new keys, weights or descriptors reuse it.
  """
  task_BxC = _task_batch(cfg, task_C, num, temperature)
  tokens_BxL, _ = _sample_cached(cfg, params, num, key, task_BxC, float(temperature))
  return tokens_BxL


def sample_naive(
  cfg: ModelConfig,
  params: dict,
  num: int,
  key: jax.Array,
  task_C: jax.Array | None = None,
  temperature: float = 1.0,
) -> jax.Array:
  """Same draws as ``sample``, recomputing the full sequence at every position."""
  task_BxC = _task_batch(cfg, task_C, num, temperature)
  tokens_BxL = jnp.zeros((num, cfg.seq_len), jnp.int32)
  for i in range(cfg.seq_len):
    tokens_BxL = _naive_step(
      cfg, params, tokens_BxL, task_BxC, key, jnp.int32(i), float(temperature)
    )
  return tokens_BxL


def _task_batch(
  cfg: ModelConfig, task_C: jax.Array | None, num: int, temperature: float
) -> jax.Array | None:
  """Checks the arguments; the descriptor repeated for every sample, or None."""
  if num < 1:
    raise ValueError(f"num must be at least 1, got {num}")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
  if not cfg.num_classes:
    if task_C is not None:
      raise ValueError("an unconditional model takes no task descriptor; pass task_C=None")
    return None
  if task_C is None:
    raise ValueError(f"a conditional model needs a task descriptor of shape ({cfg.num_classes},)")
  task_C = jnp.asarray(task_C, jnp.float32)
  if task_C.shape != (cfg.num_classes,):
    raise ValueError(f"task_C has shape {task_C.shape}, expected ({cfg.num_classes},)")
  return jnp.broadcast_to(task_C[None], (num, cfg.num_classes))


def _choose(logits_BxV: jax.Array, key: jax.Array, temperature: float) -> jax.Array:
  """One token per row: argmax at temperature 0, else a categorical draw."""
  if temperature == 0.0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, logits_BxV / temperature, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("cfg", "temperature"))
def _naive_step(
  cfg: ModelConfig,
  params: dict,
  tokens_BxL: jax.Array,
  task_BxC: jax.Array | None,
  key: jax.Array,
  i: jax.Array,
  temperature: float,
) -> jax.Array:
  """``tokens_BxL`` with position ``i`` drawn from a full forward pass."""
  logits_BxLxV = model.apply(cfg, params, tokens_BxL, task_BxC)
  logits_BxV = jax.lax.dynamic_index_in_dim(logits_BxLxV, i, axis=1, keepdims=False)
  token_B = _choose(logits_BxV, jax.random.fold_in(key, i), temperature)
  return jax.lax.dynamic_update_slice_in_dim(tokens_BxL, token_B[:, None], i, axis=1)


@functools.partial(jax.jit, static_argnames=("cfg", "num", "temperature"))
def _sample_cached(
  cfg: ModelConfig,
  params: dict,
  num: int,
  key: jax.Array,
  task_BxC: jax.Array | None,
  temperature: float,
) -> tuple[jax.Array, jax.Array]:
  """Tokens (B, L) and their log-probabilities at temperature 1 (B, L).

  One scan over positions carrying the KV cache and the next input embedding.
  """
  if task_BxC is None:
    start_BxD = jnp.broadcast_to(params["start_embed"], (num, cfg.d))
  else:
    start_BxD = task_BxC @ params["start_embed"]
  # One heads-major cache (B, heads, L, head_dim) per layer: attention reads it without
  # a transpose or a slice, and each step writes one position in place. The layer loop
  # is unrolled over per-layer weights split once outside the position loop.
  cache_shape = (num, cfg.heads, cfg.seq_len, cfg.head_dim)
  dtype = cfg.compute_dtype  # Of the products and of the cache they read.
  caches = tuple(jnp.zeros(cache_shape, dtype) for _ in range(2 * cfg.depth))
  layers = [jax.tree.map(lambda x, l=l: x[l], params["blocks"]) for l in range(cfg.depth)]

  def position(carry, i):
    caches, in_BxD = carry
    x_BxD = in_BxD + jax.lax.dynamic_index_in_dim(params["pos_embed"], i)  # (1, D)
    updated = []
    for l, w in enumerate(layers):
      x_BxD, keys, values = decode.cached_layer(cfg, w, x_BxD, *caches[2 * l : 2 * l + 2], i, dtype)
      updated += [keys, values]
    x_BxD = model.layer_norm(x_BxD, params["final_ln_scale"], params["final_ln_bias"])
    logits_BxV = model.einsum("bd,dv->bv", x_BxD, params["unembed"], dtype)
    logits_BxV = logits_BxV + params["unembed_bias"][None]
    token_B = _choose(logits_BxV, jax.random.fold_in(key, i), temperature)
    logp_B = -model.token_nll(logits_BxV[:, None], token_B[:, None])[:, 0]
    return (tuple(updated), params["token_embed"][token_B]), (token_B, logp_B)

  _, (tokens_LxB, logp_LxB) = jax.lax.scan(position, (caches, start_BxD), jnp.arange(cfg.seq_len))
  return tokens_LxB.T, logp_LxB.T
