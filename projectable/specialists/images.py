"""Pictures: tokens back to images, PNG sample grids, per-task bar charts, and a run's
end-of-run pictures (``eval/bits_per_dim.png`` and ``samples/<task>.png``)."""

from __future__ import annotations

import math
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from projectable.core import sampling
from projectable.core.model import ModelConfig
from projectable.data.records import TaskData
from projectable.data.tokens import tokens_to_images
from projectable.training.modes import Method

SEPARATOR = 128  # Grey between tiles, distinct from black background and white ink.


def grid_size(num: int, height: int, width: int, cols: int, scale: int) -> tuple[int, int]:
  """(width, height) in pixels of a grid of ``num`` tiles with 1-pixel separators."""
  rows = -(-num // cols)
  return cols * width * scale + cols - 1, rows * height * scale + rows - 1


def save_grid(
  images_NxHxWxC: np.ndarray, path: str, cols: int | None = None, scale: int | None = None
) -> None:
  """Writes the images as one PNG grid, tiles 1 pixel apart, grey where no tile.

  ``cols`` defaults to a near-square grid; ``scale`` (nearest-neighbour
  upscaling) defaults to the smallest factor making tiles at least 64 pixels.
  """
  images_NxHxWxC = np.asarray(images_NxHxWxC)
  if images_NxHxWxC.ndim != 4 or images_NxHxWxC.shape[-1] not in (1, 3):
    raise ValueError(f"expected uint8 images (N, H, W, 1 or 3), got {images_NxHxWxC.shape}")
  n, h, w, c = images_NxHxWxC.shape
  if n == 0:
    raise ValueError("no images to save")
  cols = min(cols or math.ceil(math.sqrt(n)), n)
  scale = scale or max(1, -(-64 // max(h, w)))
  tiles = images_NxHxWxC.astype(np.uint8).repeat(scale, axis=1).repeat(scale, axis=2)
  width, height = grid_size(n, h, w, cols, scale)
  canvas_HxWxC = np.full((height, width, c), SEPARATOR, np.uint8)
  for i, tile in enumerate(tiles):
    top, left = (i // cols) * (h * scale + 1), (i % cols) * (w * scale + 1)
    canvas_HxWxC[top : top + h * scale, left : left + w * scale] = tile
  _make_parent(path)
  Image.fromarray(canvas_HxWxC[..., 0] if c == 1 else canvas_HxWxC).save(path, format="PNG")


def save_bar_chart(series: dict[str, dict[str, float]], path: str, title: str, ylabel: str) -> None:
  """Grouped bars: one group per task, one colour per series ({series: {task: value}}).

  Tasks are ordered as first seen; a task missing from a series has no bar there.
  """
  tasks = list(dict.fromkeys(task for values in series.values() for task in values))
  if not tasks:
    raise ValueError("no values to plot")
  # Imported here: matplotlib is a sixth of a launcher's start-up, and most commands never plot.
  from matplotlib.figure import Figure

  fig = Figure(figsize=(min(16.0, max(6.0, 0.25 * len(tasks) * len(series) + 3.0)), 4.5))
  ax = fig.add_subplot()
  width = 0.8 / len(series)
  for s, (name, values) in enumerate(series.items()):
    xs = [t + (s - (len(series) - 1) / 2) * width for t, task in enumerate(tasks) if task in values]
    ax.bar(xs, [values[task] for task in tasks if task in values], width, label=name)
  ax.set_xticks(range(len(tasks)), tasks)
  # Bits/dim of competing models differ by a few percent: start the axis near the smallest bar.
  low = min(v for values in series.values() for v in values.values())
  high = max(v for values in series.values() for v in values.values())
  ax.set_ylim(max(0.0, low - 0.15 * (high - low) - 1e-3), high + 0.05 * (high - low) + 1e-3)
  ax.set_xlabel("task")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize="small", ncol=min(len(series), 3))
  fig.tight_layout()
  _make_parent(path)
  fig.savefig(path, dpi=100)


def _make_parent(path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def write_pictures(
  config: ml_collections.ConfigDict,
  data: TaskData,
  method: Method,
  params: dict,
  metrics: dict,
  workdir: str,
) -> None:
  """``eval/bits_per_dim.png`` (per-task bars) and ``samples/<task>.png`` grids."""
  series = {method.name: metrics["bits_per_dim"]["per_task"]}
  if "source_bits_per_dim" in metrics:
    series["source (joint)"] = metrics["source_bits_per_dim"]["per_task"]
  chart = os.path.join(workdir, "eval", "bits_per_dim.png")
  save_bar_chart(
    series,
    chart,
    title=f"{data.name}: test bits/dim per task (step {metrics['step']})",
    ylabel="bits/dim",
  )
  logging.info("wrote eval/bits_per_dim.png")
  num = config.samples.num_per_task
  logging.info("sampling %d images for each of %d tasks ...", num, data.num_tasks)
  started = time.monotonic()
  descriptors = data.task_descriptors()
  key = jax.random.key(config.seed)
  for t, name in enumerate(data.task_names):
    sampler = method.sampler(params, t, descriptors[t])
    save_samples(
      sampler.cfg,
      sampler.weights,
      sampler.task_C,
      config.samples.num_per_task,
      jax.random.fold_in(key, t),
      config.samples.temperature,
      data.image_shape,
      data.levels,
      os.path.join(workdir, "samples", f"{name}.png"),
    )
  took = time.monotonic() - started
  logging.info("wrote samples/<task>.png: %d grids in %.1f s", data.num_tasks, took)


def save_samples(
  cfg: ModelConfig,
  weights: dict,
  task_C: jax.Array | None,
  num: int,
  key: jax.Array,
  temperature: float,
  image_shape: tuple[int, int, int],
  levels: int,
  path: str,
) -> None:
  """Draws ``num`` images from a model (KV-cached) and writes them as one PNG grid."""
  tokens = sampling.sample(cfg, weights, num, key, task_C, temperature)
  save_grid(tokens_to_images(jax.device_get(tokens), image_shape, levels), path)
