"""Export (launch/export.py), TFLite conversion and on-device decoding, launch/sample.py."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import app
from PIL import Image

from projectable import data
from projectable.core import decode, model, projector, sampling
from projectable.specialists import emission, export, images, tflite
from projectable.specialists.artifact import load_specialist, save_specialist
from projectable.training import restore


@pytest.fixture(scope="module")
def workdir(finished_tiny_run):
  """A tiny projectable digits run (the worker's shared one: read, never written here)."""
  return finished_tiny_run[0]


@pytest.fixture(scope="module")
def metrics(workdir):
  with open(os.path.join(workdir, "eval", "metrics.json")) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def exported(workdir, tmp_path_factory):
  """(out dir, summary) of every task exported from the best weights."""
  out = str(tmp_path_factory.mktemp("export"))
  return out, export.export(workdir, out)


@pytest.fixture(scope="module")
def digits_data(workdir):
  """The run's data: digits, one task per class."""
  return data.load(restore.read_config(workdir).data)


@pytest.fixture(scope="module")
def digit3_test_tokens(digits_data):
  """The digits test images of task '3' as tokens."""
  split = digits_data.test
  return split.tokens[split.labels == 3]


def test_export_round_trip_matches_training(exported, metrics, digit3_test_tokens):
  out, summary = exported
  per_task = metrics["bits_per_dim"]["per_task"]
  assert summary["tasks"] == list(per_task) and summary["step"] == metrics["step"]
  assert summary["emit_seconds"] < 1.0
  for task, bpd in per_task.items():
    _, meta = load_specialist(os.path.join(out, task))
    assert abs(meta["test_bits_per_dim"] - bpd) < 1e-5
    assert meta["source_step"] == metrics["step"] and meta["source_weights"] == "best"
  specialist, meta = load_specialist(os.path.join(out, "3"))
  expected = {
    "dataset": "digits",
    "image_shape": [8, 8, 1],
    "levels": 17,
    "task": "3",
    "task_classes": [3],
    "class_names": ["3"],
    "mode": "projectable",
  }
  assert {k: meta[k] for k in expected} == expected
  measured = float(specialist.bits_per_dim(digit3_test_tokens).mean())
  assert abs(measured - per_task["3"]) < 1e-5


def test_cli_exports_exactly_the_chosen_tasks_of_a_step(workdir, tmp_path, capsys, run_launcher):
  out = str(tmp_path / "out")
  run_launcher("export", [f"--workdir={workdir}", f"--out={out}", "--tasks=3,0", "--step=3"])
  assert sorted(os.listdir(out)) == ["0", "3"]
  _, meta = load_specialist(os.path.join(out, "3"))
  assert meta["source_step"] == 3 and meta["source_weights"] == "checkpoint"
  assert "emitted 2 specialists in" in capsys.readouterr().out


def test_unknown_task_lists_the_valid_ones(workdir, tmp_path):
  with pytest.raises(ValueError, match=r"unknown task 'seven'; valid tasks: 0, 1, 2, .*, 9"):
    export.export(workdir, str(tmp_path), tasks="3,seven")
  assert not os.listdir(tmp_path)


def test_nothing_is_overwritten_without_overwrite(workdir, exported):
  out, _ = exported
  before = os.path.getmtime(os.path.join(out, "3", "config.json"))
  with pytest.raises(FileExistsError, match=r"not overwriting .*3; pass --overwrite"):
    export.export(workdir, out, tasks="3")
  assert os.path.getmtime(os.path.join(out, "3", "config.json")) == before


@pytest.mark.parametrize(
  "case, match",
  [
    ("missing", "no workdir at"),
    ("no_config", "has no config.json"),
    ("no_checkpoints", "has no best-on-validation checkpoint"),
    ("unsaved_step", r"has no step 4; saved steps: \[3, 6\]"),
    ("source_mode", "mode 'source' has no specialists"),
  ],
)
def test_clear_errors(workdir, tmp_path, case, match):
  bad, step = str(tmp_path / "run"), None
  if case == "unsaved_step":
    bad, step = workdir, 4
  elif case != "missing":
    os.makedirs(bad)
  if case in ("no_checkpoints", "source_mode"):
    with open(os.path.join(workdir, "config.json")) as f:
      config = json.load(f)
    config["mode"] = "specialists" if case == "no_checkpoints" else "source"
    with open(os.path.join(bad, "config.json"), "w") as f:
      json.dump(config, f)
  with pytest.raises((FileNotFoundError, ValueError), match=match):
    export.export(bad, str(tmp_path / "out"), step=step)


def test_tflite_logits_match_jax(workdir, tmp_path, digit3_test_tokens):
  out = tmp_path / "tflite"
  os.makedirs(out / "3")
  (out / "3" / "notes.txt").write_text("kept")  # Overwriting keeps unrelated files.
  export.export(workdir, str(out), tasks="3", overwrite=True, fmt="tflite")
  assert sorted(os.listdir(out / "3")) == [
    "config.json",
    "model.tflite",
    "notes.txt",
    "params",
    "saved_model",
  ]
  specialist, _ = load_specialist(str(out / "3"))
  path = str(out / "3" / tflite.TFLITE_FILE)
  assert tflite.signature_batch(path) == tflite.DEFAULT_BATCH == 8
  tokens = digit3_test_tokens[:10]  # Batched: one full batch of 8 and one padded.
  expected = np.asarray(specialist.logits(tokens))
  litert = tflite.litert_logits(path, tokens[:3])
  np.testing.assert_allclose(litert, expected[:3], atol=1e-4, rtol=0)
  batched = tflite.litert_batched_logits(path, tokens)
  np.testing.assert_allclose(batched, expected, atol=1e-4, rtol=0)
  stepped = tflite.litert_decode_logits(path, tokens[:8])
  np.testing.assert_allclose(stepped, expected[:8], atol=1e-4, rtol=0)
  # On-device sampling through the decode signature draws the exported specialist's JAX samples.
  for temperature in (0.0, 1.0):
    jax_tokens = np.asarray(specialist.sample(8, seed=5, temperature=temperature))
    litert_tokens = tflite.litert_sample(path, seed=5, temperature=temperature)
    np.testing.assert_array_equal(litert_tokens, jax_tokens)
  assert len(np.unique(litert_tokens)) > 3  # Real draws at temperature 1.


SHARP = model.ModelConfig(17, 64, 0, 16, 2, 32, 2)  # The tiny specialist's shape.


@pytest.fixture(scope="module")
def sharp_tflite(tmp_path_factory):
  """(params, model.tflite path) of random weights of scale ~1 (decisive logits), batch 3."""
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(lambda: model.init_params(SHARP, jax.random.key(0)))
  params = jax.tree_util.tree_map_with_path(
    lambda p, x: np.float32(rng.normal(float("scale" in jax.tree_util.keystr(p)), 0.5, x.shape)),
    shapes,
  )
  return params, tflite.convert(SHARP, params, str(tmp_path_factory.mktemp("sharp")), batch=3)


def test_jax_decode_step_is_the_full_forward():
  params = model.init_params(SHARP, jax.random.key(1))
  tokens = np.random.default_rng(1).integers(0, 17, (2, 64), dtype=np.int32)
  stepped = decode.teacher_forced_logits(SHARP, params, tokens)
  np.testing.assert_allclose(stepped, model.apply(SHARP, params, tokens), atol=1e-5, rtol=0)


def test_tflite_decode_logits_match_jax_at_every_position(sharp_tflite):
  params, path = sharp_tflite
  tokens = np.random.default_rng(2).integers(0, 17, (3, 64), dtype=np.int32)
  expected = np.asarray(model.apply(SHARP, params, tokens))
  np.testing.assert_allclose(tflite.litert_decode_logits(path, tokens), expected, atol=1e-4, rtol=0)
  np.testing.assert_allclose(
    tflite.litert_batched_logits(path, np.concatenate([tokens, tokens[:2]])),
    np.concatenate([expected, expected[:2]]),
    atol=1e-4,
    rtol=0,
  )


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_tflite_decode_sampling_matches_jax_sampling(sharp_tflite, temperature):
  params, path = sharp_tflite
  litert_tokens = tflite.litert_sample(path, seed=3, temperature=temperature)
  jax_tokens = sampling.sample(SHARP, params, 3, jax.random.key(3), temperature=temperature)
  np.testing.assert_array_equal(litert_tokens, np.asarray(jax_tokens))
  assert len(np.unique(litert_tokens)) > 3  # Real draws, not a constant sequence.


def test_tflite_of_a_bfloat16_specialist_computes_in_float32(tmp_path):
  """LiteRT has no bfloat16 kernels: the flatbuffer runs the float32 model's products."""
  bf16 = model.ModelConfig(17, 64, 0, 16, 2, 32, 2, compute_dtype="bfloat16")
  params = model.init_params(bf16, jax.random.key(0))
  path = tflite.convert(bf16, params, str(tmp_path))
  tokens = np.random.default_rng(0).integers(0, 17, (2, 64), dtype=np.int32)
  f32 = model.apply(dataclasses.replace(bf16, compute_dtype="float32"), params, tokens)
  np.testing.assert_allclose(tflite.litert_logits(path, tokens), f32, atol=1e-4, rtol=0)


@pytest.mark.parametrize("source", ["specialist", "workdir"])
def test_sample_writes_a_grid(workdir, exported, tmp_path, source, run_launcher):
  grid = str(tmp_path / "grid.png")
  args = (
    [f"--specialist={os.path.join(exported[0], '3')}"]
    if source == "specialist"
    else [f"--workdir={workdir}", "--task=3"]
  )
  run_launcher("sample", [*args, "--num=6", f"--out={grid}", "--seed=1", "--temperature=0.9"])
  with Image.open(grid) as image:
    assert image.format == "PNG"
    assert image.size == images.grid_size(6, 8, 8, cols=3, scale=8)


def test_sample_needs_one_model(tmp_path, run_launcher):
  with pytest.raises(app.UsageError, match="exactly one of --specialist or --workdir"):
    run_launcher("sample", [f"--out={tmp_path / 'g.png'}"])
  with pytest.raises(app.UsageError, match="--workdir needs --task"):
    run_launcher("sample", [f"--workdir={tmp_path}", f"--out={tmp_path / 'g.png'}"])


def _test_tokens(split: data.Split, classes: list[int]) -> np.ndarray:
  return split.tokens[np.isin(split.labels, classes)]


def test_unseen_class_set_is_projected_with_its_descriptor(
  workdir, exported, digits_data, tmp_path
):
  out = str(tmp_path / "out")
  summary = export.export(workdir, out, tasks="3;pair38:8,3")
  assert summary["tasks"] == ["3", "pair38"]
  specialist, meta = load_specialist(os.path.join(out, "pair38"))
  assert (meta["task"], meta["task_classes"], meta["class_names"]) == ("pair38", [3, 8], ["3", "8"])
  run = restore.load_run(workdir)
  descriptor = np.isin(np.arange(10), [3, 8]) / 2.0
  weights = projector.project(run.params["source"], run.params["projector"], descriptor)
  tokens = _test_tokens(digits_data.test, [3, 8])
  logits = np.asarray(specialist.logits(tokens))
  np.testing.assert_allclose(logits, model.apply(run.method.small, weights, tokens), atol=1e-5)
  digit3, _ = load_specialist(os.path.join(exported[0], "3"))
  assert np.abs(logits - np.asarray(digit3.logits(tokens))).max() > 1e-3
  measured = float(specialist.bits_per_dim(tokens).mean())
  assert abs(meta["test_bits_per_dim"] - measured) < 1e-5


def test_a_class_set_gets_the_descriptor_of_a_training_task_of_its_classes(workdir, digits_data):
  config, per_class = restore.read_config(workdir), digits_data
  extended, ids = export.select_tasks("all;pair38:8,3;odd:1,3,5,7,9", per_class)
  assert ids == list(range(12)) and extended.task_names[10:] == ("pair38", "odd")
  config.data.tasks = "pair38:3,8;odd:1,3,5,7,9"
  trained = data.load(config.data)
  np.testing.assert_array_equal(extended.task_descriptors()[10:], trained.task_descriptors())
  np.testing.assert_array_equal(extended.task_descriptors()[:10], per_class.task_descriptors())
  for got, want in zip(
    extended.task_indices(extended.test)[10:], trained.task_indices(trained.test), strict=True
  ):
    np.testing.assert_array_equal(got, want)
  assert export.select_tasks("3,0;p:1", per_class)[1] == [3, 0, 10]


@pytest.mark.parametrize(
  "tasks, match",
  [
    ("pair:3,12", r"--tasks: class 12 of task 'pair' is outside the dataset's classes 0\.\.9"),
    ("pair:3,-1", r"class -1 of task 'pair' is outside the dataset's classes 0\.\.9"),
    ("pair:3,eight", "class 'eight' of task 'pair' is neither an index nor one of the class"),
    ("pair:", "task 'pair' is empty"),
    ("3:3,8", r"class set name\(s\) \['3'\] already name training tasks"),
    ("pair38=3,8", r"unknown task 'pair38=3'; .* or a class set 'name:class,class,\.\.\.'"),
  ],
)
def test_bad_class_sets_raise_clear_errors(digits_data, tasks, match):
  with pytest.raises(ValueError, match=match):
    export.select_tasks(tasks, digits_data)


def test_a_bad_class_set_writes_nothing(workdir, tmp_path):
  with pytest.raises(ValueError, match="class 12 of task 'pair' is outside"):
    export.export(workdir, str(tmp_path), tasks="3;pair:3,12")
  assert not os.listdir(tmp_path)


def test_class_sets_need_a_projectable_run(workdir, tmp_path):
  config = restore.read_config(workdir)
  config.mode = "specialists"
  os.makedirs(tmp_path / "run")
  (tmp_path / "run" / "config.json").write_text(config.to_json())
  with pytest.raises(ValueError, match="names a class set, which only a projectable run can"):
    export.export(str(tmp_path / "run"), str(tmp_path / "out"), tasks="pair:3,8")


def test_evaluate_scores_a_specialist_on_any_class_set(
  workdir, exported, digits_data, tmp_path, capsys, run_launcher
):
  path, out = os.path.join(exported[0], "3"), str(tmp_path / "scores.json")
  run_launcher(
    "evaluate", [f"--specialist={path}", f"--workdir={workdir}", "--classes=8,3", f"--out={out}"]
  )
  with open(out) as f:
    scores = json.load(f)
  assert "3 on test classes ['3', '8']" in capsys.readouterr().out
  tokens = _test_tokens(digits_data.test, [3, 8])
  specialist, meta = load_specialist(path)
  logits = np.asarray(specialist.logits(tokens), np.float64)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(log_probs, tokens[..., None], -1)[..., 0]
  assert scores["classes"] == [3, 8] and scores["num_images"] == len(tokens)
  assert abs(scores["bits_per_dim"] - nll.mean() / np.log(2)) < 1e-5
  assert abs(scores["per_class"]["3"]["bits_per_dim"] - meta["test_bits_per_dim"]) < 1e-6
  own = export.evaluate_specialist(path, restore.read_config(workdir))
  assert own["classes"] == [3] and abs(own["bits_per_dim"] - meta["test_bits_per_dim"]) < 1e-6


def test_evaluate_errors_name_the_bad_value(workdir, exported, run_launcher):
  path, config = os.path.join(exported[0], "3"), restore.read_config(workdir)
  with pytest.raises(ValueError, match=r"--classes: class 10 is outside the dataset's classes"):
    export.evaluate_specialist(path, config, "3,10")
  config.data.levels = 5
  with pytest.raises(ValueError, match=r"was made for data .*'levels': 17.*'levels': 5"):
    export.evaluate_specialist(path, config, "3")
  with pytest.raises(app.UsageError, match="exactly one of --workdir or --config"):
    run_launcher("evaluate", [f"--specialist={path}"])


def test_non_finite_specialists_are_refused_naming_their_tasks():
  nan_in_b = {"w": np.array([[1.0, 2.0], [np.nan, 0.0]], np.float32)}
  with pytest.raises(FloatingPointError, match=r"tasks \['b'\] have non-finite"):
    emission._check_finite(nan_in_b, {"a": 1.0, "b": 2.0}, ["a", "b"])
  finite = {"w": np.ones((2, 2), np.float32)}
  with pytest.raises(FloatingPointError, match=r"tasks \['a'\]"):
    emission._check_finite(finite, {"a": float("nan"), "b": 2.0}, ["a", "b"])
  emission._check_finite(finite, {"a": 1.0, "b": 2.0}, ["a", "b"])  # Nothing to refuse.


def test_evaluating_a_specialist_with_nan_weights_is_refused(workdir, exported, tmp_path):
  specialist, meta = load_specialist(os.path.join(exported[0], "3"))
  broken = jax.tree.map(lambda w: np.full(w.shape, np.nan, w.dtype), specialist.params)
  path = str(tmp_path / "nan")
  save_specialist(path, specialist.cfg, broken, meta)  # Saved as given: intact NaNs.
  with pytest.raises(FloatingPointError, match="non-finite bits/dim"):
    export.evaluate_specialist(path, restore.read_config(workdir))


def test_tensorflow_imports_without_its_native_start_up_notices():
  code = "from projectable.specialists import tflite; tflite._import_quietly('tensorflow')"
  quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert "oneDNN" not in quiet.stderr and "absl::InitializeLog" not in quiet.stderr, quiet.stderr
  # An import that fails still raises, and stderr (fd 2) is the same file afterwards.
  before = os.fstat(2)
  with pytest.raises(ModuleNotFoundError):
    tflite._import_quietly("no_such_module_here")
  after = os.fstat(2)
  assert (before.st_dev, before.st_ino) == (after.st_dev, after.st_ino)
