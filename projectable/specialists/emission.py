"""Emission: specialists of many tasks at once, scored, and saved as standalone models.

Specialists of many tasks are emitted at once: one jitted call of the mode's
``specialist`` vmapped over the tasks (a projection of the source, or a slice of
the stacked specialists), then each is scored on its task's test images and
saved with ``specialist.save_specialist``. ``projectable/export.py`` does the
same from any checkpoint of a finished workdir.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from projectable import data as data_lib
from projectable.core import model
from projectable.core.metrics import bits_per_dim
from projectable.core.model import ModelConfig
from projectable.data import TaskData
from projectable.specialists.artifact import save_specialist
from projectable.training.modes import Method


@dataclasses.dataclass(frozen=True)
class Emitted:
  """Specialists of several tasks, their weights stacked on a leading task axis (host)."""

  cfg: ModelConfig
  task_ids: tuple[int, ...]
  weights: dict
  seconds: float  # Wall time of one emission call of all tasks (after a warm-up call).
  compile_seconds: float  # Wall time of compiling that call.
  test_bits_per_dim: dict[str, float]  # Each specialist on its task's test images.

  def weights_of(self, i: int) -> dict:
    """The weights of the i-th emitted specialist (task ``task_ids[i]``)."""
    return jax.tree.map(lambda w: w[i], self.weights)


def emit_specialists(
  data: TaskData, method: Method, params: dict, task_ids: Sequence[int]
) -> Emitted:
  """One jitted, vmapped ``method.specialist`` call for ``task_ids``; timed and scored.

  The call is timed after compiling it and running it once, so ``seconds`` is
  the cost of emitting all the tasks' weights, not the runtime's first-call setup.
  """
  if not method.has_specialists:
    raise ValueError(
      f"mode {method.name!r} has no specialists to export; train mode "
      "'projectable' or 'specialists'"
    )
  cfg = method.small
  task_ids = tuple(int(t) for t in task_ids)
  ids_T = jnp.asarray(task_ids, jnp.int32)
  tasks_TxC = jnp.asarray(data.task_descriptors()[list(task_ids)])
  emit = jax.jit(jax.vmap(method.specialist, in_axes=(None, 0, 0)))
  start = time.perf_counter()
  compiled = emit.lower(params, ids_T, tasks_TxC).compile()
  compile_seconds = time.perf_counter() - start
  jax.block_until_ready(compiled(params, ids_T, tasks_TxC))
  start = time.perf_counter()
  weights = jax.block_until_ready(compiled(params, ids_T, tasks_TxC))
  seconds = time.perf_counter() - start
  weights = jax.device_get(weights)
  bpd = task_test_bits_per_dim(data, cfg, weights, task_ids, method.step.eval_chunk)
  _check_finite(weights, bpd, [data.task_names[t] for t in task_ids])
  return Emitted(cfg, task_ids, weights, seconds, compile_seconds, bpd)


def _check_finite(weights_T: dict, bits_per_dim: dict[str, float], names: list[str]) -> None:
  """Refuses specialists with non-finite weights or test bits/dim: nothing is written."""
  finite_T = np.all(
    [np.isfinite(w).reshape(len(names), -1).all(1) for w in jax.tree.leaves(weights_T)], 0
  )
  bad = [
    n for n, ok in zip(names, finite_T, strict=True) if not ok or not np.isfinite(bits_per_dim[n])
  ]
  if bad:
    raise FloatingPointError(
      f"the specialists of tasks {bad} have non-finite weights or test bits/dim; nothing was "
      "written. The run's weights are damaged or diverged: check its best/ checkpoint."
    )


def task_test_bits_per_dim(
  data: TaskData, cfg: ModelConfig, weights_T: dict, task_ids: Sequence[int], chunk: int
) -> dict[str, float]:
  """Mean test bits/dim of each stacked specialist on the images of its task."""
  task_ids = list(task_ids)
  total, count = np.zeros(len(task_ids)), np.zeros(len(task_ids))
  for part in data_lib.eval_arrays(data, data.test, chunk):
    mask_TxN = part["mask"][task_ids]
    nll_TxN = np.asarray(_image_nll(cfg, weights_T, jnp.asarray(part["tokens"][task_ids])))
    total += (nll_TxN.astype(np.float64) * mask_TxN).sum(1)
    count += mask_TxN.sum(1)
  return bits_per_dim(total / count, tuple(data.task_names[t] for t in task_ids))["per_task"]


@functools.partial(jax.jit, static_argnames="cfg")
def _image_nll(cfg: ModelConfig, weights_T: dict, tokens_TxNxL: jax.Array) -> jax.Array:
  """Mean per-pixel NLL (T, N) in nats of each specialist on its own images."""

  def one(weights, tokens_NxL):
    return model.token_nll(model.apply(cfg, weights, tokens_NxL), tokens_NxL).mean(-1)

  return jax.vmap(one)(weights_T, tokens_TxNxL)


def save_specialists(
  emitted: Emitted,
  data: TaskData,
  method: Method,
  step: int,
  out: str,
  overwrite: bool,
  source_weights: str = "best",
) -> list[str]:
  """Writes each emitted specialist to ``out/<task>/`` with its metadata; returns the dirs."""
  paths = []
  for i, t in enumerate(emitted.task_ids):
    name = data.task_names[t]
    meta = {
      "dataset": data.name,
      "image_shape": list(data.image_shape),
      "levels": data.levels,
      "task": name,
      "task_classes": list(data.task_classes[t]),
      "class_names": [data.class_names[c] for c in data.task_classes[t]],
      "mode": method.name,
      "source_step": step,
      "source_weights": source_weights,
      "test_bits_per_dim": emitted.test_bits_per_dim[name],
    }
    paths.append(os.path.join(out, name))
    save_specialist(paths[-1], emitted.cfg, emitted.weights_of(i), meta, overwrite=overwrite)
  return paths


def export_specialists(
  data: TaskData, method: Method, params: dict, metrics: dict, workdir: str
) -> None:
  """Writes every task's standalone small model to ``export/<task>/`` (modes that have them)."""
  if not method.has_specialists:
    return
  started = time.monotonic()
  logging.info("emitting and scoring %d specialists ...", data.num_tasks)
  emitted = emit_specialists(data, method, params, range(data.num_tasks))
  out = os.path.join(workdir, "export")
  save_specialists(emitted, data, method, metrics["step"], out, overwrite=True)
  mean = np.mean(list(emitted.test_bits_per_dim.values()))
  logging.info(
    "wrote export/<task>/: %d specialists, mean test %.4f bits/dim, in %.1f s",
    data.num_tasks,
    mean,
    time.monotonic() - started,
  )
