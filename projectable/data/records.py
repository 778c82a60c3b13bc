"""The record types of a dataset: raw image records, tokenised splits and their tasks.

A ``Source`` is what a dataset reader returns (random-access records
``{"image": (H, W, C) uint8, "label": int}``); ``data.tokens.tokenise`` turns it
into a ``TaskData``: the train/val/test ``Split``s as pixel tokens, and the tasks.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from projectable.core import digests


@dataclasses.dataclass(frozen=True)
class Split:
  tokens: np.ndarray  # (N, L) int32 pixel tokens.
  labels: np.ndarray  # (N,) int32 class labels.


@dataclasses.dataclass(frozen=True)
class TaskData:
  """A tokenised dataset and its tasks."""

  name: str
  image_shape: tuple[int, int, int]  # (H, W, C) after downsampling.
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

  def fingerprint(self) -> dict:
    """What identifies this data: name, shapes, classes, split sizes and a SHA-256 of every
    split's tokens and labels (a file changed under the same path changes it)."""
    splits = {"train": self.train, "val": self.val, "test": self.test}
    content = hashlib.sha256()
    for split in splits.values():
      content.update(digests.array_digest(split.tokens).encode())
      content.update(digests.array_digest(split.labels).encode())
    return {
      "dataset": self.name,
      "image_shape": list(self.image_shape),
      "levels": self.levels,
      "class_names": list(self.class_names),
      "split_sizes": {name: len(split.labels) for name, split in splits.items()},
      "sha256": content.hexdigest(),
    }

  def task_indices(self, split: Split) -> list[np.ndarray]:
    """Per task, the indices of ``split``'s examples whose class is in the task."""
    return [np.flatnonzero(np.isin(split.labels, classes)) for classes in self.task_classes]


@dataclasses.dataclass(frozen=True)
class Source:
  """A dataset's raw image records before tokenisation."""

  name: str
  train: Sequence[dict]  # Random access; [i] -> {"image": (H, W, C) uint8, "label": int}.
  test: Sequence[dict] | None  # None: the test split is carved from train.
  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]  # (H, W, C) as stored.
  max_value: float  # Largest possible intensity (255 for uint8 images).


class ArraySource:
  """In-memory random-access records over ``images`` (N, H, W, C) and ``labels`` (N,)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images, self.labels = images, labels

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i: int) -> dict[str, Any]:
    return {"image": self.images[i], "label": self.labels[i]}

  def __getitems__(self, rows: Sequence[int]) -> list[dict[str, Any]]:
    return [self[i] for i in rows]


def read_records(source: Sequence[dict], rows: Sequence[int]) -> list[dict]:
  """``source``'s records at ``rows``, in one batched read where the source supports it."""
  rows = [int(r) for r in rows]
  if hasattr(source, "__getitems__"):
    return list(source.__getitems__(rows))
  return [source[r] for r in rows]
