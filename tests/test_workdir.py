"""End to end on the tiny digits config: artifacts, resume, continuation; --fresh's workdir."""

import glob
import json
import os
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

from projectable.experiments.run import train_and_evaluate
from projectable.training import profiling, restore, workdir_guard, workdir_lock
from projectable.training.restore import restore_params


def test_train_writes_metrics_exports_and_samples(tmp_path, trained_tiny_run):
  workdir = str(tmp_path)
  metrics = trained_tiny_run  # What train_and_evaluate(tiny_config, workdir) returned.
  with open(os.path.join(workdir, "eval", "metrics.json")) as f:
    on_disk = json.load(f)
  assert on_disk == json.loads(json.dumps(metrics))
  assert on_disk["mode"] == "projectable" and on_disk["dataset"] == "digits"
  assert on_disk["step"] in (3, 6)  # Best of the two evaluations, chosen on validation.
  per_task = on_disk["bits_per_dim"]["per_task"]
  assert sorted(per_task) == [str(c) for c in range(10)]
  assert np.isclose(on_disk["bits_per_dim"]["mean"], np.mean(list(per_task.values())))
  assert 0 < on_disk["bits_per_dim"]["mean"] < np.log2(17) + 0.5
  assert on_disk["num_params"]["small"] < on_disk["num_params"]["source"]
  for task in per_task:
    assert os.path.exists(os.path.join(workdir, "export", task, "config.json"))
    with Image.open(os.path.join(workdir, "samples", f"{task}.png")) as image:
      assert image.format == "PNG"
  assert os.path.exists(os.path.join(workdir, "eval", "bits_per_dim.png"))
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))


def _traces(workdir: str) -> list[str]:
  return glob.glob(os.path.join(workdir, "plugins", "profile", "*", "*.xplane.pb"))


def test_profile_steps_traces_train_steps_for_tensorboard(tmp_path, tiny_config):
  tiny_config.train.profile_steps = 2  # Steps 4 and 5 of 6.
  train_and_evaluate(tiny_config, str(tmp_path))
  (trace,) = _traces(str(tmp_path))
  with open(trace, "rb") as f:
    assert b"jit__train_step" in f.read()


def test_a_trace_the_run_outlives_is_still_written(tmp_path):
  trace = profiling.StepTrace(str(tmp_path), start_step=0, num_steps=100)
  double = jax.jit(lambda x: 2 * x)
  x = jax.numpy.ones(3)
  with trace:
    for step in range(1, 6):
      trace.before(step, x)
      x = double(x)
      trace.after(step, x)
  assert len(_traces(str(tmp_path))) == 1


def test_resume_after_interruption_equals_straight_training(
  tmp_path, tiny_config, trained_tiny_run
):
  straight, resumed = str(tmp_path), str(tmp_path) + "-resumed"  # A finished run, copied.
  shutil.copytree(straight, resumed)  # Training is deterministic: as a second run would be.
  # Simulate a crash after the step-3 checkpoint: drop everything written later.
  shutil.rmtree(os.path.join(resumed, "checkpoints", "6"))
  shutil.rmtree(os.path.join(resumed, "best"))
  metrics = train_and_evaluate(tiny_config, resumed)
  _, params_straight, _ = restore_params(tiny_config, straight, step=6)
  _, params_resumed, _ = restore_params(tiny_config, resumed, step=6)
  jax.tree.map(np.testing.assert_array_equal, params_straight, params_resumed)
  with open(os.path.join(straight, "eval", "metrics.json")) as f:
    assert json.load(f)["bits_per_dim"] == metrics["bits_per_dim"]


def test_more_steps_continue_a_finished_run(tmp_path, tiny_config, trained_tiny_run):
  workdir = str(tmp_path)  # A finished tiny_config run.
  _, before, _ = restore_params(tiny_config, workdir, step=6)
  tiny_config.train.num_steps = 9
  metrics = train_and_evaluate(tiny_config, workdir)
  assert metrics["final_step"]["step"] == 9
  _, after, _ = restore_params(tiny_config, workdir, step=9)
  assert any(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)), before, after)))


def test_fresh_trains_in_the_first_workdir_holding_no_run(tmp_path):
  # launch/train.py --fresh itself is exercised by test_safety's SIGKILL test.
  base = tmp_path / "run"
  assert workdir_guard.fresh_workdir(str(base)) == str(base)  # Claimed: created and locked.
  assert base.is_dir()
  (base / "notes.txt").write_text("not a run")
  assert workdir_guard.fresh_workdir(str(base)) == str(base)
  (base / "config.json").write_text("{}")
  (tmp_path / "run-1" / "checkpoints").mkdir(parents=True)
  (tmp_path / "run-2").mkdir()
  assert workdir_guard.fresh_workdir(f"{base}/") == str(tmp_path / "run-2")
  assert sorted(os.listdir(base)) == [workdir_lock.LOCK_FILE, "config.json", "notes.txt"]
  assert os.listdir(tmp_path / "run-1") == ["checkpoints"]


def test_fields_added_after_a_run_was_written_compare_as_their_defaults(tmp_path, tiny_config):
  """A workdir written before ``distill`` existed resumes and exports; a real difference is
  refused."""
  workdir = str(tmp_path)
  os.makedirs(os.path.join(workdir, "checkpoints"))
  saved = json.loads(tiny_config.to_json_best_effort())
  del saved["distill"], saved["train"]["unroll_layers"]
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(saved, f)
  workdir_guard.check_compatible(tiny_config, workdir)
  # The export and evaluation tools read the old config with the same defaults.
  read = restore.read_config(workdir)
  assert (read.distill.weight, read.train.unroll_layers) == (0.0, True)
  tiny_config.distill.weight = 0.5
  with pytest.raises(ValueError, match=r"distill\.weight: workdir has 0\.0, config has 0\.5"):
    workdir_guard.check_compatible(tiny_config, workdir)
