"""Analytic costs of a model from its shapes: training FLOPs and activation bytes.

Counts matrix multiplies (2 FLOPs per multiply-add) and attention (scores and
weighted values over the full L x L block, as XLA computes it before masking);
the backward pass costs twice the forward. Elementwise work (softmax, GELU,
LayerNorm, dropout's random bits) uses per-element costs calibrated once against
XLA's cost analysis of the unrolled train step on CPU (``tests/test_flops.py``
checks the total stays within 10% for every mode, distilled variants included).
A distilled step adds the teacher's forward pass alone (no backward, no dropout)
where it is not the source's own training forward, and the per-pixel KL. Each
mode sums these into its step's cost (``training.modes``).
"""

from __future__ import annotations

from projectable.core.model import ModelConfig

TRAIN_FACTOR = 3  # forward + backward (gradients w.r.t. activations and weights)
# Elementwise FLOPs per token and layer, forward + backward, per element of:
EW_PER_SCORE = 15.5  # an attention score (scale, mask, softmax)
EW_PER_MLP_UNIT = 30.7  # an MLP hidden unit (bias, GELU)
EW_PER_RESIDUAL = 236.0  # a residual coordinate (LayerNorms, residual adds, biases)
EW_PER_DROPOUT = 186.0  # a residual coordinate under dropout (random bits, select)
# The same, forward only (a distillation teacher's pass), calibrated alike:
EW_FWD_PER_SCORE = 6.5
EW_FWD_PER_MLP_UNIT = 8.1
EW_FWD_PER_RESIDUAL = 25.0
EW_PER_KL = 12.0  # a pixel's vocabulary entry of the distillation KL, forward + backward


def forward_flops_per_sequence(cfg: ModelConfig) -> int:
  """Forward FLOPs of one sequence of ``cfg.seq_len`` tokens."""
  l, d, a, f = cfg.seq_len, cfg.d, cfg.heads * cfg.head_dim, cfg.mlp_dim
  per_token_layer = 2 * (3 * d * a + a * d + 2 * d * f) + 2 * 2 * l * a
  return l * (cfg.depth * per_token_layer + 2 * d * cfg.vocab_size)


def train_flops_per_sequence(cfg: ModelConfig) -> float:
  """Forward + backward FLOPs of one sequence, elementwise work included."""
  residual = EW_PER_RESIDUAL + (EW_PER_DROPOUT if cfg.dropout > 0 else 0.0)
  elementwise = cfg.depth * (
    EW_PER_SCORE * cfg.seq_len * cfg.heads + EW_PER_MLP_UNIT * cfg.mlp_dim + residual * cfg.d
  )
  return TRAIN_FACTOR * forward_flops_per_sequence(cfg) + cfg.seq_len * elementwise


def teacher_flops_per_sequence(cfg: ModelConfig) -> float:
  """Forward FLOPs of one sequence in evaluation mode, elementwise work included."""
  elementwise = cfg.depth * (
    EW_FWD_PER_SCORE * cfg.seq_len * cfg.heads
    + EW_FWD_PER_MLP_UNIT * cfg.mlp_dim
    + EW_FWD_PER_RESIDUAL * cfg.d
  )
  return forward_flops_per_sequence(cfg) + cfg.seq_len * elementwise


def _core(i: int, o: int, s: int, t: int) -> int:
  """L^T W R with W (i x o), L (i x s), R (o x t), in the cheaper order (as ``project``)."""
  return 2 * min(s * i * o + s * o * t, i * o * t + s * i * t)


def projection_flops(
  src: ModelConfig, small: ModelConfig, rank: int, form: str, tasks: int = 1
) -> int:
  """Forward FLOPs of ``project_tasks`` for ``tasks`` tasks at once.

  Factored maps (and rank 0) project a shared core once and pay per task only
  for rank-k corrections; full bases build and project every task's maps.
  """
  d, ds = src.d, small.d
  a, a_s = src.heads * src.head_dim, small.heads * small.head_dim
  f, fs = src.mlp_dim, small.mlp_dim
  # (in, out) of the maps, and (left map, right map) of every layer weight.
  res, attn, mlp = (d, ds), (a, a_s), (f, fs)
  weights = [(res, attn)] * 3 + [(attn, res), (res, mlp), (mlp, res)]
  # Vectors mapped by R (embeddings, LayerNorms, b2, unembed) and by M (b1).
  res_rows = src.seq_len + 2 * src.vocab_size + 2 + 5 * src.depth
  mlp_rows = src.depth
  if form == "full" and rank:
    build = 2 * rank * (d * ds + src.depth * (2 * a * a_s + f * fs))
    return tasks * (build + projection_flops(src, small, 0, form))
  k = rank
  shared = src.depth * sum(_core(li, ro, lo + k, rt + k) for (li, lo), (ro, rt) in weights)
  shared += 2 * (res_rows * d * (ds + k) + mlp_rows * f * (fs + k))
  per_task = 0
  if k:
    per_task = src.depth * sum(2 * k * rt * (2 * lo + k) for (_, lo), (_, rt) in weights)
    per_task += 2 * k * (res_rows * ds + mlp_rows * fs)
  return shared + tasks * per_task


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
