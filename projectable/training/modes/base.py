"""What every training mode provides: parameters, loss, per-task scoring, specialists, cost."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import ml_collections

from projectable.core import costs, model
from projectable.core.model import ModelConfig
from projectable.data.records import TaskData
from projectable.training.typed_config import StepConfig, source_config


def small_axes(cfg: ModelConfig) -> dict:
  """The small model's logical axes, prefixed (``heads`` -> ``small_heads``) so that the
  sharding rules place small weights apart from the source's."""
  return jax.tree.map(
    lambda axes: tuple(None if a is None else f"small_{a}" for a in axes),
    model.logical_axes(cfg),
    is_leaf=lambda x: isinstance(x, tuple),
  )


class Sampler(NamedTuple):
  """The model that draws a task's samples: architecture, weights, descriptor or None."""

  cfg: ModelConfig
  weights: dict
  task_C: jax.Array | None


class Method:
  """Base: a mode's parameters, loss, per-task scoring and per-step cost."""

  name: str
  has_specialists = False  # Whether the mode emits one standalone small model per task.
  # Whether it emits a specialist for any class set, not only for its training tasks.
  emits_any_class_set = False
  small: ModelConfig | None = None

  def __init__(self, step: StepConfig, data: TaskData, src: ModelConfig):
    self.step = step
    self.data = data
    self.src = src

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, data: TaskData) -> Method:
    """The mode on ``data``, ``config`` read once into typed settings."""
    return cls(StepConfig.from_config(config), data, source_config(config, data))

  def settings_key(self) -> tuple:
    """What this method's traced functions depend on: its class, its typed settings (and any
    attribute set on it, e.g. a replaced ``loss``) and the digest of its data. Methods with
    equal keys trace to the same programs."""
    public = sorted((k, v) for k, v in vars(self).items() if k != "data" and k[0] != "_")
    return type(self), tuple(public), self.data.fingerprint()["sha256"]

  @property
  def trained(self) -> ModelConfig:
    """The model whose training the step pays for (the small one where there is one)."""
    return self.src if self.small is None else self.small

  def init(self, key: jax.Array) -> dict:
    raise NotImplementedError

  def logical_axes(self) -> dict:
    raise NotImplementedError

  def trainable(self) -> dict:
    """Same tree as the params; False marks weights the optimizer must not touch."""
    return jax.tree.map(lambda _: True, self.logical_axes(), is_leaf=lambda x: isinstance(x, tuple))

  def lr_scales(self) -> dict | None:
    """Same tree as the params: each weight's learning-rate multiplier (None: all 1)."""
    return None

  def loss(self, params: dict, batch: dict, key: jax.Array) -> tuple[jax.Array, dict]:
    raise NotImplementedError

  def task_nll(
    self, params: dict, tokens_NxL: jax.Array, task_id: jax.Array, task_C: jax.Array
  ) -> dict[str, jax.Array]:
    """Mean per-pixel NLL of each image of one task: {'main': (N,), ...}."""
    raise NotImplementedError

  def specialist(self, params: dict, task_id: jax.Array, task_C: jax.Array) -> dict:
    """Standalone small-model weights for one task (modes with ``has_specialists``)."""
    raise ValueError(
      f"mode {self.name!r} has no specialists; train mode 'projectable' or 'specialists'"
    )

  def sampler(self, params: dict, task_id: jax.Array, task_C: jax.Array) -> Sampler:
    """The model that samples a task: its specialist, where the mode has them (one jitted
    call, compiled once for all tasks; run eagerly, a projection is ~100 small compiles)."""
    return Sampler(self.small, self._specialist_jit(params, task_id, task_C), None)

  @functools.cached_property
  def _specialist_jit(self):
    return jax.jit(self.specialist)

  def num_params(self, params: dict) -> dict[str, int | None]:
    raise NotImplementedError

  def step_flops(self) -> float:
    """Training FLOPs of one step (``core.costs``): the trained model on the batch, and a
    distilling small model's teacher."""
    trained = self.sequences * costs.train_flops_per_sequence(self.trained)
    return trained + self._distill_flops(teacher_forward=True)

  def activation_bytes(self, data_shards: int) -> float:
    """Bytes of activations one device keeps for a step's backward pass."""
    return self.sequences / data_shards * costs.activation_bytes_per_sequence(self.trained)

  @property
  def sequences(self) -> int:
    """Sequences of one training batch (m tasks x n images)."""
    return self.step.batch_tasks * self.step.examples_per_task

  @property
  def distills(self) -> bool:
    """Whether a small model also learns the source's predictions (alpha > 0)."""
    return self.step.distill_weight > 0

  def _distill_flops(self, teacher_forward: bool) -> float:
    """The KL's cost, and the teacher's forward pass where it is run for it alone."""
    if not self.distills:
      return 0.0
    flops = self.sequences * self.src.seq_len * self.src.vocab_size * costs.EW_PER_KL
    if teacher_forward:
      flops += self.sequences * costs.teacher_flops_per_sequence(self.src)
    return flops
