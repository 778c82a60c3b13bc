"""Starting a run from a trained source in another workdir.

``config.init.source_workdir`` names a finished ``source`` (or ``projectable``)
run. Its best-on-validation source weights then replace the fresh ones:

* ``projectable`` / ``source``: the source starts from them (with
  ``train.freeze_source`` this is the amortised setting: projectors trained on
  a pretrained source);
* ``specialists``: each task's model starts as the weight selection of the
  source for that task (``projector.select_subnetwork``);
* ``universal``: the small conditional model starts as the selection with the
  source's per-class start embeddings.

``config.distill.teacher_workdir`` names such a run too: its best source weights
become the frozen teacher ``params["teacher"]`` of a distilled universal or
specialists run (``initial_state`` loads both).
"""

from __future__ import annotations

import jax
import ml_collections

from projectable.core import projector
from projectable.data import TaskData
from projectable.training import checkpoints, sharding, workdir_guard
from projectable.training.modes import Method, make_method
from projectable.training.trainer import Trainer, trainer_for

_ARCH_FIELDS = ("d", "heads", "mlp_dim", "depth")


def load_source(config: ml_collections.ConfigDict, data: TaskData) -> dict:
  """The best source weights of ``config.init.source_workdir``, checked against ``config``."""
  return _best_source(config, data, "init.source_workdir")


def load_teacher(config: ml_collections.ConfigDict, data: TaskData) -> dict:
  """The best source weights of ``config.distill.teacher_workdir``, checked against ``config``."""
  return _best_source(config, data, "distill.teacher_workdir")


def check_sources(config: ml_collections.ConfigDict) -> None:
  """Raises unless every source run that ``config`` builds on exists and matches it."""
  for field in ("init.source_workdir", "distill.teacher_workdir"):
    if _named_workdir(config, field):
      _source_config(config, field)


def _named_workdir(config: ml_collections.ConfigDict, field: str) -> str:
  """``config.<field>``, a dotted path such as ``init.source_workdir``."""
  section, name = field.split(".")
  return config[section][name]


def _source_config(config: ml_collections.ConfigDict, field: str) -> ml_collections.ConfigDict:
  """The config of the run that ``config.<field>`` names, checked against ``config``."""
  workdir = _named_workdir(config, field)
  saved = workdir_guard.saved_config(workdir)
  if saved is None:
    raise FileNotFoundError(
      f"config.{field}={workdir!r} has no config.json: train a source there "
      "first (--config.mode=source) or fix the path"
    )
  src_config = ml_collections.ConfigDict(saved)
  if src_config.mode not in ("source", "projectable"):
    raise ValueError(
      f"config.{field}={workdir!r} holds a {src_config.mode!r} run; "
      "it needs a 'source' or 'projectable' run"
    )
  for arch in _ARCH_FIELDS:
    if src_config.model[arch] != config.model[arch]:
      raise ValueError(
        f"config.model.{arch}={config.model[arch]} but the source in {workdir!r} has "
        f"{src_config.model[arch]}; use the same source architecture"
      )
  if src_config.data.to_dict() != config.data.to_dict():
    raise ValueError(f"config.data differs from the data of the source in {workdir!r}")
  return src_config


def _best_source(config: ml_collections.ConfigDict, data: TaskData, field: str) -> dict:
  """The best source weights of the run that ``config.<field>`` names."""
  workdir = _named_workdir(config, field)
  src_config = _source_config(config, field)
  method = make_method(src_config, data)
  mesh = sharding.make_mesh(config.mesh)
  trainer = trainer_for(method, mesh)
  ckpts = checkpoints.Checkpoints(workdir, src_config.train.keep_checkpoints)
  try:
    if ckpts.best.latest_step() is None:
      raise FileNotFoundError(f"{workdir!r} has no best checkpoint yet: let its run finish")
    return ckpts.restore_best_params(trainer.abstract_state["params"])["source"]
  finally:
    ckpts.close()


def warm_params(method: Method, params: dict, source: dict) -> dict:
  """``params`` with the parts that start from ``source`` replaced."""
  params = dict(params)
  if "source" in params:
    params["source"] = source
    return params
  descriptors = method.data.task_descriptors()
  small = method.small
  if small.num_classes:  # universal: every class keeps its own (selected) start embedding
    one = projector.select_subnetwork(source, method.src, small, descriptors[0])
    one["start_embed"] = source["start_embed"][
      :, projector.selection_indices(method.src, small)["residual"]
    ]
    params["small"] = one
  else:
    params["small"] = jax.vmap(lambda c: projector.select_subnetwork(source, method.src, small, c))(
      descriptors
    )
  return params


def initial_state(config: ml_collections.ConfigDict, data: TaskData, trainer: Trainer) -> dict:
  """The step-0 train state of a new run: fresh weights, the parts that start from
  ``config.init.source_workdir`` warm-started, and a distilled run's teacher loaded."""
  state = trainer.init_state(jax.random.key(config.seed))
  params = state["params"]
  if config.init.source_workdir:
    params = warm_params(trainer.method, params, load_source(config, data))
  if "teacher" in params:
    params = {**params, "teacher": load_teacher(config, data)}
  return state if params is state["params"] else trainer.reset_optimizer(params)
