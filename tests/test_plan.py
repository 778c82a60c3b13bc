"""plan.py's numbers against the real sharded arrays."""

import dataclasses

import jax

from projectable import data as data_lib
from projectable.core import costs, model
from projectable.experiments import memory
from projectable.training import sharding
from projectable.training.modes import make_method
from projectable.training.trainer import Trainer


def test_planned_bytes_equal_the_real_sharded_arrays(tiny_config):
  tiny_config.mesh = "data:2,model:2"
  data = data_lib.load(tiny_config.data)
  mesh = sharding.make_mesh(tiny_config.mesh)
  with jax.set_mesh(mesh):
    planned = memory.memory_plan(tiny_config, data, mesh)
    trainer = Trainer(make_method(tiny_config, data), mesh)
    state = trainer.init_state(jax.random.key(0))
  device = jax.devices()[0]
  real = {
    name: sum(
      s.data.nbytes
      for leaf in jax.tree.leaves(state[name])
      for s in leaf.addressable_shards
      if s.device == device
    )
    for name in ("params", "opt_state")
  }
  assert planned["params_bytes"] == real["params"]
  assert planned["opt_state_bytes"] == real["opt_state"]
  # Sharding over model halves the source's MLP weights on each device.
  one = memory.memory_plan(tiny_config, data, sharding.make_mesh("data:1,model:1"))
  assert planned["params_bytes"] < one["params_bytes"]
  assert planned["activation_bytes"] < one["activation_bytes"]


def test_flash_attention_is_planned_without_the_probabilities():
  cfg = model.ModelConfig(
    vocab_size=17, seq_len=64, num_classes=10, d=32, heads=4, mlp_dim=128, depth=3
  )
  flash = dataclasses.replace(cfg, attention="cudnn")
  saved = costs.activation_bytes_per_sequence(cfg) - costs.activation_bytes_per_sequence(flash)
  assert saved == 4 * cfg.depth * cfg.heads * cfg.seq_len * (cfg.seq_len - 1)
