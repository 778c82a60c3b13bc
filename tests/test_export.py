"""One-shot export (launch/export.py), TFLite conversion and launch/sample.py on a tiny run."""

import importlib.util
import json
import os

import numpy as np
import pytest
from absl import app, flags
from PIL import Image

from configs import digits
from projectable import data, export, images, tflite, train
from projectable.specialist import load_specialist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A tiny projectable digits run, trained once for the module."""
  config = digits.get_config("tiny")
  config.mesh = "data:1,model:1"
  path = str(tmp_path_factory.mktemp("run"))
  train.train_and_evaluate(config, path)
  return path


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
def digit3_test_tokens(workdir):
  """The digits test images of task '3' as tokens."""
  split = data.load(export.read_config(workdir).data).test
  return split.tokens[split.labels == 3]


def run_launcher(name: str, argv: list[str]) -> None:
  """Runs ``launch/<name>.py``'s main in-process on ``argv``, then forgets its flags."""
  spec = importlib.util.spec_from_file_location(
    f"launch_{name}", os.path.join(ROOT, "launch", f"{name}.py")
  )
  module = importlib.util.module_from_spec(spec)
  known = set(flags.FLAGS)
  spec.loader.exec_module(module)
  try:
    module.main(flags.FLAGS([f"{name}.py", *argv]))
  finally:
    for flag in set(flags.FLAGS) - known:
      delattr(flags.FLAGS, flag)


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


def test_cli_exports_exactly_the_chosen_tasks_of_a_step(workdir, tmp_path, capsys):
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
  tokens = digit3_test_tokens[:8]
  litert = tflite.litert_logits(str(out / "3" / tflite.TFLITE_FILE), tokens)
  np.testing.assert_allclose(litert, np.asarray(specialist.logits(tokens)), atol=1e-4, rtol=0)


@pytest.mark.parametrize("source", ["specialist", "workdir"])
def test_sample_writes_a_grid(workdir, exported, tmp_path, source):
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


def test_sample_needs_one_model(tmp_path):
  with pytest.raises(app.UsageError, match="exactly one of --specialist or --workdir"):
    run_launcher("sample", [f"--out={tmp_path / 'g.png'}"])
  with pytest.raises(app.UsageError, match="--workdir needs --task"):
    run_launcher("sample", [f"--workdir={tmp_path}", f"--out={tmp_path / 'g.png'}"])
