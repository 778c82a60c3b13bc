"""The training input pipeline: task-grouped batches of the tokenised train split, with grain.

Each host takes only its own slice of the train split (positions
``process_index::process_count``). Per task, the host's positions whose class is
in the task form an endless stream, shuffled anew every epoch by a permutation
seeded with (seed, task, epoch) and cut into blocks of ``examples_per_task //
process_count``; step s's batch takes the s-th block of each of its tasks (all
tasks, or a subset drawn from (seed, s) that is the same on every host) and
gathers those examples' tokens. (numpy permutations, not
grain's ``shuffle``: its index_shuffle costs ~0.3 ms per element on pools of a
hundred.) Batches are a grain ``MapDataset`` over steps, so the iterator's state is
grain's ``{"next_index": steps taken}``: save it with
``grain.checkpoint.CheckpointSave(iterator)`` in the Orbax checkpoint and
restore it with ``grain.checkpoint.CheckpointRestore(iterator)``. A host's batch
is {"tokens": (M, N / P, L) int32, "task_id": (M,) int32, "task": (M, C)
float32}; ``place`` assembles the hosts' parts into global arrays (M, N, L).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping

import grain
import jax
import numpy as np

from projectable.data.records import TaskData


def host_rows(num_examples: int, process_index: int, process_count: int) -> np.ndarray:
  """This host's positions in a split: ``process_index::process_count`` (disjoint, covering)."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, {process_count})")
  return np.arange(num_examples)[process_index::process_count]


def check_batch_tasks(batch_tasks: int, data: TaskData) -> None:
  """Raises unless a batch of ``batch_tasks`` tasks can be drawn from ``data``'s tasks."""
  if not 0 < batch_tasks <= data.num_tasks:
    raise ValueError(
      f"config.train.batch_tasks={batch_tasks} must be in [1, {data.num_tasks}], the "
      f"number of tasks of dataset {data.name!r}"
    )


class TaskBatch:
  """step -> this host's task-grouped batch (a pure function of the step).

  The batches ``train_iterator`` yields; called directly (one process by default), it is
  the same input path without grain's threads, for tests and benchmarks.
  """

  def __init__(
    self,
    data: TaskData,
    batch_tasks: int,
    examples_per_task: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
  ):
    check_batch_tasks(batch_tasks, data)
    if examples_per_task % process_count:
      raise ValueError(
        f"examples_per_task={examples_per_task} is not divisible by the {process_count} processes"
      )
    self.data, self.batch_tasks, self.seed = data, batch_tasks, seed
    self.local_examples = examples_per_task // process_count
    self.rows = host_rows(len(data.train.labels), process_index, process_count)
    local = data.train.labels[self.rows]
    self.pools = []
    for name, classes in zip(data.task_names, data.task_classes, strict=True):
      self.pools.append(self.rows[np.isin(local, classes)])
      if not len(self.pools[-1]):
        raise ValueError(
          f"task {name!r} has no training examples on process {process_index} of {process_count}"
        )
    self.descriptors = data.task_descriptors()
    self._permutation = functools.lru_cache(maxsize=4 * data.num_tasks)(self._permute)

  def _permute(self, task: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, task, epoch]).permutation(len(self.pools[task]))

  def block(self, task: int, step: int) -> np.ndarray:
    """(N / P,) positions: elements [step * N / P, (step + 1) * N / P) of ``task``'s stream."""
    pool, k = self.pools[task], self.local_examples
    epochs, within = np.divmod(np.arange(step * k, (step + 1) * k), len(pool))
    out = np.empty(k, np.int64)
    for epoch in np.unique(epochs):
      here = epochs == epoch
      out[here] = pool[self._permutation(task, int(epoch))[within[here]]]
    return out

  def tasks(self, step: int) -> np.ndarray:
    """The tasks of step ``step``'s batch (sorted; the same on every host)."""
    if self.batch_tasks == self.data.num_tasks:
      return np.arange(self.batch_tasks)
    rng = np.random.default_rng([self.seed, step])
    return np.sort(rng.choice(self.data.num_tasks, self.batch_tasks, replace=False))

  def positions(self, step: int, tasks: np.ndarray | None = None) -> np.ndarray:
    """(M, N / P) train-split positions of step ``step``'s examples on this host."""
    tasks = self.tasks(step) if tasks is None else tasks
    return np.stack([self.block(int(t), step) for t in tasks])

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    tasks = self.tasks(step)
    positions = self.positions(step, tasks)
    return {
      "tokens": self.data.train.tokens[positions],  # (M, N / P, L)
      "task_id": tasks.astype(np.int32),  # (M,)
      "task": self.descriptors[tasks],  # (M, C)
    }


def train_dataset(
  data: TaskData,
  batch_tasks: int,
  examples_per_task: int,
  seed: int,
  *,
  process_index: int | None = None,
  process_count: int | None = None,
) -> grain.MapDataset:
  """The endless grain ``MapDataset`` of this host's batches; element s is step s's batch."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  make = TaskBatch(data, batch_tasks, examples_per_task, seed, process_index, process_count)
  return grain.MapDataset.range(sys.maxsize).map(make)


def train_iterator(
  data: TaskData,
  batch_tasks: int,
  examples_per_task: int,
  seed: int,
  *,
  process_index: int | None = None,
  process_count: int | None = None,
  num_threads: int = 2,
  prefetch: int = 4,
) -> grain.DatasetIterator:
  """A checkpointable iterator over this host's batches (``get_state``/``set_state``).

  ``num_threads`` threads build up to ``prefetch`` batches ahead (0 threads:
  build each batch on ``next``).
  """
  ds = train_dataset(
    data,
    batch_tasks,
    examples_per_task,
    seed,
    process_index=process_index,
    process_count=process_count,
  )
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  return iter(ds.to_iter_dataset(options))


def place(
  batch: Mapping[str, np.ndarray], shardings: Mapping[str, jax.sharding.Sharding]
) -> dict[str, jax.Array]:
  """Global arrays from every host's part of a batch (tokens split on N across hosts)."""
  return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in batch.items()}
