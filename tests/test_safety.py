"""Workdir safety: damaged checkpoints are named and set aside on request, incompatible
restarts are refused, non-finite steps stop or are skipped, a cluster job without its
accelerator's JAX refuses to start. SIGTERM and SIGKILL: test_safety_signals.py."""

import glob
import json
import logging
import os
import re
import resource
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from projectable.experiments.run import train_and_evaluate
from projectable.training import checkpoints, distributed, loop, step_log, workdir_guard
from projectable.training.restore import restore_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_restart_with_an_incompatible_config_is_refused_with_a_diff(
  tiny_config, tmp_path, trained_tiny_run
):
  workdir = str(tmp_path)  # A finished tiny_config run.
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  tiny_config.small.d = 8
  tiny_config.mode = "universal"
  with pytest.raises(ValueError, match=r"(?s)mode: workdir has 'projectable'.*small\.d.*--fresh"):
    train_and_evaluate(tiny_config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


def test_non_finite_loss_stops_with_the_step_and_keeps_good_checkpoints(
  tiny_config, tmp_path, trained_tiny_run
):
  workdir = str(tmp_path)  # A finished tiny_config run.
  tiny_config.train.num_steps = 12
  tiny_config.train.learning_rate = 1e7  # Diverges at once.
  with pytest.raises(step_log.Diverged, match=r"non-finite \w+=\S+ at step (7|8|9)\b") as stop:
    train_and_evaluate(tiny_config, workdir)
  assert stop.value.step in (7, 8, 9)  # What a sweep records (arms.DIVERGED).
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  assert steps == [3, 6]
  _, params, _ = restore_params(tiny_config, workdir, step=6)
  assert all(np.isfinite(p).all() for p in jax.tree.leaves(params))


def test_damaged_latest_checkpoint_is_named_and_an_older_step_can_be_resumed(
  tiny_config, tmp_path, trained_tiny_run, saved_states
):
  workdir = str(tmp_path)  # A finished tiny_config run: checkpoints at steps 3 and 6.
  intact = saved_states(tiny_config, workdir, [6])[6]
  step6 = os.path.join(workdir, "checkpoints", "6")
  # The largest array data file Orbax wrote for the state, cut in half.
  damaged = max(
    glob.glob(os.path.join(step6, "state", "**", "d", "*"), recursive=True), key=os.path.getsize
  )
  size = os.path.getsize(damaged)
  os.truncate(damaged, size // 2)
  with pytest.raises(
    checkpoints.DamagedCheckpointError,
    match=rf"(?s)checkpoint step 6 at {re.escape(step6)} is damaged.*available steps: \[3\]\..*"
    r"--config\.restore_step=3",
  ):
    train_and_evaluate(tiny_config, workdir)
  tiny_config.restore_step = 5
  with pytest.raises(ValueError, match=r"restore_step=5: .* available steps: \[3, 6\]"):
    train_and_evaluate(tiny_config, workdir)
  tiny_config.restore_step = 3
  train_and_evaluate(tiny_config, workdir)
  aside = os.path.join(workdir, checkpoints.SET_ASIDE, "6")
  assert os.path.getsize(os.path.join(aside, os.path.relpath(damaged, step6))) == size // 2
  retrained = saved_states(tiny_config, workdir, [6])[6]
  jax.tree.map(np.testing.assert_array_equal, intact, retrained)


def test_changed_bytes_in_a_checkpoint_fail_its_checksum(tmp_path, flip_middle_bytes):
  state = {"step": jnp.int32(3), "params": {"w": jnp.linspace(-1.0, 1.0, 4096)}}
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
  )
  ckpts = checkpoints.Checkpoints(str(tmp_path), keep=2)
  try:
    ckpts.save_state(3, state)
    ckpts.wait()
    np.testing.assert_array_equal(
      ckpts.restore_state(abstract)["params"]["w"], state["params"]["w"]
    )
  finally:
    ckpts.close()
  flip_middle_bytes(f"{tmp_path}/checkpoints/3/state")
  ckpts = checkpoints.Checkpoints(str(tmp_path), keep=2)
  try:
    with pytest.raises(checkpoints.DamagedCheckpointError, match=r"step 3 .*checksum.*--fresh"):
      ckpts.restore_state(abstract)
  finally:
    ckpts.close()


def _poison(monkeypatch, steps: tuple[int, ...]) -> None:
  """Makes the loss, and so the gradients, NaN at ``steps`` (found by their dropout key)."""
  make_method = loop.make_method

  def make_poisoned(config, data):
    method = make_method(config, data)
    loss = method.loss
    seed = jax.random.key(config.seed)
    bad = jnp.stack([jax.random.key_data(jax.random.fold_in(seed, s - 1)) for s in steps])

    def poisoned(params, batch, key):
      value, metrics = loss(params, batch, key)
      hit = jnp.any(jnp.all(bad == jax.random.key_data(key)[None], axis=1))
      return value * jnp.where(hit, jnp.nan, 1.0), metrics

    method.loss = poisoned
    return method

  monkeypatch.setattr(loop, "make_method", make_poisoned)


def test_skip_policy_leaves_the_state_unchanged_on_non_finite_steps(
  tiny_config, tmp_path, monkeypatch, caplog, saved_states
):
  workdir = str(tmp_path)
  _poison(monkeypatch, (2, 4, 5))
  tiny_config.train.update(
    nonfinite="skip", max_skipped_steps=3, checkpoint_every=1, keep_checkpoints=6
  )
  with caplog.at_level(logging.INFO, logger="absl"):
    train_and_evaluate(tiny_config, workdir)
  logged = dict(re.findall(r"step (\d)/\d+ .*skipped=(\d)", caplog.text))
  assert logged == {"1": "0", "2": "1", "3": "0", "4": "1", "5": "1", "6": "0"}
  states = saved_states(tiny_config, workdir, range(1, 7))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(states))
  for step in range(2, 7):
    assert states[step]["step"] == step
    for part in ("params", "opt_state"):
      same = jax.tree.leaves(
        jax.tree.map(np.array_equal, states[step - 1][part], states[step][part])
      )
      assert all(same) == (step in (2, 4, 5)), (step, part)


def test_skip_policy_stops_after_max_skipped_steps_in_a_row(tiny_config, tmp_path, monkeypatch):
  _poison(monkeypatch, (2, 4, 5))
  tiny_config.train.update(nonfinite="skip", max_skipped_steps=2)
  with pytest.raises(
    step_log.Diverged, match=r"2 consecutive steps up to step 5 .*loss=nan"
  ) as stop:
    train_and_evaluate(tiny_config, str(tmp_path))
  assert stop.value.step == 5


def test_a_job_that_needs_a_gpu_refuses_to_train_on_the_cpu(tmp_path, run_launcher):
  workdir = str(tmp_path / "run")
  argv = ["--config=configs/digits.py:tiny", f"--workdir={workdir}", "--require_platform=gpu"]
  with pytest.raises(RuntimeError, match=r"needs JAX's gpu backend but JAX runs on 'cpu'.*cuda12"):
    run_launcher("train", argv)
  assert not os.path.exists(workdir)
  distributed.require_platform("cpu")  # What this machine runs: no error.


def test_a_rewind_with_a_new_learning_rate_reports_the_new_trajectory(
  tiny_config, tmp_path, trained_tiny_run
):
  workdir = str(tmp_path)
  old = trained_tiny_run  # A finished tiny_config run: evaluations at steps 3 and 6.
  tiny_config.restore_step, tiny_config.train.learning_rate = 3, 0.01
  new = train_and_evaluate(tiny_config, workdir)  # Steps 4-6 again, at another rate.
  # The old run's best step after the target is kept aside, not taken for this run's.
  assert os.path.isdir(os.path.join(workdir, checkpoints.BEST_SET_ASIDE, str(old["step"])))
  assert new["step"] == new["final_step"]["step"] == 6
  assert new["bits_per_dim"]["mean"] == new["final_step"]["bits_per_dim"]["mean"]
  assert new["bits_per_dim"]["mean"] != old["bits_per_dim"]["mean"]
  _, params, _ = restore_params(tiny_config, workdir, step=6)
  _, best, _ = restore_params(tiny_config, workdir)
  jax.tree.map(np.testing.assert_array_equal, params, best)  # The best is the new step 6.
  with open(os.path.join(workdir, "eval", "metrics.json")) as f:
    assert json.load(f)["bits_per_dim"] == new["bits_per_dim"]
  for task, bpd in new["bits_per_dim"]["per_task"].items():  # Exports are the new run's.
    with open(os.path.join(workdir, "export", task, "config.json")) as f:
      assert json.load(f)["test_bits_per_dim"] == pytest.approx(bpd, abs=1e-4)


def test_flipped_bytes_in_the_best_weights_are_named_and_the_advice_works(
  tiny_config, tmp_path, flip_middle_bytes, trained_tiny_run
):
  workdir = str(tmp_path)  # A finished tiny_config run: state steps 3 and 6; the best at 6.
  best = os.path.join(workdir, "best", "6")
  flip_middle_bytes(f"{best}/params")
  with pytest.raises(
    checkpoints.DamagedCheckpointError,
    match=rf"best weights at {re.escape(best)} are damaged or incomplete \(.+\)\. .*restore_step=3",
  ):
    restore_params(tiny_config, workdir)
  tiny_config.restore_step = 3
  metrics = train_and_evaluate(tiny_config, workdir)  # The advice, followed.
  assert metrics["step"] == 6 and np.isfinite(metrics["bits_per_dim"]["mean"])
  assert os.path.isdir(os.path.join(workdir, checkpoints.BEST_SET_ASIDE, "6"))
  restore_params(tiny_config, workdir)  # Intact again.


def test_a_workdir_without_best_weights_says_why(tmp_path):
  ckpts = checkpoints.Checkpoints(str(tmp_path), keep=1)
  try:
    with pytest.raises(FileNotFoundError, match="no best weights: no evaluation has finished"):
      ckpts.restore_best_params({"w": jax.ShapeDtypeStruct((2,), jnp.float32)})
  finally:
    ckpts.close()


def _digits_npz(path, invert: bool = False, size: int = 8) -> str:
  from sklearn.datasets import load_digits as sklearn_digits

  raw = sklearn_digits()
  images = (raw.images * 15).astype(np.uint8)
  images = 255 - images if invert else images
  np.savez(path, image=np.tile(images, (1, size // 8, size // 8)), label=raw.target)
  return str(path)


def test_changed_data_under_the_same_path_is_refused_as_a_data_mismatch(tiny_config, tmp_path):
  path, workdir = str(tmp_path / "digits.npz"), str(tmp_path / "run")
  tiny_config.data.update(name="arrays", path=_digits_npz(path))
  train_and_evaluate(tiny_config, workdir)
  tiny_config.train.num_steps = 9  # Continue the run ...
  _digits_npz(path, invert=True)  # ... on other contents under the same path.
  with pytest.raises(workdir_guard.DataMismatchError, match=r"(?s)other data.*sha256.*--fresh"):
    train_and_evaluate(tiny_config, workdir)
  _digits_npz(path, size=16)  # Another image size: a data mismatch, not a damaged checkpoint.
  with pytest.raises(
    workdir_guard.DataMismatchError, match=r"image_shape.*\[8, 8, 1\].*\[16, 16, 1\]"
  ):
    train_and_evaluate(tiny_config, workdir)
  _digits_npz(path)  # The data it was trained on: it resumes.
  assert train_and_evaluate(tiny_config, workdir)["final_step"]["step"] == 9


def test_a_start_that_fails_before_its_first_checkpoint_leaves_no_config(tiny_config, tmp_path):
  workdir = str(tmp_path)
  tiny_config.init.source_workdir = str(tmp_path / "no_such_run")
  with pytest.raises(FileNotFoundError):
    train_and_evaluate(tiny_config, workdir)
  assert not os.path.exists(os.path.join(workdir, "config.json"))
  tiny_config.init.source_workdir = ""  # The corrected command is not refused.
  assert train_and_evaluate(tiny_config, workdir)["final_step"]["step"] == 6
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)[workdir_guard.DATA_KEY]["dataset"] == "digits"


def test_following_the_restore_step_advice_twice_does_not_loop(
  tiny_config, tmp_path, trained_tiny_run
):
  workdir = str(tmp_path)  # A finished tiny_config run: state steps 3 and 6.

  def damage_step_6() -> None:
    step6 = os.path.join(workdir, "checkpoints", "6")
    data_file = max(glob.glob(f"{step6}/state/**/d/*", recursive=True), key=os.path.getsize)
    os.truncate(data_file, os.path.getsize(data_file) // 2)

  tiny_config.restore_step = 3
  for _ in range(2):  # The same damage, the same advice, followed with the same command.
    damage_step_6()
    assert train_and_evaluate(tiny_config, workdir)["final_step"]["step"] == 6
  aside = sorted(os.listdir(os.path.join(workdir, checkpoints.SET_ASIDE)))
  assert aside == ["6", "6-1"]  # Both damaged steps kept, none deleted.


def test_a_failed_checkpoint_write_is_one_named_error_and_keeps_saved_steps(tmp_path):
  """A write that runs out of room (here a file-size limit, as a full disk) names the
  directory and the steps still intact, and those steps restore unchanged."""
  ckpts = checkpoints.Checkpoints(str(tmp_path), keep=3, clean=True)
  ones = {"w": jnp.ones((128, 128))}  # Compressed, it fits in any limit below.
  ckpts.save_state(1, ones)
  ckpts.wait()
  noise = {"w": jax.random.normal(jax.random.key(0), (128, 128))}  # Incompressible.
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # Writes then fail with EFBIG.
  try:
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    with pytest.raises(checkpoints.CheckpointWriteError, match=r"steps \[1\] are intact") as e:
      ckpts.save_state(2, noise)
      ckpts.wait()
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, previous)
  assert str(tmp_path / "checkpoints") in str(e.value) and "rerun" in str(e.value)
  assert ckpts.latest_step() == 1
  restored = ckpts.restore_state(jax.eval_shape(lambda: ones))
  np.testing.assert_array_equal(restored["w"], ones["w"])
