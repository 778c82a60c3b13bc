"""One position of an unconditional model with a KV cache: the step an on-device sampler loops.

``step(cfg, params, token_B, position, cache)`` runs position ``position`` for a
batch: its input is ``token_B``, the pixel at ``position - 1`` (ignored at
position 0, whose input is the start embedding), and it returns the logits
(B, V) that predict pixel ``position`` and the cache with this position's keys
and values written in. The cache is one float32 array

    (depth, 2, B, heads, seq_len, head_dim)   # [layer, 0] keys, [layer, 1] values

zeros at first (``init_cache``); entries at positions after ``position`` are
never read, so a loop over positions 0..L-1 needs no other state. The layer
math is ``model``'s, for one query: its logits equal ``model.apply``'s at that
position. ``step`` is written for export (fixed shapes, one dynamic position,
layers unrolled); ``sampling.sample`` is the fast JAX sampler.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from projectable.core import model
from projectable.core.model import ModelConfig


def cache_shape(cfg: ModelConfig, batch: int) -> tuple[int, ...]:
  """Shape of the KV cache of ``batch`` sequences: (depth, 2, B, heads, seq_len, head_dim)."""
  return (cfg.depth, 2, batch, cfg.heads, cfg.seq_len, cfg.head_dim)


def init_cache(cfg: ModelConfig, batch: int) -> jax.Array:
  """The empty (zero) float32 KV cache of ``batch`` sequences."""
  return jnp.zeros(cache_shape(cfg, batch), jnp.float32)


def step(
  cfg: ModelConfig, params: dict, token_B: jax.Array, position: jax.Array, cache: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Logits (B, V) for pixel ``position`` given pixel ``position - 1``, and the new cache.

  ``cfg`` must be unconditional (one start embedding); products run in float32.
  """
  if cfg.num_classes:
    raise ValueError(f"decode.step takes an unconditional model, got num_classes={cfg.num_classes}")
  batch = token_B.shape[0]
  position = jnp.asarray(position, jnp.int32).reshape(())
  start_BxD = jnp.broadcast_to(params["start_embed"][0], (batch, cfg.d))
  token_B = jnp.clip(token_B.astype(jnp.int32), 0, cfg.vocab_size - 1)  # LiteRT's gather checks.
  prev_BxD = jnp.take(params["token_embed"], token_B, axis=0)
  x_BxD = jnp.where(position == 0, start_BxD, prev_BxD)
  x_BxD = x_BxD + jax.lax.dynamic_index_in_dim(params["pos_embed"], position)  # (1, D)
  layers = []
  for l in range(cfg.depth):
    w = {name: weights[l] for name, weights in params["blocks"].items()}
    x_BxD, keys_BxHxLxK, values_BxHxLxK = cached_layer(cfg, w, x_BxD, *cache[l], position)
    layers.append(jnp.stack([keys_BxHxLxK, values_BxHxLxK]))
  x_BxD = model.layer_norm(x_BxD, params["final_ln_scale"], params["final_ln_bias"])
  logits_BxV = model.einsum("bd,dv->bv", x_BxD, params["unembed"]) + params["unembed_bias"][None]
  return logits_BxV, jnp.stack(layers)


def cached_layer(
  cfg: ModelConfig,
  w: dict,
  x_BxD: jax.Array,
  keys_BxHxLxK: jax.Array,
  values_BxHxLxK: jax.Array,
  position: jax.Array,
  dtype: str = "float32",
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One layer (weights ``w``) at one query position: the new ``x_BxD`` and the caches with
  this position's keys and values written in (in the caches' dtype).

  ``model``'s layer math for one query, on (B, D) rather than (B, 1, D): through
  ``model.attention``'s (B, H, L, K) einsums with L=1 it measured 1.6x slower at batch 1
  on CPU. Products run in ``dtype``, accumulated in float32.
  """
  h_BxD = model.layer_norm(x_BxD, w["ln1_scale"], w["ln1_bias"])
  q, k, v = (
    model.einsum("bd,dhk->bhk", h_BxD, w[n].reshape(cfg.d, cfg.heads, cfg.head_dim), dtype)
    for n in ("wq", "wk", "wv")
  )
  at = (0, 0, position, 0)
  keys_BxHxLxK = jax.lax.dynamic_update_slice(
    keys_BxHxLxK, k[:, :, None].astype(keys_BxHxLxK.dtype), at
  )
  values_BxHxLxK = jax.lax.dynamic_update_slice(
    values_BxHxLxK, v[:, :, None].astype(values_BxHxLxK.dtype), at
  )
  scores_BxHxL = model.einsum("bhk,bhsk->bhs", q, keys_BxHxLxK, dtype) * cfg.head_dim**-0.5
  seen_1x1xL = (jnp.arange(cfg.seq_len) <= position)[None, None]
  scores_BxHxL = jnp.where(seen_1x1xL, scores_BxHxL, jnp.finfo(scores_BxHxL.dtype).min)
  probs_BxHxL = jax.nn.softmax(scores_BxHxL, -1)
  o_BxHxK = model.einsum("bhs,bhsk->bhk", probs_BxHxL, values_BxHxLxK, dtype)
  wo_HxKxD = w["wo"].reshape(cfg.heads, cfg.head_dim, cfg.d)
  x_BxD = x_BxD + model.einsum("bhk,hkd->bd", o_BxHxK, wo_HxKxD, dtype)
  x_BxD = x_BxD + model.mlp(model.layer_norm(x_BxD, w["ln2_scale"], w["ln2_bias"]), w, dtype)
  return x_BxD, keys_BxHxLxK, values_BxHxLxK


def teacher_forced_logits(cfg: ModelConfig, params: dict, tokens_BxL: jax.Array) -> jax.Array:
  """Logits (B, L, V) of ``tokens_BxL`` from ``step`` at every position: ``model.apply``'s."""
  tokens_BxL = jnp.asarray(tokens_BxL, jnp.int32)
  cache = init_cache(cfg, tokens_BxL.shape[0])
  prev_BxL = jnp.pad(tokens_BxL[:, :-1], ((0, 0), (1, 0)))
  rows = []
  for i in range(cfg.seq_len):
    logits_BxV, cache = _jitted_step(cfg, params, prev_BxL[:, i], jnp.int32(i), cache)
    rows.append(logits_BxV)
  return jnp.stack(rows, axis=1)


_jitted_step = jax.jit(step, static_argnums=0)
