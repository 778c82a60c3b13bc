"""Counted training FLOPs against XLA's cost analysis of the compiled step."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from projectable import data as data_lib
from projectable.core import costs, model, projector
from projectable.core.model import ModelConfig
from projectable.data import pipeline
from projectable.training import sharding
from projectable.training.modes import make_method
from projectable.training.trainer import Trainer

# (mode, distill.weight, source_examples_per_task, freeze_source, lambda_source): every
# mode, projectable at λ=0 too (the frontier's setting: no source loss), then the distilled
# ones. Projectable distills from its own source's training forward (-1) or runs a separate
# teacher forward (2 images per task for the source's loss; a frozen source).
VARIANTS = [
  ("projectable", 0.0, -1, False, 1.0),
  ("projectable", 0.0, -1, False, 0.0),
  ("universal", 0.0, -1, False, 1.0),
  ("specialists", 0.0, -1, False, 1.0),
  ("source", 0.0, -1, False, 1.0),
  ("universal", 0.5, -1, False, 1.0),
  ("specialists", 0.5, -1, False, 1.0),
  ("projectable", 0.5, -1, False, 1.0),
  ("projectable", 0.5, 2, False, 1.0),
  ("projectable", 0.5, -1, True, 1.0),
]


@pytest.mark.parametrize("mode,weight,n_src,frozen,lam", VARIANTS)
def test_counted_flops_match_xla_within_10_percent(tiny_config, mode, weight, n_src, frozen, lam):
  tiny_config.mode, tiny_config.lambda_source = mode, lam
  tiny_config.distill.weight = weight
  tiny_config.source_examples_per_task = n_src
  tiny_config.train.freeze_source = frozen
  data = data_lib.load(tiny_config.data)
  mesh = sharding.make_mesh(tiny_config.mesh)
  with jax.set_mesh(mesh):
    method = make_method(tiny_config, data)
    # XLA counts a scanned loop body once: unroll the layers for an exact count.
    method.src = dataclasses.replace(method.src, unroll=True)
    if method.small is not None:
      method.small = dataclasses.replace(method.small, unroll=True)
    trainer = Trainer(method, mesh)
    batcher = pipeline.TaskBatch(
      data, tiny_config.train.batch_tasks, tiny_config.train.examples_per_task, 0
    )
    batch = pipeline.place(batcher(0), trainer.batch_shardings)
    cost = trainer.lower_train_step(trainer.abstract_state, batch).compile().cost_analysis()
  xla = (cost[0] if isinstance(cost, list) else cost)["flops"]
  counted = method.step_flops()
  assert abs(counted / xla - 1) < 0.10, (counted, xla)


def test_projectable_step_costs_more_than_the_small_models_alone(tiny_config):
  data = data_lib.load(tiny_config.data)
  per_mode = {}
  for mode in ("projectable", "universal", "source"):
    tiny_config.mode = mode
    per_mode[mode] = make_method(tiny_config, data).step_flops()
  assert per_mode["projectable"] > per_mode["source"] + per_mode["universal"] * 0.9
  tiny_config.mode, tiny_config.lambda_source = "projectable", 0.0
  without_source = make_method(tiny_config, data).step_flops()
  assert without_source < per_mode["source"]


@pytest.mark.parametrize("rank,form", [(0, "factored"), (4, "factored"), (4, "full")])
def test_projection_flops_match_xla_within_10_percent(rank, form):
  src = ModelConfig(17, 64, 10, d=64, heads=4, mlp_dim=256, depth=3)
  small = ModelConfig(17, 64, 0, d=16, heads=2, mlp_dim=64, depth=3)
  cfg = projector.ProjectorConfig(rank, form)
  source = jax.eval_shape(lambda: model.init_params(src, jax.random.key(0)))
  proj = jax.eval_shape(lambda: projector.init_projector(src, small, cfg, jax.random.key(0)))
  tasks = jax.ShapeDtypeStruct((6, 10), jnp.float32)
  compiled = jax.jit(projector.project_tasks).lower(source, proj, tasks).compile()
  cost = compiled.cost_analysis()
  xla = (cost[0] if isinstance(cost, list) else cost)["flops"]
  counted = costs.projection_flops(src, small, rank, form, tasks=6)
  assert abs(counted / xla - 1) < 0.10, (counted, xla)
