"""The grain training pipeline: task grouping, host slices, determinism, checkpointed resume."""

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from projectable import data as data_lib
from projectable.data import pipeline
from projectable.training import checkpoints, sharding
from projectable.training import config as config_lib


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> data_lib.TaskData:
  cfg = config_lib.base_config().data
  cfg.tfds_data_dir = str(tmp_path_factory.mktemp("tensorflow_datasets"))
  cfg.tasks = "low:0,1,2,3,4;high:5,6,7,8,9;odd:1,3,5,7,9;zero:0"  # Overlapping unions.
  return data_lib.load(cfg)


def assert_same_batch(a: dict, b: dict) -> None:
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])


def test_batches_are_grouped_by_task_and_read_from_the_source(digits):
  make = pipeline.TaskBatch(
    digits, batch_tasks=4, examples_per_task=6, seed=1, process_index=0, process_count=1
  )
  batch = make(3)
  assert batch["tokens"].shape == (4, 6, 64) and batch["tokens"].dtype == np.int32
  np.testing.assert_array_equal(batch["task_id"], np.arange(4))
  np.testing.assert_allclose(batch["task"], digits.task_descriptors())
  positions = make.positions(3)
  np.testing.assert_array_equal(batch["tokens"], digits.train.tokens[positions])
  for m, classes in enumerate(digits.task_classes):
    assert set(digits.train.labels[positions[m]]) <= set(classes)
  assert_same_batch(make(3), batch)
  assert not np.array_equal(make(4)["tokens"], batch["tokens"])


def test_each_epoch_of_a_task_visits_its_examples_once(digits):
  make = pipeline.TaskBatch(digits, 4, 6, seed=0, process_index=0, process_count=1)
  pool = make.pools[3]  # Task 'zero': about 125 images.
  steps = -(-2 * len(pool) // 6)
  stream = np.concatenate([make.block(3, s) for s in range(steps)])
  assert sorted(stream[: len(pool)]) == sorted(pool)
  assert sorted(stream[len(pool) : 2 * len(pool)]) == sorted(pool)
  assert not np.array_equal(stream[: len(pool)], stream[len(pool) : 2 * len(pool)])


def test_task_subsets_are_seeded_and_shared_by_hosts(digits):
  hosts = [
    pipeline.TaskBatch(digits, 2, 6, seed=5, process_index=p, process_count=2) for p in range(2)
  ]
  chosen = [tuple(hosts[0].tasks(s)) for s in range(20)]
  assert len(set(chosen)) > 1 and all(len(set(c)) == 2 for c in chosen)
  for s in range(20):
    a, b = hosts[0](s), hosts[1](s)
    np.testing.assert_array_equal(a["task_id"], b["task_id"])
    assert a["tokens"].shape == (2, 3, 64)


def test_host_slices_are_disjoint_and_cover_the_train_split(digits):
  n = len(digits.train.labels)
  rows = [pipeline.host_rows(n, p, 2) for p in range(2)]
  assert not set(rows[0]) & set(rows[1])
  np.testing.assert_array_equal(np.sort(np.concatenate(rows)), np.arange(n))
  hosts = [
    pipeline.TaskBatch(digits, 4, 6, seed=0, process_index=p, process_count=2) for p in range(2)
  ]
  seen = [set(), set()]
  for p, host in enumerate(hosts):
    for s in range(120):  # 3 per task per step: over an epoch of every task's slice (~315).
      seen[p] |= set(host.positions(s).reshape(-1))
    assert seen[p] <= set(rows[p])
  assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(n))
  with pytest.raises(ValueError, match="process_index=2"):
    pipeline.host_rows(n, 2, 2)
  with pytest.raises(ValueError, match="not divisible by the 4 processes"):
    pipeline.TaskBatch(digits, 4, 6, seed=0, process_index=0, process_count=4)
  with pytest.raises(ValueError, match="batch_tasks=5"):
    pipeline.TaskBatch(digits, 5, 6, seed=0, process_index=0, process_count=1)


def test_iterator_resumes_from_its_state(digits):
  it = pipeline.train_iterator(digits, 3, 4, seed=2, process_index=0, process_count=1)
  for _ in range(5):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  again = pipeline.train_iterator(digits, 3, 4, seed=2, process_index=0, process_count=1)
  again.set_state(state)
  for a, b in zip(expected, [next(again) for _ in range(3)], strict=True):
    assert_same_batch(a, b)
  unthreaded = pipeline.train_iterator(digits, 3, 4, seed=2, num_threads=0)
  for _ in range(5):
    next(unthreaded)
  assert_same_batch(next(unthreaded), expected[0])


def test_iterator_state_saves_and_restores_with_orbax(digits, tmp_path):
  ckpts = checkpoints.Checkpoints(str(tmp_path), keep=2)
  try:
    it = pipeline.train_iterator(digits, 4, 4, seed=0)
    for _ in range(7):
      next(it)
    state = {"step": np.int32(7)}
    ckpts.state.save(
      7,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(it)
      ),
    )
    expected = [next(it) for _ in range(2)]  # Advancing while the save finishes is safe.
    ckpts.wait()
    fresh = pipeline.train_iterator(digits, 4, 4, seed=0)
    restored = ckpts.state.restore(
      7,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(jax.eval_shape(lambda: state)),
        data=grain.checkpoint.CheckpointRestore(fresh),
      ),
    )
    assert int(restored.state["step"]) == 7 and fresh.get_state() == {"next_index": 7}
    for a, b in zip(expected, [next(fresh) for _ in range(2)], strict=True):
      assert_same_batch(a, b)
  finally:
    ckpts.close()


def test_in_memory_task_data_and_placement_on_the_data_axis(load_digits):
  data = load_digits()
  batch = next(pipeline.train_iterator(data, 10, 8, seed=0))
  assert batch["tokens"].shape == (10, 8, 64)
  for m, task in enumerate(batch["task_id"]):
    lookup = {tuple(t) for t in data.train.tokens[data.train.labels == task]}
    assert all(tuple(t) in lookup for t in batch["tokens"][m])
  mesh = sharding.make_mesh("data:4,model:1")
  shardings = {
    "tokens": NamedSharding(mesh, PartitionSpec(None, "data", None)),
    "task_id": sharding.replicated(mesh),
    "task": sharding.replicated(mesh),
  }
  placed = pipeline.place(batch, shardings)
  for k in batch:
    assert placed[k].sharding == shardings[k]
    np.testing.assert_array_equal(np.asarray(placed[k]), batch[k])
