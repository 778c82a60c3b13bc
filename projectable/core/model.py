"""One decoder-only Transformer over pixel tokens, used at two widths.

The source model, the universal baseline and every small specialist are this
module. Blocks are stored stacked (a leading ``layers`` axis), so a projector can
map all layers with one batched contraction, and run by ``lax.scan``: unrolled
(``ModelConfig.unroll``, training's default ``config.train.unroll_layers``: faster
steps, compile time growing with depth) or scanned (compile time flat in depth).

Position 0 carries the task: a learned start embedding mixed by a task
descriptor (weights over classes) for conditional models, or a single learned
start embedding for an unconditional specialist. Logits at position i predict
pixel i; the input at position i > 0 is pixel i - 1.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

LN_EPS = 1e-6
# Compute dtypes of the matrix products (weights, LayerNorm, softmax and losses stay float32).
COMPUTE_DTYPES = ("float32", "bfloat16")
# Attention implementations: heads-major einsums (fastest on CPU), or
# ``jax.nn.dot_product_attention`` with XLA's or cuDNN's (flash; NVIDIA GPUs, bfloat16) kernel.
ATTENTION_IMPLS = ("einsum", "xla", "cudnn")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of one Transformer (source or small)."""

  vocab_size: int  # Quantisation levels of a pixel.
  seq_len: int  # Pixels per image (all channels).
  num_classes: int  # Width of the task descriptor; 0 = unconditional specialist.
  d: int  # Residual width.
  heads: int  # Attention heads; head_dim = d // heads.
  mlp_dim: int  # MLP hidden width.
  depth: int  # Number of blocks.
  dropout: float = 0.0  # Residual and embedding dropout rate in training.
  unroll: bool = False  # Unroll the layer scan: faster steps, longer compiles (config.train).
  compute_dtype: str = "float32"  # Matmul inputs' dtype, float32 accumulation (config.train).
  remat: bool = False  # Recompute each block in the backward pass (config.train).
  attention: str = "einsum"  # Attention implementation, one of ATTENTION_IMPLS (config.train).

  def __post_init__(self):
    if self.compute_dtype not in COMPUTE_DTYPES:
      raise ValueError(f"compute_dtype={self.compute_dtype!r}: must be one of {COMPUTE_DTYPES}")
    if self.attention not in ATTENTION_IMPLS:
      raise ValueError(f"attention={self.attention!r}: must be one of {ATTENTION_IMPLS}")

  @property
  def head_dim(self) -> int:
    return self.d // self.heads

  @property
  def num_starts(self) -> int:
    return max(self.num_classes, 1)


def _param(key: jax.Array, shape: tuple[int, ...], axes: tuple, std: float | None) -> nnx.Param:
  """A parameter with logical axis names; std None means ones, 0.0 means zeros."""
  if std is None:
    value = jnp.ones(shape, jnp.float32)
  elif std == 0.0:
    value = jnp.zeros(shape, jnp.float32)
  else:
    value = std * jax.random.normal(key, shape, jnp.float32)
  return nnx.Param(value, axes=axes)


class Blocks(nnx.Module):
  """``depth`` pre-LN blocks (causal attention + GELU MLP) with stacked weights."""

  def __init__(self, cfg: ModelConfig, key: jax.Array):
    n, d, a, f = cfg.depth, cfg.d, cfg.heads * cfg.head_dim, cfg.mlp_dim
    ks = jax.random.split(key, 6)
    out_std = 0.02 / math.sqrt(2 * n)
    self.ln1_scale = _param(ks[0], (n, d), ("layers", "embed"), None)
    self.ln1_bias = _param(ks[0], (n, d), ("layers", "embed"), 0.0)
    self.wq = _param(ks[0], (n, d, a), ("layers", "embed", "heads"), 0.02)
    self.wk = _param(ks[1], (n, d, a), ("layers", "embed", "heads"), 0.02)
    self.wv = _param(ks[2], (n, d, a), ("layers", "embed", "heads"), 0.02)
    self.wo = _param(ks[3], (n, a, d), ("layers", "heads", "embed"), out_std)
    self.ln2_scale = _param(ks[0], (n, d), ("layers", "embed"), None)
    self.ln2_bias = _param(ks[0], (n, d), ("layers", "embed"), 0.0)
    self.w1 = _param(ks[4], (n, d, f), ("layers", "embed", "mlp"), 0.02)
    self.b1 = _param(ks[4], (n, f), ("layers", "mlp"), 0.0)
    self.w2 = _param(ks[5], (n, f, d), ("layers", "mlp", "embed"), out_std)
    self.b2 = _param(ks[5], (n, d), ("layers", "embed"), 0.0)
    self.heads = cfg.heads
    self.dropout = cfg.dropout
    self.unroll = cfg.unroll
    self.compute_dtype = cfg.compute_dtype
    self.remat = cfg.remat
    self.attention = cfg.attention

  def layer_weights(self) -> dict[str, jax.Array]:
    return {k: v[...] for k, v in vars(self).items() if isinstance(v, nnx.Param)}

  def __call__(self, x_BxLxD: jax.Array, dropout_key: jax.Array | None) -> jax.Array:
    weights = self.layer_weights()
    depth = weights["wq"].shape[0]
    keys = jax.random.split(dropout_key, depth) if dropout_key is not None else None

    dtype = self.compute_dtype

    def body(x, layer):
      w, key = layer
      k_attn, k_mlp = jax.random.split(key) if key is not None else (None, None)
      h = layer_norm(x, w["ln1_scale"], w["ln1_bias"])
      x = x + dropout(attention(h, w, self.heads, dtype, self.attention), self.dropout, k_attn)
      h = layer_norm(x, w["ln2_scale"], w["ln2_bias"])
      x = x + dropout(mlp(h, w, dtype), self.dropout, k_mlp)
      return x, None

    if self.remat:  # Keep only each block's input for the backward pass.
      body = jax.checkpoint(body)
    x_BxLxD, _ = jax.lax.scan(body, x_BxLxD, (weights, keys), unroll=self.unroll)
    return x_BxLxD


class Transformer(nnx.Module):
  """Decoder-only Transformer; ``__call__`` returns next-pixel logits."""

  def __init__(self, cfg: ModelConfig, key: jax.Array):
    self.cfg = cfg
    ks = jax.random.split(key, 5)
    d, v = cfg.d, cfg.vocab_size
    self.token_embed = _param(ks[0], (v, d), ("vocab", "embed"), 0.02)
    self.pos_embed = _param(ks[1], (cfg.seq_len, d), (None, "embed"), 0.02)
    self.start_embed = _param(ks[2], (cfg.num_starts, d), (None, "embed"), 0.02)
    self.blocks = Blocks(cfg, ks[3])
    self.final_ln_scale = _param(ks[4], (d,), ("embed",), None)
    self.final_ln_bias = _param(ks[4], (d,), ("embed",), 0.0)
    self.unembed = _param(ks[4], (d, v), ("embed", "vocab"), 0.02)
    self.unembed_bias = _param(ks[4], (v,), ("vocab",), 0.0)

  def embed(self, tokens_BxL: jax.Array, task_BxC: jax.Array | None) -> jax.Array:
    """Start embedding followed by the embeddings of all but the last pixel."""
    batch = tokens_BxL.shape[0]
    start_SxD = self.start_embed[...]
    if self.cfg.num_classes:
      if task_BxC is None:
        raise ValueError("a conditional model needs a task descriptor (B, num_classes)")
      start_BxD = task_BxC @ start_SxD
    else:
      start_BxD = jnp.broadcast_to(start_SxD, (batch, start_SxD.shape[1]))
    prev_BxLxD = jnp.take(self.token_embed[...], tokens_BxL[:, :-1], axis=0)
    x_BxLxD = jnp.concatenate([start_BxD[:, None, :], prev_BxLxD], axis=1)
    return x_BxLxD + self.pos_embed[...][None, : tokens_BxL.shape[1]]

  def __call__(
    self,
    tokens_BxL: jax.Array,
    task_BxC: jax.Array | None = None,
    dropout_key: jax.Array | None = None,
  ) -> jax.Array:
    k_embed, k_blocks = jax.random.split(dropout_key) if dropout_key is not None else (None, None)
    x_BxLxD = dropout(self.embed(tokens_BxL, task_BxC), self.cfg.dropout, k_embed)
    x_BxLxD = self.blocks(x_BxLxD, k_blocks)
    x_BxLxD = layer_norm(x_BxLxD, self.final_ln_scale[...], self.final_ln_bias[...])
    logits_BxLxV = einsum("bld,dv->blv", x_BxLxD, self.unembed[...], self.cfg.compute_dtype)
    return logits_BxLxV + lead(self.unembed_bias[...], logits_BxLxV)


def lead(v_D: jax.Array, x: jax.Array) -> jax.Array:
  """``v_D`` with leading unit axes to match ``x``'s rank (explicit broadcasting)."""
  return v_D.reshape((1,) * (x.ndim - v_D.ndim) + v_D.shape)


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + LN_EPS) * lead(scale, x) + lead(bias, x)


def einsum(spec: str, a: jax.Array, b: jax.Array, dtype: str = "float32") -> jax.Array:
  """``jnp.einsum`` of two operands cast to ``dtype``, accumulated and returned in float32."""
  return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def attention(
  x_BxLxD: jax.Array,
  w: dict[str, jax.Array],
  heads: int,
  dtype: str = "float32",
  implementation: str = "einsum",
) -> jax.Array:
  """Causal multi-head self-attention of one layer's weights ``w``.

  ``einsum``: heads-major einsums, on CPU 1.1-1.3x faster (forward + backward) than
  ``jax.nn.dot_product_attention``'s XLA kernel on (B, L, H, K) tensors (benchmarks/README.md).
  ``xla`` / ``cudnn``: that function with the named kernel; cuDNN's is flash attention
  (no L x L probabilities kept) for NVIDIA GPUs and bfloat16 ``dtype``.
  Products take ``dtype`` inputs; the softmax is float32.
  """
  d, a = w["wq"].shape
  head_dim = a // heads
  wo_HxKxD = w["wo"].reshape(heads, head_dim, d)
  layout = "bhlk" if implementation == "einsum" else "blhk"  # The latter is the function's.
  q, k, v = (
    einsum(f"bld,dhk->{layout}", x_BxLxD, w[n].reshape(d, heads, head_dim), dtype).astype(dtype)
    for n in ("wq", "wk", "wv")
  )
  if implementation != "einsum":
    o_BxLxHxK = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)
    return einsum("blhk,hkd->bld", o_BxLxHxK, wo_HxKxD, dtype)
  scores_BxHxLxL = einsum("bhqk,bhsk->bhqs", q, k, dtype) * (head_dim**-0.5)
  length = x_BxLxD.shape[1]
  causal_LxL = jnp.tril(jnp.ones((length, length), bool))
  scores_BxHxLxL = jnp.where(
    causal_LxL[None, None], scores_BxHxLxL, jnp.finfo(scores_BxHxLxL.dtype).min
  )
  probs_BxHxLxL = jax.nn.softmax(scores_BxHxLxL, axis=-1)
  o_BxHxLxK = einsum("bhqs,bhsk->bhqk", probs_BxHxLxL, v, dtype)
  return einsum("bhlk,hkd->bld", o_BxHxLxK, wo_HxKxD, dtype)


def mlp(x_BxLxD: jax.Array, w: dict[str, jax.Array], dtype: str = "float32") -> jax.Array:
  """GELU MLP on the tokens flattened to (B*L, D).

  Flat, each weight gradient is one dot contracting the token axis; on (B, L, D) XLA
  contracts two axes and transposes the gradient first, 1.5x slower on CPU
  (benchmarks/README.md).
  """
  x_NxD = x_BxLxD.reshape(-1, x_BxLxD.shape[-1])
  h_NxF = jax.nn.gelu(einsum("nd,df->nf", x_NxD, w["w1"], dtype) + lead(w["b1"], x_NxD))
  return (einsum("nf,fd->nd", h_NxF, w["w2"], dtype) + lead(w["b2"], x_NxD)).reshape(x_BxLxD.shape)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
  """Inverted dropout; identity when ``key`` is None (evaluation) or rate is 0."""
  if key is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0)


def token_nll(logits_BxLxV: jax.Array, tokens_BxL: jax.Array) -> jax.Array:
  """Per-pixel negative log-likelihood in nats, shape (B, L)."""
  logp = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp, tokens_BxL[..., None], axis=-1)[..., 0]


def init_params(cfg: ModelConfig, key: jax.Array) -> dict:
  """Fresh weights as a plain nested dict (the functional form used in training)."""
  return nnx.to_pure_dict(nnx.state(Transformer(cfg, key)))


@functools.lru_cache(maxsize=64)
def logical_axes(cfg: ModelConfig) -> dict:
  """Logical axis names of every weight, same tree as ``init_params``."""
  model = nnx.eval_shape(lambda: Transformer(cfg, jax.random.key(0)))
  state = nnx.state(model)
  return nnx.to_pure_dict(
    jax.tree.map(
      lambda v: v.get_metadata()["axes"], state, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )
  )


@functools.lru_cache(maxsize=64)
def graphdef(cfg: ModelConfig) -> nnx.GraphDef:
  return nnx.graphdef(nnx.eval_shape(lambda: Transformer(cfg, jax.random.key(0))))


def apply(
  cfg: ModelConfig,
  params: dict,
  tokens_BxL: jax.Array,
  task_BxC: jax.Array | None = None,
  dropout_key: jax.Array | None = None,
) -> jax.Array:
  """Runs the model whose weights are the plain dict ``params``; returns logits."""
  return nnx.merge(graphdef(cfg), params)(tokens_BxL, task_BxC, dropout_key)


def num_params(params: dict) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(params)))
