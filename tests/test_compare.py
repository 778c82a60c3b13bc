"""The comparison command end to end on the tiny variant."""

import json
import logging
import os
import re

import pytest
from PIL import Image

from projectable import data as data_lib
from projectable.experiments import arms, compare
from projectable.training import validation

# One arm of each kind that trains: from scratch (projectable, universal), the source, its
# selection evaluated as is, a warm start from it and a distillation from it. The other arms
# differ from these only in their configs (checked for every arm below, with stand-in runs);
# test_frontier and test_tuning train them.
TRAINED_HERE = (
  "source",
  "projectable",
  "universal",
  "weight_selection",
  "weight_selection_ft",
  "universal_distill",
)


def test_compare_charges_each_arm_its_flops_and_reuses_finished_runs(tiny_config, tmp_path):
  workdir = str(tmp_path)
  # One evaluation and one sample per task per arm: compile and run only what reports need.
  tiny_config.train.update(eval_every=6, checkpoint_every=6)
  tiny_config.samples.num_per_task = 1
  result = compare.compare(tiny_config, workdir, [0], "flops", methods=TRAINED_HERE)
  with open(os.path.join(workdir, "comparison.json")) as f:
    on_disk = json.load(f)
  assert on_disk == json.loads(json.dumps(result))
  methods = on_disk["methods"]
  assert set(methods) == set(TRAINED_HERE)
  for method in methods.values():
    assert 0 < method["bits_per_dim"]["mean"] < 10
    assert len(method["bits_per_dim"]["per_task"]) == 10
  # Matched FLOPs: the cheaper small-model methods ran more steps than projectable.
  assert methods["universal"]["steps"] > methods["projectable"]["steps"]
  assert abs(methods["universal"]["train_flops"] / methods["projectable"]["train_flops"] - 1) < 0.1
  # Fine-tuning the selection and distilling are charged for the source they build on.
  for method in ("weight_selection_ft", "universal_distill"):
    own = methods[method]["train_flops"] - methods["source"]["train_flops"]
    assert abs(own / methods["projectable"]["train_flops"] - 1) < 0.1, method
  # Each distilled step also runs the teacher: fewer steps than the plain model at equal FLOPs.
  assert methods["universal_distill"]["steps"] < methods["universal"]["steps"]
  with Image.open(os.path.join(workdir, "comparison.png")) as image:
    assert image.format == "PNG"
  mtime = os.path.getmtime(os.path.join(workdir, "universal_seed0", "eval", "metrics.json"))
  again = compare.compare(tiny_config, workdir, seeds=[0], budget="flops", methods=("universal",))
  assert again["methods"]["universal"] == result["methods"]["universal"]
  assert os.path.getmtime(os.path.join(workdir, "universal_seed0", "eval", "metrics.json")) == mtime


def _stand_in_metrics(config, train_flops: float) -> dict:
  """What a finished run of ``config`` returns, without training: 2 bits/dim on every task."""
  return {
    "bits_per_dim": {"mean": 2.0, "per_task": {str(t): 2.0 for t in range(10)}},
    "num_params": {"small": 1},
    "train_flops": train_flops,
    "final_step": {"step": config.train.num_steps},
    "wall_s": 0.0,
  }


def test_every_arm_gets_a_valid_config_at_matched_flops_and_a_report_row(
  tiny_config, tmp_path, monkeypatch
):
  """Every arm through compare with stand-in runs: the configs they would train and the
  reports; each config is validated as a training run validates it."""
  data = data_lib.load(tiny_config.data)
  configs = {}

  def fake_run(config, workdir):
    validation.validate(config)
    configs[os.path.basename(workdir)] = config
    return _stand_in_metrics(config, config.train.num_steps * arms.step_flops(config, data))

  monkeypatch.setattr(arms, "run_arm", fake_run)
  monkeypatch.setattr(arms, "weight_selection", lambda *args: fake_run(tiny_config, "ws"))
  result = compare.compare(tiny_config, str(tmp_path), [0], "flops", methods=arms.ARMS)
  methods = result["methods"]
  assert set(methods) == set(arms.ARMS)
  budget = methods["projectable"]["train_flops"]
  for method in [m for m in arms.ARMS if m not in ("source", "weight_selection")]:
    own = methods[method]["train_flops"] - (
      methods["source"]["train_flops"] if method in arms.FROM_SOURCE else 0
    )
    assert abs(own / budget - 1) < 0.1, method
  source_dir = os.path.join(str(tmp_path), "source_seed0")
  assert configs["projectable_rank0_seed0"].projector.rank == 0
  assert configs["projectable_frozen_seed0"].train.freeze_source
  for method in ("projectable_tuned", "projectable_frozen", "weight_selection_ft"):
    assert configs[f"{method}_seed0"].init.source_workdir == source_dir, method
  for method in ("universal_distill", "specialists_distill"):
    assert configs[f"{method}_seed0"].distill.teacher_workdir == source_dir, method
    assert configs[f"{method}_seed0"].distill.weight == 0.5, method
  with open(os.path.join(str(tmp_path), "comparison.md")) as f:
    table = f.read()
  assert all(f"| {m} |" in table for m in arms.ARMS)
  assert "alpha = 0.5" in table


def test_unknown_method_or_budget_raises(tiny_config, tmp_path):
  with pytest.raises(ValueError, match="unknown methods"):
    compare.compare(tiny_config, str(tmp_path), [0], "steps", methods=("magic",))
  with pytest.raises(ValueError, match="budget"):
    compare.compare(tiny_config, str(tmp_path), [0], "time")


@pytest.mark.parametrize("num_steps", [2, 38, 79, 600, 1000])
def test_scaled_runs_keep_their_number_of_evaluations(tiny_config, num_steps):
  tiny_config.train.num_steps, tiny_config.train.eval_every = 600, 200  # 3 evaluations.
  train = arms.scaled(tiny_config, num_steps).train
  assert train.num_steps == num_steps and 0 <= train.warmup_steps < num_steps
  evals = [s for s in range(1, num_steps + 1) if s % train.eval_every == 0 or s == num_steps]
  assert len(evals) == min(3, num_steps) and evals[-1] == num_steps


def test_compare_logs_each_point_of_how_many(tiny_config, tmp_path, monkeypatch, caplog):
  """Runs replaced by stand-ins: the order, numbering and reuse notes of the point lines."""
  ran = []

  def fake_run(config, workdir):
    ran.append(os.path.basename(workdir))
    return _stand_in_metrics(config, 1.0)

  monkeypatch.setattr(arms, "run_arm", fake_run)
  monkeypatch.setattr(arms, "weight_selection", lambda *args: fake_run(tiny_config, "ws"))
  monkeypatch.setattr(
    arms, "finished_metrics", lambda config, workdir: {} if "universal_seed1" in workdir else None
  )
  with caplog.at_level(logging.INFO, logger="absl"):
    compare.compare(
      tiny_config, str(tmp_path), [0, 1], "steps", ("source", "universal", "weight_selection")
    )
  points = re.findall(r"point (\d)/(\d): (\w+ seed \d)(.*) \(ETA", caplog.text)
  assert [(k, n, name) for k, n, name, _ in points] == [
    ("1", "6", "source seed 0"),
    ("2", "6", "universal seed 0"),
    ("3", "6", "weight_selection seed 0"),
    ("4", "6", "source seed 1"),
    ("5", "6", "universal seed 1"),
    ("6", "6", "weight_selection seed 1"),
  ]
  assert [rest.endswith("(finished: reused)") for *_, rest in points] == [
    False,
    False,
    False,
    False,
    True,
    False,
  ]
