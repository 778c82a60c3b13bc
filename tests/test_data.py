"""Digits loading, quantisation, splits and task-grouped batches."""

import numpy as np

from projectable import data as data_lib
from projectable.data import pipeline


def test_digits_counts_shapes_and_disjoint_stratified_splits(load_digits):
  data = load_digits(0)
  n = len(data.train.labels) + len(data.val.labels) + len(data.test.labels)
  assert n == 1797
  assert data.train.tokens.shape[1] == data.seq_len == 64
  for split in (data.train, data.val, data.test):
    assert split.tokens.min() >= 0 and split.tokens.max() <= 16
    assert set(np.unique(split.labels)) == set(range(10))
  # Stratified: every class has about 20% of its images in test.
  counts = np.bincount(data.test.labels, minlength=10) / np.bincount(
    np.concatenate([data.train.labels, data.val.labels, data.test.labels]), minlength=10
  )
  np.testing.assert_allclose(counts, 0.2, atol=0.01)
  # The same seed gives the same split; a different one does not.
  again = load_digits(0)
  np.testing.assert_array_equal(again.test.tokens, data.test.tokens)
  other = load_digits(1)
  assert not np.array_equal(other.test.tokens, data.test.tokens)


def test_digits_tokens_are_the_raw_intensities_at_17_levels(load_digits):
  from sklearn.datasets import load_digits as sklearn_digits

  raw = sklearn_digits().images.reshape(-1, 64).astype(np.int32)
  data = load_digits(0)
  rows = {tuple(r) for r in raw}
  assert all(tuple(t) in rows for t in data.test.tokens[:50])


def test_quantise_is_exact_on_hand_made_values():
  images = np.array([[0, 8, 16], [4, 12, 2]], np.float32)
  np.testing.assert_array_equal(data_lib.quantise(images, 16.0, 17), images.astype(np.int32))
  np.testing.assert_array_equal(data_lib.quantise(images, 16.0, 3), [[0, 1, 2], [0, 2, 0]])


def test_batches_are_grouped_by_task_and_deterministic(load_digits):
  data = load_digits(0)
  batcher = pipeline.TaskBatch(data, batch_tasks=4, examples_per_task=5, seed=3)
  batch = batcher(7)
  assert batch["tokens"].shape == (4, 5, 64)
  lookup = {tuple(t): l for t, l in zip(data.train.tokens, data.train.labels, strict=False)}
  for m, task in enumerate(batch["task_id"]):
    labels = {lookup[tuple(t)] for t in batch["tokens"][m]}
    assert labels == {task}
    np.testing.assert_allclose(batch["task"][m], np.eye(10)[task])
  np.testing.assert_array_equal(batcher(7)["tokens"], batch["tokens"])
  assert not np.array_equal(batcher(8)["tokens"], batch["tokens"])


def test_eval_arrays_cover_each_tasks_split_once(load_digits):
  data = load_digits(0)
  chunks = data_lib.eval_arrays(data, data.test, chunk=16)
  total = sum(c["mask"].sum() for c in chunks)
  assert total == len(data.test.labels)
  per_task = sum(c["mask"].sum(1) for c in chunks)
  np.testing.assert_array_equal(per_task, np.bincount(data.test.labels, minlength=10))
