"""The typed boundary: a run's ConfigDict turned once into the frozen dataclasses that the
modes, the optimizer and the jitted step receive (``validation.validate`` checks it first)."""

from __future__ import annotations

import dataclasses

import ml_collections

from projectable.core.model import ModelConfig
from projectable.core.projector import ProjectorConfig
from projectable.data.records import TaskData
from projectable.training.sharding import rules_from_config


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """AdamW with warmup and cosine decay (``config.train``)."""

  learning_rate: float  # Peak learning rate.
  warmup_steps: int  # Linear warmup steps.
  num_steps: int  # Steps of the cosine schedule.
  weight_decay: float  # Decoupled weight decay on matrices.
  grad_clip: float  # Global gradient-norm clip.
  projector_lr_scale: float  # Projectable: the projectors' rate, times learning_rate.


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What a mode's loss, its cost and the train and eval steps read, fixed for a run."""

  mode: str
  seed: int  # Seeds dropout (folded with the step).
  batch_tasks: int  # Tasks per batch (m).
  examples_per_task: int  # Images per task (n).
  lambda_source: float  # Projectable: weight of the source's own NLL.
  source_examples_per_task: int  # Projectable: images per task of that NLL (-1: all n).
  freeze_source: bool  # Projectable: the source gets no updates.
  distill_weight: float  # alpha of the distillation from the source (0: off).
  nonfinite: str  # 'stop' or 'skip' a step whose loss or gradient is not finite.
  eval_chunk: int  # Test images per task per evaluation call.
  sharding_rules: tuple[tuple[str, str | None], ...]  # Logical -> mesh axis.
  optimizer: OptimizerConfig

  @property
  def rules(self) -> dict[str, str | None]:
    return dict(self.sharding_rules)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> StepConfig:
    train = config.train
    return cls(
      mode=config.mode,
      seed=config.seed,
      batch_tasks=train.batch_tasks,
      examples_per_task=train.examples_per_task,
      lambda_source=float(config.lambda_source),
      source_examples_per_task=config.source_examples_per_task,
      freeze_source=train.freeze_source,
      distill_weight=float(config.distill.weight),
      nonfinite=train.nonfinite,
      eval_chunk=train.eval_chunk,
      sharding_rules=tuple(rules_from_config(config.sharding.rules).items()),
      optimizer=OptimizerConfig(
        learning_rate=train.learning_rate,
        warmup_steps=train.warmup_steps,
        num_steps=train.num_steps,
        weight_decay=train.weight_decay,
        grad_clip=train.grad_clip,
        projector_lr_scale=projector_lr_scale(config),
      ),
    )


# The projectors' rate multiple at λ = 0 where the config leaves it (None): Adam moves every
# entry of a map by about the rate, and a small weight sums many entries of its maps, so at 1
# λ = 0 stalls at the rates the small models train well at (docs/method.md).
LAMBDA0_PROJECTOR_LR_SCALE = 0.3


def projector_lr_scale(config: ml_collections.ConfigDict) -> float:
  """``train.projector_lr_scale``, or where None its default: 0.3 at λ = 0, else 1 (with the
  source's own loss 0.3 trained the digits demo slower)."""
  scale = config.train.projector_lr_scale
  if scale is not None:
    return float(scale)
  return LAMBDA0_PROJECTOR_LR_SCALE if config.lambda_source == 0 else 1.0


def source_config(config: ml_collections.ConfigDict, data: TaskData) -> ModelConfig:
  """The source's architecture on ``data``: conditioned on every class."""
  return _model_config(config.model, config.train, data, data.num_classes)


def small_config(
  config: ml_collections.ConfigDict, data: TaskData, conditional: bool
) -> ModelConfig:
  """The small model's architecture on ``data``: conditional (universal) or not."""
  return _model_config(config.small, config.train, data, data.num_classes if conditional else 0)


def projector_config(config: ml_collections.ConfigDict) -> ProjectorConfig:
  p = config.projector
  return ProjectorConfig(p.rank, p.form, p.code_std, p.scales_about_one, p.match_rms)


def _model_config(
  arch: ml_collections.ConfigDict, train: ml_collections.ConfigDict, data: TaskData, classes: int
) -> ModelConfig:
  """One architecture section (model or small) with the run's data and train options."""
  return ModelConfig(
    vocab_size=data.levels,
    seq_len=data.seq_len,
    num_classes=classes,
    d=arch.d,
    heads=arch.heads,
    mlp_dim=arch.mlp_dim,
    depth=arch.depth,
    dropout=arch.dropout,
    unroll=train.unroll_layers,
    compute_dtype=train.compute_dtype,
    remat=train.remat,
    attention=train.attention,
  )
