"""Images as pixel-token sequences, and a ``Source`` tokenised into train/val/test splits.

An image (H, W, C) is optionally mean-pooled by ``downsample`` on height and
width, its intensities in [0, max_value] are quantised to ``levels`` values, and
it becomes a sequence of H*W*C tokens in raster order, channels interleaved
(pixel (0, 0) R, G, B, then pixel (0, 1), ...). Every split keeps the class
label so that a task (a set of classes) selects its images from any split.
Splits: where the dataset has a test split it is the test split and validation
is carved per class from train; otherwise validation and test are both carved
per class from train. Each split is tokenised once, here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from projectable.data.records import Source, Split, TaskData, read_records
from projectable.data.tasks import parse_tasks

_READ_CHUNK = 4096  # Records read and tokenised at a time.


def quantise(images: np.ndarray, max_value: float, levels: int) -> np.ndarray:
  """Maps intensities in [0, max_value] to integer tokens in [0, levels - 1]."""
  scaled = np.asarray(images, np.float64) / max_value * (levels - 1)
  return np.clip(np.rint(scaled), 0, levels - 1).astype(np.int32)


def tokens_to_images(
  tokens_NxL: np.ndarray, image_shape: tuple[int, int, int], levels: int
) -> np.ndarray:
  """uint8 images (N, H, W, C) in 0..255 from tokens in 0..levels-1 (raster order)."""
  tokens_NxL = np.asarray(tokens_NxL)
  if levels < 2:
    raise ValueError(f"levels must be at least 2, got {levels}")
  if tokens_NxL.ndim != 2 or tokens_NxL.shape[1] != math.prod(image_shape):
    raise ValueError(f"tokens of shape {tokens_NxL.shape} do not hold images {image_shape}")
  scaled = np.rint(np.clip(tokens_NxL, 0, levels - 1) * (255.0 / (levels - 1)))
  return scaled.astype(np.uint8).reshape(len(tokens_NxL), *image_shape)


def check_downsample(factor: int, height: int, width: int, what: str) -> None:
  """Raises unless ``config.data.downsample`` divides the image size of ``what``."""
  if height % factor or width % factor:
    raise ValueError(
      f"config.data.downsample={factor} does not divide the image size {height}x{width} of {what}"
    )


def downsample(images: np.ndarray, factor: int) -> np.ndarray:
  """Mean-pools (N, H, W, C) images over ``factor`` x ``factor`` blocks (float64)."""
  n, h, w, c = images.shape
  check_downsample(factor, h, w, "the images")
  blocks = np.asarray(images, np.float64).reshape(n, h // factor, factor, w // factor, factor, c)
  return blocks.mean(axis=(2, 4))


def preprocess(images: np.ndarray, max_value: float, levels: int, factor: int) -> np.ndarray:
  """(N, H, W, C) images -> (N, L) int32 tokens: pooled, quantised, channel-interleaved raster."""
  if factor > 1:
    images = downsample(images, factor)
  return quantise(images, max_value, levels).reshape(len(images), -1)


def split_per_class(
  labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Seeded, stratified train/val/test index split (each class split alike)."""
  rng = np.random.default_rng(seed)
  parts: tuple[list, list, list] = ([], [], [])
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    n_test = round(len(idx) * test_fraction)
    n_val = round(len(idx) * val_fraction)
    parts[2].append(idx[:n_test])
    parts[1].append(idx[n_test : n_test + n_val])
    parts[0].append(idx[n_test + n_val :])
  return tuple(np.sort(np.concatenate(p)) for p in parts)  # type: ignore[return-value]


def _read_all(
  source: Sequence[dict], levels: int, max_value: float, factor: int, image_shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
  """Every record of ``source`` as (tokens (N, L) int32, labels (N,) int32)."""
  tokens, labels = [], []
  for start in range(0, len(source), _READ_CHUNK):
    records = read_records(source, range(start, min(start + _READ_CHUNK, len(source))))
    images = np.stack([r["image"] for r in records])
    if images.shape[1:] != tuple(image_shape):
      raise ValueError(f"records have image shape {images.shape[1:]}, expected {image_shape}")
    tokens.append(preprocess(images, max_value, levels, factor))
    labels.append(np.array([r["label"] for r in records], np.int32))
  return np.concatenate(tokens), np.concatenate(labels)


def tokenise(source: Source, cfg) -> TaskData:
  """A ``Source`` as TaskData under ``config.data`` (levels, downsample, splits, tasks)."""
  factor = cfg.downsample
  h, w, c = source.image_shape
  check_downsample(factor, h, w, source.name)  # Before reading the records.
  tokens, labels = _read_all(source.train, cfg.levels, source.max_value, factor, source.image_shape)
  if source.test is None:
    train, val, test = split_per_class(labels, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    test_split = Split(tokens[test], labels[test])
  else:
    train, val, _ = split_per_class(labels, cfg.val_fraction, 0.0, cfg.split_seed)
    test_split = Split(
      *_read_all(source.test, cfg.levels, source.max_value, factor, source.image_shape)
    )
  task_names, task_classes = parse_tasks(cfg.tasks, source.class_names)
  data = TaskData(
    name=source.name,
    image_shape=(h // factor, w // factor, c),
    levels=cfg.levels,
    class_names=source.class_names,
    task_names=task_names,
    task_classes=task_classes,
    train=Split(tokens[train], labels[train]),
    val=Split(tokens[val], labels[val]),
    test=test_split,
  )
  for split_name in ("train", "val", "test"):
    for name, pool in zip(task_names, data.task_indices(getattr(data, split_name)), strict=True):
      if not len(pool):
        raise ValueError(
          f"task {name!r} of dataset {source.name!r} has no examples in the "
          f"{split_name} split; check config.data.tasks and the data's labels"
        )
  return data


def eval_arrays(data: TaskData, split: Split, chunk: int) -> list[dict[str, np.ndarray]]:
  """A split as per-task padded chunks: tokens (T, chunk, L) and mask (T, chunk)."""
  pools = data.task_indices(split)
  longest = max(len(p) for p in pools)
  num_chunks = -(-longest // chunk)
  chunks = []
  for c in range(num_chunks):
    tokens = np.zeros((data.num_tasks, chunk, data.seq_len), np.int32)
    mask = np.zeros((data.num_tasks, chunk), np.float32)
    for t, pool in enumerate(pools):
      part = pool[c * chunk : (c + 1) * chunk]
      tokens[t, : len(part)] = split.tokens[part]
      mask[t, : len(part)] = 1.0
    chunks.append({"tokens": tokens, "mask": mask})
  return chunks
