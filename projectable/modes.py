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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from projectable import model, projector
from projectable.data import TaskData
from projectable.model import ModelConfig


def source_config(config: ml_collections.ConfigDict, data: TaskData) -> ModelConfig:
  m = config.model
  return ModelConfig(
    data.levels, data.seq_len, data.num_classes, m.d, m.heads, m.mlp_dim, m.depth, m.dropout
  )


def small_config(
  config: ml_collections.ConfigDict, data: TaskData, conditional: bool
) -> ModelConfig:
  s = config.small
  return ModelConfig(
    data.levels,
    data.seq_len,
    data.num_classes if conditional else 0,
    s.d,
    s.heads,
    s.mlp_dim,
    s.depth,
    s.dropout,
  )


def _replicated_axes(axes_tree):
  return jax.tree.map(lambda a: (None,) * len(a), axes_tree, is_leaf=lambda x: isinstance(x, tuple))


def conditional_nll(
  cfg: ModelConfig,
  params: dict,
  tokens_MxNxL: jax.Array,
  task_MxC: jax.Array,
  key: jax.Array | None,
) -> jax.Array:
  """Per-pixel NLL (M, N, L) of a task-conditional model."""
  m, n, l = tokens_MxNxL.shape
  tokens = tokens_MxNxL.reshape(m * n, l)
  task = jnp.repeat(task_MxC, n, axis=0)
  return model.token_nll(model.apply(cfg, params, tokens, task, key), tokens).reshape(m, n, l)


def per_task_nll(
  cfg: ModelConfig, params_M: dict, tokens_MxNxL: jax.Array, key: jax.Array | None
) -> jax.Array:
  """Per-pixel NLL (M, N, L) of M unconditional models, each on its own images."""
  keys = jax.random.split(key, tokens_MxNxL.shape[0]) if key is not None else None

  def one(params, tokens, k):
    return model.token_nll(model.apply(cfg, params, tokens, None, k), tokens)

  return jax.vmap(one)(params_M, tokens_MxNxL, keys)


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


class UniversalMethod(Method):
  name = "universal"

  def __init__(self, config, data):
    super().__init__(config, data)
    self.small = small_config(config, data, conditional=True)

  def init(self, key):
    return {"small": model.init_params(self.small, key)}

  def logical_axes(self):
    return {"small": _replicated_axes(model.logical_axes(self.small))}

  def loss(self, params, batch, key):
    nll = conditional_nll(self.small, params["small"], batch["tokens"], batch["task"], key).mean()
    return nll, {"nll": nll}

  def task_nll(self, params, tokens_NxL, task_id, task_C):
    nll = conditional_nll(self.small, params["small"], tokens_NxL[None], task_C[None], None)
    return {"main": nll[0].mean(-1)}

  def generator(self, params, task_id, task_C):
    return self.small, params["small"], task_C

  def num_params(self, params):
    return {"source": None, "small": model.num_params(params["small"])}


class SpecialistsMethod(Method):
  name = "specialists"

  def __init__(self, config, data):
    super().__init__(config, data)
    self.small = small_config(config, data, conditional=False)

  def init(self, key):
    keys = jax.random.split(key, self.data.num_tasks)
    return {"small": jax.vmap(lambda k: model.init_params(self.small, k))(keys)}

  def logical_axes(self):
    axes = _replicated_axes(model.logical_axes(self.small))
    return {
      "small": jax.tree.map(lambda a: (None, *a), axes, is_leaf=lambda x: isinstance(x, tuple))
    }

  def loss(self, params, batch, key):
    params_M = jax.tree.map(lambda p: p[batch["task_id"]], params["small"])
    nll = per_task_nll(self.small, params_M, batch["tokens"], key).mean()
    return nll, {"nll": nll}

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
    small_M = jax.vmap(projector.project, in_axes=(None, None, 0))(
      params["source"], params["projector"], batch["task"]
    )
    projected = per_task_nll(self.small, small_M, batch["tokens"], k_small).mean()
    metrics = {"nll": projected}
    loss = projected
    if self.uses_source_loss:
      source = conditional_nll(
        self.src, params["source"], self.source_tokens(batch["tokens"]), batch["task"], k_src
      ).mean()
      loss = loss + self.config.lambda_source * source
      metrics["source_nll"] = source
    return loss, metrics

  @property
  def uses_source_loss(self) -> bool:
    """Whether the source's own NLL is in the loss (not with λ = 0 or a frozen source)."""
    return self.config.lambda_source > 0 and not self.config.train.freeze_source

  def source_tokens(self, tokens_MxNxL: jax.Array) -> jax.Array:
    """The images of each task that the source's own loss sees."""
    n = self.config.source_examples_per_task
    return tokens_MxNxL if n == -1 else tokens_MxNxL[:, :n]

  def task_nll(self, params, tokens_NxL, task_id, task_C):
    small = self.specialist(params, task_id, task_C)
    projected = model.token_nll(model.apply(self.small, small, tokens_NxL), tokens_NxL)
    source = conditional_nll(self.src, params["source"], tokens_NxL[None], task_C[None], None)
    return {"main": projected.mean(-1), "source": source[0].mean(-1)}

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
