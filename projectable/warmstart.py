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
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from projectable import checkpointing, projector, sharding
from projectable.data import TaskData
from projectable.modes import Method, make_method
from projectable.trainer import Trainer

_ARCH_FIELDS = ("d", "heads", "mlp_dim", "depth")


def load_source(config: ml_collections.ConfigDict, data: TaskData) -> dict:
  """The best source weights of ``config.init.source_workdir``, checked against ``config``."""
  workdir = config.init.source_workdir
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"config.init.source_workdir={workdir!r} has no config.json: train a source there "
      "first (--config.mode=source) or fix the path"
    )
  with open(path) as f:
    src_config = ml_collections.ConfigDict(json.load(f))
  if src_config.mode not in ("source", "projectable"):
    raise ValueError(
      f"config.init.source_workdir={workdir!r} holds a {src_config.mode!r} run; "
      "it needs a 'source' or 'projectable' run"
    )
  for field in _ARCH_FIELDS:
    if src_config.model[field] != config.model[field]:
      raise ValueError(
        f"config.model.{field}={config.model[field]} but the source in {workdir!r} has "
        f"{src_config.model[field]}; use the same source architecture"
      )
  if src_config.data.to_dict() != config.data.to_dict():
    raise ValueError(f"config.data differs from the data of the source in {workdir!r}")
  method = make_method(src_config, data)
  mesh = sharding.make_mesh(config.mesh)
  trainer = Trainer(src_config, method, mesh)
  ckpts = checkpointing.Checkpoints(workdir, src_config.train.keep_checkpoints)
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
