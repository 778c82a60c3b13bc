"""What the benchmarks time: sizes, configs, synthetic batches, trainers, timed calls.

Shared by ``run.py`` (every issue #7 figure), ``profile.py`` (XLA ops of the same calls)
and ``allocator.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from benchmarks import common
from configs import digits
from projectable.core import model, projector
from projectable.data import pipeline
from projectable.training import modes, sharding
from projectable.training.trainer import Trainer


@dataclasses.dataclass(frozen=True)
class Sizes:
  """Model sizes, batches and sweep points of one benchmark run."""

  source: dict  # d, heads, mlp_dim, depth of the source.
  small: dict  # d, heads, mlp_dim of the small model (depth = the source's).
  examples_per_task: int  # n at the default batch of 10 tasks x n.
  repeats: int  # Timed calls per median.
  matmul_n: int  # Side of the square matmul (compute dtype inputs) that sets peak FLOP/s.
  batch_sweep: tuple[int, ...]  # Images per task in the batch-size sweep.
  seq_sweep: tuple[int, ...]  # Sequence lengths (synthetic tokens).
  width_sweep: tuple[int, ...]  # Source widths d (heads fixed, mlp_dim = 4d).
  proj_d_sweep: tuple[int, ...]  # Source widths for projection time.
  proj_ds_sweep: tuple[int, ...]  # Small widths for projection time.
  proj_ds_at_d: int  # Source width of the small-width sweep.
  projectable_steps: int  # Steps of the projectable run (at lambda 0) that emits.
  specialist_cap: int  # Steps of the specialists run trying to reach the projected bits/dim.
  eval_every: int  # Specialists-mode steps between test evaluations.
  # config.train options of every benchmarked model (compute_dtype, attention; for accelerators).
  train: dict = dataclasses.field(default_factory=dict)


FULL = Sizes(
  source=dict(d=256, heads=8, mlp_dim=1024, depth=6),
  small=dict(d=64, heads=4, mlp_dim=256),
  examples_per_task=8,
  repeats=5,
  matmul_n=2048,
  batch_sweep=(2, 4, 8, 16),
  seq_sweep=(32, 64, 196),
  width_sweep=(128, 256, 384),
  proj_d_sweep=(128, 256, 512),
  proj_ds_sweep=(32, 64, 128),
  proj_ds_at_d=256,
  projectable_steps=300,
  specialist_cap=1600,
  eval_every=50,
)
QUICK = Sizes(
  # One layer: quick runs check that every figure is produced (the test), and each of their
  # ~10 compiled steps takes a quarter less time than at depth 2 (46 s -> 34 s in all).
  source=dict(d=64, heads=4, mlp_dim=256, depth=1),
  small=dict(d=16, heads=2, mlp_dim=64),
  examples_per_task=4,
  repeats=3,
  matmul_n=512,
  # Each sweep includes the base point (n=4, length 64, d=64), the step that mfu_source
  # already compiled: 3 more compiled steps instead of 5.
  batch_sweep=(4, 16),
  seq_sweep=(16, 64),
  width_sweep=(64, 128),
  # Projections of ~1 ms were dispatch noise on a loaded machine (negative exponents): widths
  # where even the smallest is compute-bound.
  proj_d_sweep=(128, 512),
  proj_ds_sweep=(16, 64),
  proj_ds_at_d=256,
  projectable_steps=3,
  specialist_cap=6,
  eval_every=3,
)


def bench_config(sizes: Sizes, mode: str, **source):
  """digits.py's config at the benchmark sizes on one device; ``source`` overrides the source."""
  config = digits.get_config()
  config.mode = mode
  config.mesh = "data:1,model:1"
  config.model.update(**{**sizes.source, **source})
  config.small.update(**sizes.small, depth=config.model.depth)
  config.train.examples_per_task = sizes.examples_per_task
  config.train.update(**sizes.train)
  return config


def synthetic_data(seq_len: int) -> types.SimpleNamespace:
  """The shapes a Method needs, for timing at sequence lengths that no dataset has."""
  return types.SimpleNamespace(levels=17, seq_len=seq_len, num_classes=10, num_tasks=10)


def synthetic_batch(config, data) -> dict[str, np.ndarray]:
  m, n = config.train.batch_tasks, config.train.examples_per_task
  rng = np.random.default_rng(0)
  return {
    "tokens": rng.integers(0, data.levels, (m, n, data.seq_len), dtype=np.int32),
    "task_id": np.arange(m, dtype=np.int32),
    "task": np.eye(data.num_classes, dtype=np.float32)[:m],
  }


@functools.cache
def _trainer(config_json: str, seq_len: int) -> Trainer:
  config = ml_collections.ConfigDict(json.loads(config_json))
  data = synthetic_data(seq_len)
  return Trainer(modes.make_method(config, data), sharding.make_mesh(config.mesh))


def make_trainer(config, data) -> Trainer:
  """One trainer (and so one compiled step) per config and sequence length, reused across
  benchmarks: digits and the synthetic stand-in have the same shapes at length 64."""
  return _trainer(config.to_json(), data.seq_len)


def step_seconds(trainer: Trainer, batch: dict, repeats: int) -> tuple[float, int]:
  """Median train-step time from a fresh state, and how many times the step compiled."""
  state = trainer.init_state(jax.random.key(0))
  batch = pipeline.place(batch, trainer.batch_shardings)

  def step(_):
    nonlocal state
    state, metrics = trainer.train_step(state, batch)
    return metrics

  seconds = common.median_seconds(step, repeats)
  return seconds, trainer.jitted_train_step._cache_size()


def projection_call(sizes: Sizes, d: int, ds: int) -> Callable[[], dict]:
  """A compiled ``project`` of one task from a source of width d to a small model of width ds."""
  src = model.ModelConfig(17, 64, 10, d, sizes.source["heads"], 4 * d, sizes.source["depth"])
  small = model.ModelConfig(17, 64, 0, ds, sizes.small["heads"], 4 * ds, sizes.source["depth"])
  source = model.init_params(src, jax.random.key(0))
  proj = projector.init_projector(src, small, projector.ProjectorConfig(8), jax.random.key(1))
  emit = jax.jit(projector.project)
  task_C = jnp.eye(10, dtype=jnp.float32)[0]
  return lambda: emit(source, proj, task_C)


def projection_seconds(sizes: Sizes, d: int, ds: int) -> float:
  """Median time of a jitted ``project`` from a source of width d to a small model of width ds."""
  call = projection_call(sizes, d, ds)
  return common.median_seconds(lambda _: call(), sizes.repeats)
