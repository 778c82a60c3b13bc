"""The four training modes: what is trained, its loss, and how a task is scored.

Every mode works on a plain-dict parameter tree and a task-grouped batch
``{"tokens": (M, N, L), "task_id": (M,), "task": (M, C)}``:

* ``source``: the large conditional model, ``{"source": ...}``;
* ``universal``: the small conditional model, ``{"small": ...}``;
* ``specialists``: one small unconditional model per task, stacked on a leading
  task axis and vmapped, ``{"small": ...}``;
* ``projectable``: source + projectors, ``{"source": ..., "projector": ...}``;
  loss = mean over the batch's tasks of the projected models' NLL
  + lambda_source * the source's NLL on the same images.

Distillation (``config.distill.weight`` = alpha > 0) replaces a small model's NLL by
(1 - alpha) * NLL + alpha * KL(teacher || small), per pixel, averaged like the NLL. The
teacher is the source's conditional forward on the same images and task: in universal and
specialists mode a trained source loaded into ``params["teacher"]`` (frozen, carried in
the params so that checkpoints are self-contained); in projectable mode the jointly
trained source itself, under ``stop_gradient``.
"""

from __future__ import annotations

import jax
import ml_collections

from projectable import model, projector, sharding
from projectable.data import TaskData
from projectable.losses import (
  conditional_logits,
  conditional_nll,
  distill_loss,
  per_task_logits,
  per_task_nll,
)
from projectable.model import ModelConfig


def source_config(config: ml_collections.ConfigDict, data: TaskData) -> ModelConfig:
  return _model_config(config.model, config.train, data, data.num_classes)


def small_config(
  config: ml_collections.ConfigDict, data: TaskData, conditional: bool
) -> ModelConfig:
  return _model_config(config.small, config.train, data, data.num_classes if conditional else 0)


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


def small_axes(cfg: ModelConfig) -> dict:
  """The small model's logical axes, prefixed (``heads`` -> ``small_heads``) so that the
  sharding rules place small weights apart from the source's."""
  return jax.tree.map(
    lambda axes: tuple(None if a is None else f"small_{a}" for a in axes),
    model.logical_axes(cfg),
    is_leaf=lambda x: isinstance(x, tuple),
  )


class Method:
  """Base: a mode's parameters, loss and per-task scoring."""

  name: str

  def __init__(self, config: ml_collections.ConfigDict, data: TaskData):
    self.config = config
    self.data = data
    self.src = source_config(config, data)

  def init(self, key: jax.Array) -> dict:
    raise NotImplementedError

  def logical_axes(self) -> dict:
    raise NotImplementedError

  def trainable(self) -> dict:
    """Same tree as the params; False marks weights the optimizer must not touch."""
    return jax.tree.map(lambda _: True, self.logical_axes(), is_leaf=lambda x: isinstance(x, tuple))

  def loss(self, params: dict, batch: dict, key: jax.Array) -> tuple[jax.Array, dict]:
    raise NotImplementedError

  def task_nll(
    self, params: dict, tokens_NxL: jax.Array, task_id: jax.Array, task_C: jax.Array
  ) -> dict[str, jax.Array]:
    """Mean per-pixel NLL of each image of one task: {'main': (N,), ...}."""
    raise NotImplementedError

  def specialist(self, params: dict, task_id: jax.Array, task_C: jax.Array) -> dict | None:
    """Standalone small-model weights for one task, where the mode has them."""
    return None

  @property
  def specialist_config(self) -> ModelConfig | None:
    return None

  def generator(
    self, params: dict, task_id: jax.Array, task_C: jax.Array
  ) -> tuple[ModelConfig, dict, jax.Array | None]:
    """(architecture, weights, descriptor or None) of the model that samples a task."""
    return self.specialist_config, self.specialist(params, task_id, task_C), None

  def num_params(self, params: dict) -> dict[str, int | None]:
    raise NotImplementedError

  @property
  def distill_weight(self) -> float:
    """alpha of the distillation from the source (0: off, also for runs saved before
    ``config.distill`` existed)."""
    return self.config.get("distill", {}).get("weight", 0.0)

  @property
  def runs_teacher_forward(self) -> bool:
    """Whether a step runs a forward pass of the source only to distill from it."""
    return False


class SourceMethod(Method):
  name = "source"

  def init(self, key):
    return {"source": model.init_params(self.src, key)}

  def logical_axes(self):
    return {"source": model.logical_axes(self.src)}

  def loss(self, params, batch, key):
    nll = conditional_nll(self.src, params["source"], batch["tokens"], batch["task"], key).mean()
    return nll, {"nll": nll}

  def task_nll(self, params, tokens_NxL, task_id, task_C):
    nll = conditional_nll(self.src, params["source"], tokens_NxL[None], task_C[None], None)
    return {"main": nll[0].mean(-1)}

  def generator(self, params, task_id, task_C):
    return self.src, params["source"], task_C

  def num_params(self, params):
    return {"source": model.num_params(params["source"]), "small": None}


class SmallMethod(Method):
  """Base of the modes that train small models from scratch (universal, specialists).

  With ``config.distill.weight`` > 0 the params also hold the frozen teacher source,
  ``{"small": ..., "teacher": ...}``: fresh here, replaced by the source of
  ``config.distill.teacher_workdir`` before training (``warmstart.initial_state``).
  """

  small: ModelConfig

  def init_small(self, key: jax.Array) -> dict:
    raise NotImplementedError

  def small_logical_axes(self) -> dict:
    raise NotImplementedError

  def small_logits(self, small: dict, batch: dict, key: jax.Array) -> jax.Array:
    """Next-pixel logits (M, N, L, V) of the small model(s) on the batch."""
    raise NotImplementedError

  @property
  def distilled(self) -> bool:
    return self.distill_weight > 0

  @property
  def runs_teacher_forward(self):
    return self.distilled

  def init(self, key):
    params = {"small": self.init_small(key)}
    if self.distilled:
      params["teacher"] = model.init_params(self.src, jax.random.fold_in(key, 1))
    return params

  def logical_axes(self):
    axes = {"small": self.small_logical_axes()}
    if self.distilled:
      axes["teacher"] = model.logical_axes(self.src)
    return axes

  def trainable(self):
    trainable = super().trainable()
    if self.distilled:
      trainable["teacher"] = jax.tree.map(lambda _: False, trainable["teacher"])
    return trainable

  def loss(self, params, batch, key):
    logits = self.small_logits(params["small"], batch, key)
    nll = model.token_nll(logits, batch["tokens"]).mean()
    if not self.distilled:
      return nll, {"nll": nll}
    teacher = jax.lax.stop_gradient(params["teacher"])
    teacher_logits = conditional_logits(self.src, teacher, batch["tokens"], batch["task"], None)
    loss, kl = distill_loss(self.distill_weight, nll, teacher_logits, logits)
    return loss, {"nll": nll, "distill_kl": kl}


class UniversalMethod(SmallMethod):
  name = "universal"

  def __init__(self, config, data):
    super().__init__(config, data)
    self.small = small_config(config, data, conditional=True)

  def init_small(self, key):
    return model.init_params(self.small, key)

  def small_logical_axes(self):
    return small_axes(self.small)

  def small_logits(self, small, batch, key):
    return conditional_logits(self.small, small, batch["tokens"], batch["task"], key)

  def task_nll(self, params, tokens_NxL, task_id, task_C):
    nll = conditional_nll(self.small, params["small"], tokens_NxL[None], task_C[None], None)
    return {"main": nll[0].mean(-1)}

  def generator(self, params, task_id, task_C):
    return self.small, params["small"], task_C

  def num_params(self, params):
    return {"source": None, "small": model.num_params(params["small"])}


class SpecialistsMethod(SmallMethod):
  name = "specialists"

  def __init__(self, config, data):
    super().__init__(config, data)
    self.small = small_config(config, data, conditional=False)

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

  @property
  def specialist_config(self):
    return self.small

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


class ProjectableMethod(Method):
  name = "projectable"

  def __init__(self, config, data):
    super().__init__(config, data)
    self.small = small_config(config, data, conditional=False)
    p = config.projector
    self.proj = projector.ProjectorConfig(p.rank, p.form, p.code_std)

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
    if self.config.train.freeze_source:
      trainable["source"] = jax.tree.map(lambda _: False, trainable["source"])
    return trainable

  def specialist(self, params, task_id, task_C):
    return projector.project(params["source"], params["projector"], task_C)

  @property
  def specialist_config(self):
    return self.small

  def loss(self, params, batch, key):
    k_small, k_src = jax.random.split(key)
    tokens, task = batch["tokens"], batch["task"]
    small_M = projector.project_tasks(params["source"], params["projector"], task)
    small_M = self._place_small(small_M)
    logits = per_task_logits(self.small, small_M, tokens, k_small)
    projected = model.token_nll(logits, tokens).mean()
    metrics = {"nll": projected}
    loss = projected
    if self.uses_source_loss:
      src_tokens = self.source_tokens(tokens)
      source_logits = conditional_logits(self.src, params["source"], src_tokens, task, k_src)
      source = model.token_nll(source_logits, src_tokens).mean()
      metrics["source_nll"] = source
    if self.distill_weight > 0:
      if not self.reuses_source_forward:
        teacher = jax.lax.stop_gradient(params["source"])
        source_logits = conditional_logits(self.src, teacher, tokens, task, None)
      loss, metrics["distill_kl"] = distill_loss(
        self.distill_weight, projected, source_logits, logits
      )
    if self.uses_source_loss:
      loss = loss + self.config.lambda_source * source
    return loss, metrics

  def _place_small(self, small_M: dict) -> dict:
    """Projected weights (task-stacked) sharded as ``config.sharding.rules`` say for
    ``small_*`` axes (default: replicated, see README "Clusters")."""
    rules = sharding.rules_from_config(self.config.sharding.rules)
    specs = jax.tree.map(
      lambda axes: sharding.spec_for((None, *axes), rules),
      small_axes(self.small),
      is_leaf=lambda x: isinstance(x, tuple),
    )
    return jax.tree.map(jax.lax.with_sharding_constraint, small_M, specs)

  @property
  def uses_source_loss(self) -> bool:
    """Whether the source's own NLL is in the loss (not with λ = 0 or a frozen source)."""
    return self.config.lambda_source > 0 and not self.config.train.freeze_source

  @property
  def reuses_source_forward(self) -> bool:
    """Whether distillation takes the teacher's logits from the source's own loss (same
    images, dropout on) instead of a separate forward pass."""
    return self.uses_source_loss and self.config.source_examples_per_task == -1

  @property
  def runs_teacher_forward(self):
    return self.distill_weight > 0 and not self.reuses_source_forward

  def source_tokens(self, tokens_MxNxL: jax.Array) -> jax.Array:
    """The images of each task that the source's own loss sees."""
    n = self.config.source_examples_per_task
    return tokens_MxNxL if n == -1 else tokens_MxNxL[:, :n]

  def task_nll(self, params, tokens_NxL, task_id, task_C):
    small = self.specialist(params, task_id, task_C)
    projected = model.token_nll(model.apply(self.small, small, tokens_NxL), tokens_NxL)
    scores = {"main": projected.mean(-1)}
    # The source is scored only where it learns its own objective: frozen or trained only
    # through the projections (λ = 0) its NLL is not a result, and costs more than the rest.
    if self.uses_source_loss:
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


METHODS = {m.name: m for m in (SourceMethod, UniversalMethod, SpecialistsMethod, ProjectableMethod)}


def make_method(config: ml_collections.ConfigDict, data: TaskData) -> Method:
  return METHODS[config.mode](config, data)
