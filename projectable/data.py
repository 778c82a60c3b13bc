"""Image datasets as pixel-token sequences, tasks as class sets, task-grouped batches.

An image (H, W, C) is optionally mean-pooled by ``downsample`` on height and
width, its intensities in [0, max_value] are quantised to ``levels`` values, and
it becomes a sequence of H*W*C tokens in raster order, channels interleaved
(pixel (0, 0) R, G, B, then pixel (0, 1), ...). Every split keeps the class
label so that a task (a set of classes) selects its images from any split.

``load(config.data)`` reads a dataset's raw records (``config.data.name``:
'digits', 'fashion_mnist', 'arrays' or a prepared TFDS dataset; see
projectable/sources.py) into memory as tokens. Splits: where the dataset
has a test split it is the test split and validation is carved per class from
train; otherwise validation and test are both carved per class from train.
Training batches come from projectable/pipeline.py (grain) or ``TaskBatcher``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_READ_CHUNK = 4096  # Records read and tokenised at a time.


@dataclasses.dataclass(frozen=True)
class Split:
  tokens: np.ndarray  # (N, L) int32 pixel tokens.
  labels: np.ndarray  # (N,) int32 class labels.


@dataclasses.dataclass(frozen=True)
class Records:
  """The raw records behind a split: its example i is ``source[rows[i]]``."""

  source: Sequence[dict]  # Random access; [i] -> {"image": (H, W, C) uint8, "label": int}.
  rows: np.ndarray  # (N,) int64 record indices of the split's examples.
  max_value: float  # Intensity that maps to the top quantisation level.
  downsample: int  # Mean-pooling factor on height and width.
  levels: int  # Quantisation levels.

  def tokens(self, positions: np.ndarray) -> np.ndarray:
    """(K, L) int32 tokens of the split's examples at ``positions``."""
    records = read_records(self.source, self.rows[positions])
    images = np.stack([r["image"] for r in records])
    return preprocess(images, self.max_value, self.levels, self.downsample)


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
  # The train split's raw records, read by the grain pipeline; None: use train.tokens.
  train_records: Records | None = dataclasses.field(default=None, compare=False, repr=False)

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


def quantise(images: np.ndarray, max_value: float, levels: int) -> np.ndarray:
  """Maps intensities in [0, max_value] to integer tokens in [0, levels - 1]."""
  scaled = np.asarray(images, np.float64) / max_value * (levels - 1)
  return np.clip(np.rint(scaled), 0, levels - 1).astype(np.int32)


def downsample(images: np.ndarray, factor: int) -> np.ndarray:
  """Mean-pools (N, H, W, C) images over ``factor`` x ``factor`` blocks (float64)."""
  n, h, w, c = images.shape
  if h % factor or w % factor:
    raise ValueError(f"config.data.downsample={factor} does not divide the image size {h}x{w}")
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


def _slug(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()


def parse_tasks(
  spec: str | Mapping[str, Sequence[int | str]],
  class_names: Sequence[str],
  field: str = "config.data.tasks",
) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]:
  """Task names and class sets from ``config.data.tasks`` (``field`` names it in errors).

  ``''``: one task per class, named after it (lower case, runs of other
  characters as '_'). Otherwise ``'name:class,class,...;name:...'`` (or a dict
  name -> classes), a class given by index or by name; a task's data is the
  union of its classes. Task names are used as file names.
  """
  if not spec:
    names = [_slug(n) or f"class{c}" for c, n in enumerate(class_names)]
    if len(set(names)) < len(names):
      names = [f"class{c}" for c in range(len(class_names))]
    return tuple(names), tuple((c,) for c in range(len(class_names)))
  if isinstance(spec, str):
    items = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
      name, sep, members = part.partition(":")
      if not sep:
        raise ValueError(f"{field}: {part!r} is not of the form 'name:class,class,...'")
      items.append((name.strip(), [m.strip() for m in members.split(",") if m.strip()]))
  else:
    items = [(str(name), list(members)) for name, members in spec.items()]
  names, classes = [], []
  for name, members in items:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in names:
      raise ValueError(
        f"{field}: task name {name!r} is empty, repeated or not "
        "made of letters, digits, '_', '.', '-' (it names files)"
      )
    if not members:
      raise ValueError(f"{field}: task {name!r} is empty; give it at least one class")
    names.append(name)
    classes.append(parse_classes(members, class_names, field, name))
  return tuple(names), tuple(classes)


def parse_classes(
  members: str | Sequence[int | str],
  class_names: Sequence[str],
  field: str,
  task: str | None = None,
) -> tuple[int, ...]:
  """Sorted distinct class indices of ``members`` ('3,8' or a list; indices or class names).

  Errors name ``field`` (and ``task``), the bad value and the valid classes.
  """
  if isinstance(members, str):
    members = [m.strip() for m in members.split(",") if m.strip()]
  if not members:
    raise ValueError(f"{field}: no class given; give class indices or names")
  owner = f" of task {task!r}" if task else ""
  indices = set()
  for member in members:
    if isinstance(member, (int, np.integer)) or str(member).lstrip("-").isdigit():
      c = int(member)
    elif member in class_names:
      c = list(class_names).index(member)
    else:
      raise ValueError(
        f"{field}: class {member!r}{owner} is neither an index nor one of the "
        f"class names {tuple(class_names)}"
      )
    if not 0 <= c < len(class_names):
      raise ValueError(
        f"{field}: class {c}{owner} is outside the dataset's classes 0..{len(class_names) - 1}"
      )
    indices.add(c)
  return tuple(sorted(indices))


def load_digits(levels: int, val_fraction: float, test_fraction: float, seed: int) -> TaskData:
  """scikit-learn's bundled 8x8 digits (1797 images, values 0..16), no download or TFDS."""
  from sklearn.datasets import load_digits as sk_load_digits

  digits = sk_load_digits()
  images = digits.images.reshape(-1, 8, 8, 1)
  labels = digits.target.astype(np.int32)
  tokens = quantise(images, 16.0, levels).reshape(len(images), -1)
  train, val, test = split_per_class(labels, val_fraction, test_fraction, seed)
  names = tuple(str(c) for c in range(10))
  return TaskData(
    name="digits",
    image_shape=(8, 8, 1),
    levels=levels,
    class_names=names,
    task_names=names,
    task_classes=tuple((c,) for c in range(10)),
    train=Split(tokens[train], labels[train]),
    val=Split(tokens[val], labels[val]),
    test=Split(tokens[test], labels[test]),
  )


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
  factor = cfg.get("downsample", 1)
  h, w, c = source.image_shape
  if h % factor or w % factor:
    raise ValueError(
      f"config.data.downsample={factor} does not divide {source.name}'s image size {h}x{w}"
    )
  tokens, labels = _read_all(source.train, cfg.levels, source.max_value, factor, source.image_shape)
  if source.test is None:
    train, val, test = split_per_class(labels, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    test_split = Split(tokens[test], labels[test])
  else:
    train, val, _ = split_per_class(labels, cfg.val_fraction, 0.0, cfg.split_seed)
    test_split = Split(
      *_read_all(source.test, cfg.levels, source.max_value, factor, source.image_shape)
    )
  task_names, task_classes = parse_tasks(cfg.get("tasks", ""), source.class_names)
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
    train_records=Records(
      source.train, train.astype(np.int64), source.max_value, factor, cfg.levels
    ),
  )
  for split_name in ("train", "val", "test"):
    for name, pool in zip(task_names, data.task_indices(getattr(data, split_name)), strict=True):
      if not len(pool):
        raise ValueError(
          f"task {name!r} of dataset {source.name!r} has no examples in the "
          f"{split_name} split; check config.data.tasks and the data's labels"
        )
  return data


def load(cfg) -> TaskData:
  """The dataset named by ``cfg.name`` (a ``config.data`` ConfigDict), tokenised."""
  from projectable import sources

  return tokenise(sources.open_source(cfg), cfg)


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
      part = pool[c * chunk : (c + 1) * chunk]
      tokens[t, : len(part)] = split.tokens[part]
      mask[t, : len(part)] = 1.0
    chunks.append({"tokens": tokens, "mask": mask})
  return chunks
