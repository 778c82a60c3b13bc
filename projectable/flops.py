"""Analytic training FLOPs of every mode, from the model shapes.

Counts matrix multiplies (2 FLOPs per multiply-add) and attention (scores and
weighted values over the full L x L block, as XLA computes it before masking);
the backward pass costs twice the forward. Elementwise work (softmax, GELU,
LayerNorm, dropout's random bits) uses per-element costs calibrated once against
XLA's cost analysis of the unrolled train step on CPU (``tests/test_flops.py``
checks the total stays within 10% for every mode, distilled variants included).
A distilled step adds the teacher's forward pass alone (no backward, no dropout)
where it is not the source's own training forward, and the per-pixel KL.
"""

from __future__ import annotations

import ml_collections

from projectable.model import ModelConfig
from projectable.modes import Method, ProjectableMethod

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


def train_step_flops(config: ml_collections.ConfigDict, method: Method) -> float:
  """Training FLOPs of one step of ``method`` at ``config``'s batch."""
  train = config.train
  sequences = train.batch_tasks * train.examples_per_task
  if isinstance(method, ProjectableMethod):
    flops = sequences * train_flops_per_sequence(method.small)
    proj = method.proj
    flops += TRAIN_FACTOR * projection_flops(
      method.src, method.small, proj.rank, proj.form, train.batch_tasks
    )
    if method.uses_source_loss:
      n_src = config.source_examples_per_task
      src_sequences = sequences if n_src == -1 else train.batch_tasks * n_src
      flops += src_sequences * train_flops_per_sequence(method.src)
  else:
    cfg = method.src if method.name == "source" else method.small
    flops = sequences * train_flops_per_sequence(cfg)
  if method.runs_teacher_forward:
    flops += sequences * teacher_flops_per_sequence(method.src)
  if method.distill_weight > 0:
    flops += sequences * method.src.seq_len * method.src.vocab_size * EW_PER_KL
  return flops
