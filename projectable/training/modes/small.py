"""Small models trained from scratch: ``universal`` (one conditional model) and
``specialists`` (one unconditional model per task, stacked on a task axis and vmapped).

Distillation (``config.distill.weight`` = alpha > 0) replaces a small model's NLL by
(1 - alpha) * NLL + alpha * KL(teacher || small), per pixel, averaged like the NLL; the
teacher is a trained source loaded into ``params["teacher"]`` (frozen, carried in the
params so that checkpoints are self-contained).
"""

from __future__ import annotations

import jax
import ml_collections

from projectable.core import model
from projectable.core.losses import (
  conditional_logits,
  conditional_nll,
  distill_loss,
  per_task_logits,
  per_task_nll,
)
from projectable.core.model import ModelConfig
from projectable.data.records import TaskData
from projectable.training.modes.base import Method, Sampler, small_axes
from projectable.training.typed_config import StepConfig, small_config, source_config


class SmallMethod(Method):
  """Base of the modes that train small models from scratch (universal, specialists).

  Distilled (``config.distill.weight`` > 0), the params also hold the frozen teacher
  source, ``{"small": ..., "teacher": ...}``: fresh here, replaced by the source of
  ``config.distill.teacher_workdir`` before training (``warmstart.initial_state``).
  """

  small: ModelConfig
  conditional: bool  # Whether the small model takes the task descriptor.

  def __init__(self, step: StepConfig, data: TaskData, src: ModelConfig, small: ModelConfig):
    super().__init__(step, data, src)
    self.small = small

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, data: TaskData) -> SmallMethod:
    step, src = StepConfig.from_config(config), source_config(config, data)
    return cls(step, data, src, small_config(config, data, cls.conditional))

  def init_small(self, key: jax.Array) -> dict:
    raise NotImplementedError

  def small_logical_axes(self) -> dict:
    raise NotImplementedError

  def small_logits(self, small: dict, batch: dict, key: jax.Array) -> jax.Array:
    """Next-pixel logits (M, N, L, V) of the small model(s) on the batch."""
    raise NotImplementedError

  def init(self, key):
    params = {"small": self.init_small(key)}
    if self.distills:
      params["teacher"] = model.init_params(self.src, jax.random.fold_in(key, 1))
    return params

  def logical_axes(self):
    axes = {"small": self.small_logical_axes()}
    if self.distills:
      axes["teacher"] = model.logical_axes(self.src)
    return axes

  def trainable(self):
    trainable = super().trainable()
    if self.distills:
      trainable["teacher"] = jax.tree.map(lambda _: False, trainable["teacher"])
    return trainable

  def loss(self, params, batch, key):
    logits = self.small_logits(params["small"], batch, key)
    nll = model.token_nll(logits, batch["tokens"]).mean()
    if not self.distills:
      return nll, {"nll": nll}
    teacher = jax.lax.stop_gradient(params["teacher"])
    teacher_logits = conditional_logits(self.src, teacher, batch["tokens"], batch["task"], None)
    loss, kl = distill_loss(self.step.distill_weight, nll, teacher_logits, logits)
    return loss, {"nll": nll, "distill_kl": kl}


class UniversalMethod(SmallMethod):
  name = "universal"
  conditional = True

  def init_small(self, key):
    return model.init_params(self.small, key)

  def small_logical_axes(self):
    return small_axes(self.small)

  def small_logits(self, small, batch, key):
    return conditional_logits(self.small, small, batch["tokens"], batch["task"], key)

  def task_nll(self, params, tokens_NxL, task_id, task_C):
    nll = conditional_nll(self.small, params["small"], tokens_NxL[None], task_C[None], None)
    return {"main": nll[0].mean(-1)}

  def sampler(self, params, task_id, task_C):
    return Sampler(self.small, params["small"], task_C)

  def num_params(self, params):
    return {"source": None, "small": model.num_params(params["small"])}


class SpecialistsMethod(SmallMethod):
  name = "specialists"
  has_specialists = True
  conditional = False

  def init_small(self, key):
    keys = jax.random.split(key, self.data.num_tasks)
    return jax.vmap(lambda k: model.init_params(self.small, k))(keys)

  def small_logical_axes(self):
    return jax.tree.map(
      lambda a: (None, *a), small_axes(self.small), is_leaf=lambda x: isinstance(x, tuple)
    )

  def small_logits(self, small, batch, key):
    small_M = jax.tree.map(lambda p: p[batch["task_id"]], small)
    return per_task_logits(self.small, small_M, batch["tokens"], key)

  def specialist(self, params, task_id, task_C):
    return jax.tree.map(lambda p: p[task_id], params["small"])

  def task_nll(self, params, tokens_NxL, task_id, task_C):
    small = self.specialist(params, task_id, task_C)
    return {
      "main": per_task_nll(
        self.small, jax.tree.map(lambda p: p[None], small), tokens_NxL[None], None
      )[0].mean(-1)
    }

  def num_params(self, params):
    per_task = model.num_params(params["small"]) // self.data.num_tasks
    return {"source": None, "small": per_task}
