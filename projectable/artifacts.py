"""End-of-run artifacts: per-task pictures, sample grids and exported specialists."""

from __future__ import annotations

import os

import jax
import ml_collections

from projectable import images, sampling
from projectable.data import TaskData
from projectable.modes import Method
from projectable.specialist import save_specialist


def write_pictures(config: ml_collections.ConfigDict, data: TaskData, method: Method,
                   params: dict, metrics: dict, workdir: str) -> None:
  """``eval/bits_per_dim.png`` (per-task bars) and ``samples/<task>.png`` grids."""
  series = {method.name: metrics["bits_per_dim"]["per_task"]}
  if "source_bits_per_dim" in metrics:
    series["source (joint)"] = metrics["source_bits_per_dim"]["per_task"]
  images.save_bar_chart(series, os.path.join(workdir, "eval", "bits_per_dim.png"),
                        title=f"{data.name}: test bits/dim per task (step {metrics['step']})",
                        ylabel="bits/dim")
  os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
  descriptors = data.task_descriptors()
  key = jax.random.key(config.seed)
  for t, name in enumerate(data.task_names):
    cfg, weights, task_C = method.generator(params, t, descriptors[t])
    tokens = sampling.sample(cfg, weights, config.samples.num_per_task,
                             jax.random.fold_in(key, t), task_C, config.samples.temperature)
    grid = images.tokens_to_images(jax.device_get(tokens), data.image_shape, data.levels)
    images.save_grid(grid, os.path.join(workdir, "samples", f"{name}.png"))


def export_specialists(data: TaskData, method: Method, params: dict, metrics: dict,
                       workdir: str) -> None:
  """Writes every task's standalone small model to ``export/<task>/`` (modes that have them)."""
  if method.specialist_config is None:
    return
  descriptors = data.task_descriptors()
  emit = jax.jit(method.specialist)
  for t, name in enumerate(data.task_names):
    meta = {
        "dataset": data.name, "image_shape": list(data.image_shape), "levels": data.levels,
        "task": name, "task_classes": list(data.task_classes[t]),
        "class_names": [data.class_names[c] for c in data.task_classes[t]],
        "mode": method.name, "source_step": metrics["step"],
        "test_bits_per_dim": metrics["bits_per_dim"]["per_task"][name],
    }
    small = jax.device_get(emit(params, t, descriptors[t]))
    save_specialist(os.path.join(workdir, "export", name), method.specialist_config, small,
                    meta, overwrite=True)
