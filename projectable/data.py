"""Image datasets as pixel-token sequences, tasks as class sets, task-grouped batches.

An image (H, W, C) with intensities quantised to ``levels`` values becomes a
sequence of H*W*C tokens in raster order, channels interleaved (pixel (0, 0)
R, G, B, then pixel (0, 1), ...). Every split keeps the class label so that a
task (a set of classes) selects its images from any split.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Split:
  tokens: np.ndarray  # (N, L) int32 pixel tokens.
  labels: np.ndarray  # (N,) int32 class labels.


@dataclasses.dataclass(frozen=True)
class TaskData:
  """A tokenised dataset and its tasks."""

  name: str
  image_shape: tuple[int, int, int]  # (H, W, C)
  levels: int  # Vocabulary size.
  class_names: tuple[str, ...]
  task_names: tuple[str, ...]
  task_classes: tuple[tuple[int, ...], ...]
  train: Split
  val: Split
  test: Split

  @property
  def seq_len(self) -> int:
    return int(np.prod(self.image_shape))

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def num_tasks(self) -> int:
    return len(self.task_names)

  def task_descriptors(self) -> np.ndarray:
    """(T, C) float32: each task's classes with equal weights summing to one."""
    out = np.zeros((self.num_tasks, self.num_classes), np.float32)
    for t, classes in enumerate(self.task_classes):
      out[t, list(classes)] = 1.0 / len(classes)
    return out

  def task_indices(self, split: Split) -> list[np.ndarray]:
    """Per task, the indices of ``split``'s examples whose class is in the task."""
    return [np.flatnonzero(np.isin(split.labels, classes)) for classes in self.task_classes]


def quantise(images: np.ndarray, max_value: float, levels: int) -> np.ndarray:
  """Maps intensities in [0, max_value] to integer tokens in [0, levels - 1]."""
  scaled = np.asarray(images, np.float64) / max_value * (levels - 1)
  return np.clip(np.rint(scaled), 0, levels - 1).astype(np.int32)


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
    parts[1].append(idx[n_test:n_test + n_val])
    parts[0].append(idx[n_test + n_val:])
  return tuple(np.sort(np.concatenate(p)) for p in parts)  # type: ignore[return-value]


def load_digits(levels: int, val_fraction: float, test_fraction: float, seed: int) -> TaskData:
  """scikit-learn's bundled 8x8 digits (1797 images, values 0..16), no download."""
  from sklearn.datasets import load_digits as sk_load_digits

  digits = sk_load_digits()
  images = digits.images.reshape(-1, 8, 8, 1)
  labels = digits.target.astype(np.int32)
  tokens = quantise(images, 16.0, levels).reshape(len(images), -1)
  train, val, test = split_per_class(labels, val_fraction, test_fraction, seed)
  names = tuple(str(c) for c in range(10))
  return TaskData(
      name="digits", image_shape=(8, 8, 1), levels=levels, class_names=names,
      task_names=names, task_classes=tuple((c,) for c in range(10)),
      train=Split(tokens[train], labels[train]), val=Split(tokens[val], labels[val]),
      test=Split(tokens[test], labels[test]))


def load(cfg) -> TaskData:
  """The dataset named by ``cfg.name`` (a ``config.data`` ConfigDict)."""
  if cfg.name == "digits":
    return load_digits(cfg.levels, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
  raise ValueError(f"config.data.name={cfg.name!r} is not a known dataset; known: 'digits'")


class TaskBatcher:
  """Deterministic task-grouped batches: batch(step) depends only on (seed, step).

  Each batch holds ``batch_tasks`` tasks (all tasks when it equals their number,
  else a random subset) and ``examples_per_task`` training images of each,
  sampled with replacement. Being a pure function of the step, the data order
  resumes exactly after a restart with no iterator state to save.
  """

  def __init__(self, data: TaskData, batch_tasks: int, examples_per_task: int, seed: int):
    self.data = data
    self.batch_tasks = batch_tasks
    self.examples_per_task = examples_per_task
    self.seed = seed
    self.pools = data.task_indices(data.train)
    self.descriptors = data.task_descriptors()

  def batch(self, step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, step])
    num_tasks = self.data.num_tasks
    if self.batch_tasks == num_tasks:
      tasks = np.arange(num_tasks)
    else:
      tasks = np.sort(rng.choice(num_tasks, self.batch_tasks, replace=False))
    idx = np.stack([rng.choice(self.pools[t], self.examples_per_task) for t in tasks])
    return {
        "tokens": self.data.train.tokens[idx],  # (M, N, L)
        "task_id": tasks.astype(np.int32),  # (M,)
        "task": self.descriptors[tasks],  # (M, C)
    }


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
      part = pool[c * chunk:(c + 1) * chunk]
      tokens[t, :len(part)] = split.tokens[part]
      mask[t, :len(part)] = 1.0
    chunks.append({"tokens": tokens, "mask": mask})
  return chunks
