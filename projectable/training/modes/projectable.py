"""``projectable``: the source and the projectors, ``{"source": ..., "projector": ...}``.

Loss: the mean over the batch's tasks of the projected small models' NLL, plus
``lambda_source`` times the source's own NLL on the same images (its first
``source_examples_per_task`` of each task) unless λ = 0 or the source is frozen.
Distillation (alpha > 0) takes the jointly trained source as teacher, under
``stop_gradient``: its logits from the source's own loss where that saw the same
images, else from a separate forward pass.
"""

from __future__ import annotations

import jax
import ml_collections

from projectable.core import costs, model, projector
from projectable.core.losses import (
  conditional_logits,
  conditional_nll,
  distill_loss,
  per_task_logits,
)
from projectable.core.model import ModelConfig
from projectable.core.projector import ProjectorConfig
from projectable.data.records import TaskData
from projectable.training import sharding
from projectable.training.modes.base import Method, small_axes
from projectable.training.typed_config import (
  StepConfig,
  projector_config,
  small_config,
  source_config,
)


class ProjectableMethod(Method):
  name = "projectable"
  has_specialists = True
  emits_any_class_set = True  # A class set's descriptor projects like a task's.

  def __init__(
    self,
    step: StepConfig,
    data: TaskData,
    src: ModelConfig,
    small: ModelConfig,
    proj: ProjectorConfig,
  ):
    super().__init__(step, data, src)
    self.small = small
    self.proj = proj

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, data: TaskData) -> ProjectableMethod:
    step, src = StepConfig.from_config(config), source_config(config, data)
    small = small_config(config, data, conditional=False)
    return cls(step, data, src, small, projector_config(config))

  def init(self, key):
    k_src, k_proj = jax.random.split(key)
    return {
      "source": model.init_params(self.src, k_src),
      "projector": projector.init_projector(self.src, self.small, self.proj, k_proj),
    }

  def logical_axes(self):
    return {
      "source": model.logical_axes(self.src),
      "projector": projector.logical_axes(self.src, self.small, self.proj),
    }

  def trainable(self):
    trainable = super().trainable()
    if self.step.freeze_source:
      trainable["source"] = jax.tree.map(lambda _: False, trainable["source"])
    return trainable

  def lr_scales(self):
    scale = self.step.optimizer.projector_lr_scale
    if scale == 1:
      return None  # One optimizer group: the optimizer state of earlier runs still restores.
    axes = self.logical_axes()
    is_axes = lambda x: isinstance(x, tuple)
    return {
      "source": jax.tree.map(lambda _: 1.0, axes["source"], is_leaf=is_axes),
      "projector": jax.tree.map(lambda _: scale, axes["projector"], is_leaf=is_axes),
    }

  def specialist(self, params, task_id, task_C):
    return self._project(projector.project, params, task_C)

  def _project(self, project, params: dict, tasks: jax.Array) -> dict:
    """``project`` (``projector.project`` or ``project_tasks``) of ``params`` for ``tasks``,
    LayerNorm scales about one and matrices at their selection's RMS where the projector
    config says so."""
    source = params["source"]
    if not self.proj.scales_about_one:
      small = project(source, params["projector"], tasks)
    else:
      shifted = projector.shift_scales(source, -1.0)
      small = projector.shift_scales(project(shifted, params["projector"], tasks), 1.0)
    if self.proj.match_rms:
      small = projector.match_selection_rms(small, source, self.src, self.small)
    return small

  @property
  def trains_source_loss(self) -> bool:
    """Whether the source's own NLL is in the loss (not with λ = 0 or a frozen source)."""
    return self.step.lambda_source > 0 and not self.step.freeze_source

  @property
  def reuses_source_forward(self) -> bool:
    """Whether distillation takes the teacher's logits from the source's own loss (same
    images, dropout on) instead of a separate forward pass."""
    return self.trains_source_loss and self.step.source_examples_per_task == -1

  def loss(self, params, batch, key):
    k_small, k_src = jax.random.split(key)
    tokens, task = batch["tokens"], batch["task"]
    small_M = self._project(projector.project_tasks, params, task)
    logits = per_task_logits(self.small, self._place_small(small_M), tokens, k_small)
    projected = model.token_nll(logits, tokens).mean()
    metrics, loss = {"nll": projected}, projected
    if self.trains_source_loss:
      src_tokens = self.source_tokens(tokens)
      src_logits = conditional_logits(self.src, params["source"], src_tokens, task, k_src)
      metrics["source_nll"] = model.token_nll(src_logits, src_tokens).mean()
    if self.distills:
      if self.reuses_source_forward:
        teacher_logits = src_logits
      else:
        teacher = jax.lax.stop_gradient(params["source"])
        teacher_logits = conditional_logits(self.src, teacher, tokens, task, None)
      loss, metrics["distill_kl"] = distill_loss(
        self.step.distill_weight, projected, teacher_logits, logits
      )
    if self.trains_source_loss:
      loss = loss + self.step.lambda_source * metrics["source_nll"]
    return loss, metrics

  def _place_small(self, small_M: dict) -> dict:
    """Projected weights (task-stacked) sharded as ``config.sharding.rules`` say for
    ``small_*`` axes (default: replicated, see README "Clusters")."""
    specs = jax.tree.map(
      lambda axes: sharding.spec_for((None, *axes), self.step.rules),
      small_axes(self.small),
      is_leaf=lambda x: isinstance(x, tuple),
    )
    return jax.tree.map(jax.lax.with_sharding_constraint, small_M, specs)

  def source_tokens(self, tokens_MxNxL: jax.Array) -> jax.Array:
    """The images of each task that the source's own loss sees."""
    n = self.step.source_examples_per_task
    return tokens_MxNxL if n == -1 else tokens_MxNxL[:, :n]

  def task_nll(self, params, tokens_NxL, task_id, task_C):
    small = self.specialist(params, task_id, task_C)
    projected = model.token_nll(model.apply(self.small, small, tokens_NxL), tokens_NxL)
    scores = {"main": projected.mean(-1)}
    # The source is scored only where it learns its own objective: frozen or trained only
    # through the projections (λ = 0) its NLL is not a result, and costs more than the rest.
    if self.trains_source_loss:
      source = conditional_nll(self.src, params["source"], tokens_NxL[None], task_C[None], None)
      scores["source"] = source[0].mean(-1)
    return scores

  def num_params(self, params):
    small = jax.eval_shape(lambda: model.init_params(self.small, jax.random.key(0)))
    return {
      "source": model.num_params(params["source"]),
      "small": model.num_params(small),
      "projector": model.num_params(params["projector"]),
    }

  @property
  def source_sequences(self) -> int:
    """Sequences of a batch that the source's own loss sees (0 where it has none)."""
    if not self.trains_source_loss:
      return 0
    n = self.step.source_examples_per_task
    return self.sequences if n == -1 else self.step.batch_tasks * n

  def step_flops(self):
    tasks = self.step.batch_tasks
    flops = self.sequences * costs.train_flops_per_sequence(self.small)
    flops += costs.TRAIN_FACTOR * costs.projection_flops(
      self.src, self.small, self.proj.rank, self.proj.form, tasks
    )
    flops += self.source_sequences * costs.train_flops_per_sequence(self.src)
    return flops + self._distill_flops(teacher_forward=not self.reuses_source_forward)

  def activation_bytes(self, data_shards):
    small = self.sequences * costs.activation_bytes_per_sequence(self.small)
    source = self.source_sequences * costs.activation_bytes_per_sequence(self.src)
    # Each task's projected weights are materialised (and kept for the backward pass).
    params = jax.eval_shape(self.init, jax.random.key(0))
    weights = jax.eval_shape(self.specialist, params, 0, self.data.task_descriptors()[0])
    per_task = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(weights))
    return (small + source) / data_shards + self.step.batch_tasks * per_task
