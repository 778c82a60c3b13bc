"""The optimizer, the jitted train step and the jitted per-task evaluation.

Built once per run: every function is a single ``jax.jit`` with explicit input
and output shardings over the run's mesh; the train step donates its state.
The train state is a plain dict ``{"step", "params", "opt_state"}``. Under
``config.train.nonfinite='skip'`` the step also reports ``skipped`` (a step
whose loss or gradient norm is not finite changes neither weights nor optimizer).
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from projectable.core.metrics import bits_per_dim
from projectable.data.records import Split, TaskData
from projectable.data.tokens import eval_arrays
from projectable.training import sharding
from projectable.training.modes import Method
from projectable.training.typed_config import OptimizerConfig, StepConfig


def learning_rate_schedule(
  peak: float | jax.Array, warmup_steps: int | jax.Array, num_steps: int | jax.Array
) -> optax.Schedule:
  """Linear warmup then cosine decay to zero, of the optimizer's update count (from 0).

  The arguments may be traced: the train step takes them as inputs (``step_inputs``), so
  runs that differ only in learning rate, warmup, length or seed share one compiled step.
  """

  def schedule(count: jax.Array) -> jax.Array:
    # Warmup starts one step in, so that the very first step already learns.
    warm = peak * (count + 1) / (warmup_steps + 1)
    decay_steps = jnp.maximum(num_steps - warmup_steps, 1)
    progress = jnp.clip(count - warmup_steps, 0, decay_steps) / decay_steps
    cosine = 0.5 * peak * (1 + jnp.cos(jnp.pi * progress))
    return jnp.where(count < warmup_steps, warm, cosine)

  return schedule


def step_inputs(step: StepConfig) -> dict[str, np.ndarray]:
  """The train step's runtime inputs: the schedule's numbers and the dropout seed."""
  o = step.optimizer
  return {
    "learning_rate": np.float32(o.learning_rate),
    "warmup_steps": np.int32(o.warmup_steps),
    "num_steps": np.int32(o.num_steps),
    "seed": np.int32(step.seed),
  }


def build_optimizer(
  train: OptimizerConfig,
  trainable: dict,
  lr_scales: dict | None = None,
  schedule: optax.Schedule | None = None,
) -> optax.GradientTransformation:
  """AdamW with linear warmup, cosine decay, global-norm clipping; frozen weights get no update.

  ``lr_scales`` (same tree as the params, or None) multiplies each weight's update, i.e. its
  learning rate and decoupled weight decay alike: per-group learning rates. ``schedule``
  replaces the one ``train`` names (the step passes one of its traced inputs).
  """
  if schedule is None:
    schedule = learning_rate_schedule(train.learning_rate, train.warmup_steps, train.num_steps)
  adamw = optax.chain(
    optax.clip_by_global_norm(train.grad_clip),
    optax.adamw(
      schedule,
      weight_decay=train.weight_decay,
      mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params),
    ),
  )
  labels = jax.tree.map(lambda t: "train" if t else "frozen", trainable)
  optimizer = optax.multi_transform({"train": adamw, "frozen": optax.set_to_zero()}, labels)
  if lr_scales is None:
    return optimizer
  scale = lambda updates, _: jax.tree.map(lambda u, s: u * s, updates, lr_scales)
  return optax.chain(optimizer, optax.stateless(scale))


class Trainer:
  """A mode's state initialisation, train step and evaluation, sharded over ``mesh``."""

  def __init__(self, method: Method, mesh: Mesh):
    self._use(method)
    self.mesh = mesh
    rules = self.step.rules
    # The optimizer for a schedule; its state's tree is the same for every schedule.
    self._optimizer_for = functools.partial(
      build_optimizer, self.step.optimizer, method.trainable(), method.lr_scales()
    )
    self.optimizer = self._optimizer_for()
    self.param_shardings = sharding.tree_shardings(method.logical_axes(), mesh, rules)
    abstract_params = jax.eval_shape(method.init, jax.random.key(0))
    sharding.check_divisible(abstract_params, self.param_shardings)
    abstract_opt = jax.eval_shape(self.optimizer.init, abstract_params)
    replicated = sharding.replicated(mesh)
    opt_shardings = _like_params(abstract_opt, abstract_params, self.param_shardings, replicated)
    self.state_shardings = {
      "step": replicated,
      "params": self.param_shardings,
      "opt_state": opt_shardings,
    }
    # Restores target these: arrays come back sharded over this mesh, whatever mesh saved them.
    self.abstract_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      jax.eval_shape(self._init_state, jax.random.key(0)),
      self.state_shardings,
    )
    data_axis = rules.get("batch")
    self.batch_shardings = {
      "tokens": NamedSharding(mesh, PartitionSpec(None, data_axis, None)),
      "task_id": replicated,
      "task": replicated,
    }
    self.eval_shardings = eval_shardings = {
      "tokens": NamedSharding(mesh, PartitionSpec(None, data_axis, None)),
      "mask": NamedSharding(mesh, PartitionSpec(None, data_axis)),
    }
    self.init_state = jax.jit(self._init_state, out_shardings=self.state_shardings)
    # Call it with step_inputs (or use train_step): the schedule and seed are not baked in.
    self.jitted_train_step = jax.jit(
      self._train_step,
      in_shardings=(self.state_shardings, self.batch_shardings, replicated),
      out_shardings=(self.state_shardings, replicated),
      donate_argnums=0,
    )
    self._eval = jax.jit(
      self._eval_chunk,
      in_shardings=(self.param_shardings, eval_shardings, replicated, replicated),
      out_shardings=replicated,
    )

  def _init_state(self, key: jax.Array) -> dict:
    return self._state_from(self.method.init(key))

  def _state_from(self, params: dict) -> dict:
    return {
      "step": jnp.zeros((), jnp.int32),
      "params": params,
      "opt_state": self.optimizer.init(params),
    }

  def reset_optimizer(self, params: dict) -> dict:
    """A step-0 train state starting from ``params`` (e.g. warm-started weights)."""
    return jax.jit(
      self._state_from, in_shardings=(self.param_shardings,), out_shardings=self.state_shardings
    )(params)

  def with_method(self, method: Method) -> Trainer:
    """This trainer for ``method``, which may differ from its own only in the step inputs:
    the same jitted functions, ``method``'s schedule and seed."""
    trainer = copy.copy(self)
    trainer._use(method)
    return trainer

  def _use(self, method: Method) -> None:
    """Points this trainer at ``method``: its settings, its schedule and its step inputs."""
    self.method, self.step = method, method.step
    opt = method.step.optimizer
    self.schedule = learning_rate_schedule(opt.learning_rate, opt.warmup_steps, opt.num_steps)
    self.step_inputs = step_inputs(method.step)

  def train_step(self, state: dict, batch: dict) -> tuple[dict, dict]:
    """One jitted step with this run's schedule and seed; ``state`` is donated."""
    return self.jitted_train_step(state, batch, self.step_inputs)

  def lower_train_step(self, state: dict, batch: dict) -> jax.stages.Lowered:
    """The train step lowered for ``state`` and ``batch`` (arrays or abstract), to compile."""
    return self.jitted_train_step.lower(state, batch, self.step_inputs)

  def _train_step(self, state: dict, batch: dict, inputs: dict) -> tuple[dict, dict]:
    key = jax.random.fold_in(jax.random.key(inputs["seed"]), state["step"])
    grad_fn = jax.value_and_grad(self.method.loss, has_aux=True)
    (loss, metrics), grads = grad_fn(state["params"], batch, key)
    schedule = learning_rate_schedule(
      inputs["learning_rate"], inputs["warmup_steps"], inputs["num_steps"]
    )
    updates, opt_state = self._optimizer_for(schedule=schedule).update(
      grads, state["opt_state"], state["params"]
    )
    new = {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}
    metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
    if self.step.nonfinite == "skip":
      # A non-finite loss or gradient leaves the weights and the optimizer as they were.
      finite = jnp.isfinite(loss) & jnp.isfinite(metrics["grad_norm"])
      old = {"params": state["params"], "opt_state": state["opt_state"]}
      new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
      metrics["skipped"] = ~finite
    return {"step": state["step"] + 1, **new}, metrics

  def _eval_chunk(
    self, params: dict, chunk: dict, task_ids_T: jax.Array, tasks_TxC: jax.Array
  ) -> dict[str, jax.Array]:
    nll = jax.vmap(self.method.task_nll, in_axes=(None, 0, 0, 0))(
      params, chunk["tokens"], task_ids_T, tasks_TxC
    )
    return {name: (v * chunk["mask"]).sum(1) for name, v in nll.items()}

  def evaluate(self, params: dict, data: TaskData, split: Split) -> dict[str, dict[str, float]]:
    """Bits/dim per task of every scored model ('main'; 'source' where projectable trains it)."""
    # numpy, replicated: valid jit inputs also when the mesh spans several processes.
    task_ids = np.arange(data.num_tasks, dtype=np.int32)
    tasks = np.asarray(data.task_descriptors())
    totals: dict[str, np.ndarray] = {}
    count = np.zeros(data.num_tasks)
    for chunk in eval_arrays(data, split, self.step.eval_chunk):
      # Every process holds the whole chunk; each places the parts its devices own.
      chunk = {
        k: jax.make_array_from_callback(v.shape, self.eval_shardings[k], lambda i, v=v: v[i])
        for k, v in chunk.items()
      }
      sums = self._eval(params, chunk, task_ids, tasks)
      for name, value in sums.items():
        totals[name] = totals.get(name, 0.0) + np.asarray(value, np.float64)
      count += chunk["mask"].sum(1)
    return {name: bits_per_dim(total / count, data.task_names) for name, total in totals.items()}


# Trainers of recent programs, by _program_key and mesh (see trainer_for).
_RECENT: collections.OrderedDict[tuple, Trainer] = collections.OrderedDict()
RECENT_TRAINERS = 4


def trainer_for(method: Method, mesh: Mesh) -> Trainer:
  """``Trainer(method, mesh)``, sharing the traced and compiled functions of one built on
  ``mesh`` for a method that differs at most in the step inputs (learning rate, warmup,
  steps, seed) among the last ``RECENT_TRAINERS`` programs: a process that trains such runs
  one after another (a sweep, a notebook, the tests) traces and compiles each program once."""
  key = (_program_key(method), mesh)
  built = _RECENT.pop(key, None)
  trainer = Trainer(method, mesh) if built is None else built.with_method(method)
  _RECENT[key] = trainer
  while len(_RECENT) > RECENT_TRAINERS:
    _RECENT.popitem(last=False)
  return trainer


def _program_key(method: Method) -> tuple:
  """``method.settings_key()`` without the step inputs, which its programs do not read."""
  cls, public, digest = method.settings_key()
  step = method.step
  optimizer = dataclasses.replace(step.optimizer, learning_rate=0.0, warmup_steps=0, num_steps=0)
  no_inputs = dataclasses.replace(step, seed=0, optimizer=optimizer)
  return cls, tuple((k, no_inputs if v is step else v) for k, v in public), digest


def _like_params(tree, params: dict, param_shardings: dict, default: NamedSharding):
  """Shardings for optimizer state: a leaf whose key path ends with a weight's path and
  has its shape (Adam's moments) is sharded like that weight; anything else is replicated."""
  by_path = {}
  for (path, p), s in zip(
    jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(param_shardings), strict=True
  ):
    by_path[tuple(k.key for k in path)] = (p.shape, s)

  def pick(path, leaf):
    keys = tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))
    for start in range(len(keys)):
      shape, s = by_path.get(keys[start:], (None, None))
      if shape == leaf.shape:
        return s
    return default

  return jax.tree_util.tree_map_with_path(pick, tree)
