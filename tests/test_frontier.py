"""The frontier command end to end on the tiny variant, and its budget checks."""

import json
import os

import pytest
from PIL import Image

from projectable import data as data_lib
from projectable.experiments import arms, frontier, frontier_report


def _no_training(config, workdir):
  raise AssertionError(f"trained {workdir}")


class _FakeTraining:
  """Stands in for ``train.train_and_evaluate``: writes the metrics a finished run leaves."""

  def __init__(self, config):
    self.data = data_lib.load(config.data)
    self.trained = []

  def __call__(self, config, workdir):
    for source in (config.init.source_workdir, config.distill.teacher_workdir):
      if source:  # Fine-tuning and distillation need a finished source.
        assert os.path.exists(os.path.join(source, "eval", "metrics.json"))
    steps = config.train.num_steps
    metrics = {
      "bits_per_dim": {"mean": 2.0 / steps, "per_task": {str(t): 2.0 / steps for t in range(10)}},
      "val_bits_per_dim": {"mean": 2.1 / steps},
      "final_step": {"step": steps},
      "train_flops": steps * arms.step_flops(config, self.data),
    }
    os.makedirs(os.path.join(workdir, "eval"))
    with open(os.path.join(workdir, "eval", "metrics.json"), "w") as f:
      json.dump(metrics, f)
    self.trained.append(os.path.basename(workdir))
    return metrics


def _top_points(config, tmp_path, methods, **kwargs):
  """The planned points of ``methods`` at budget 1, seed 0, source share 1/2."""
  return frontier.schedule(config, str(tmp_path), (1.0,), [0], [0], methods, 0.5, **kwargs)[1]


def test_frontier_writes_every_point_and_skips_finished_ones(tiny_config, tmp_path, monkeypatch):
  """Every method at every budget, with a stand-in for training (real runs: the next test)."""
  fake = _FakeTraining(tiny_config)
  monkeypatch.setattr(arms.run, "train_and_evaluate", fake)
  workdir, budgets = str(tmp_path), (0.25, 0.5, 1.0)
  result = frontier.frontier(
    tiny_config,
    workdir,
    budgets,
    seeds=[0],
    top_seeds=[0, 1],
    command="python launch/frontier.py",
  )
  with open(os.path.join(workdir, "frontier.json")) as f:
    on_disk = json.load(f)
  assert on_disk == result
  seeds = {(p["method"], p["budget"], p["seed"]) for p in on_disk["points"]}
  assert seeds == {(m, b, 0) for m in frontier.DEFAULT_ARMS for b in budgets} | {
    (m, 1.0, 1) for m in frontier.DEFAULT_ARMS
  }
  points = {(p["method"], p["budget"]): p for p in on_disk["points"] if p["seed"] == 0}
  one_step = on_disk["reference_flops"] / tiny_config.train.num_steps  # The costliest step here.
  for (method, budget), p in points.items():
    assert abs(p["train_flops"] - p["budget_flops"]) <= one_step, (method, budget)
  for method in frontier.DEFAULT_ARMS:
    steps = [points[(method, b)]["steps"] for b in budgets]
    assert steps == sorted(set(steps)), (method, steps)
  # The methods built on a source at budget 1 start from the source point at budget 1/2 and pay
  # for it; that source was trained once, and the one at 1/8 only for them.
  for method in set(arms.FROM_SOURCE) & set(frontier.DEFAULT_ARMS):
    built = points[(method, 1.0)]
    assert built["source_workdir"] == "source_b0.5_seed0"
    assert built["source_flops"] == points[("source", 0.5)]["train_flops"]
    assert built["train_flops"] > built["source_flops"]
  assert fake.trained.count("source_b0.5_seed0") == 1 and "source_b0.125_seed0" in fake.trained
  with open(os.path.join(workdir, "frontier.md")) as f:
    table = f.read()
  assert all(f"| {m} |" in table for m in frontier.DEFAULT_ARMS)
  assert "(2 seeds)" in table and "python launch/frontier.py" in table
  with Image.open(os.path.join(workdir, "frontier.png")) as image:
    assert image.format == "PNG"

  monkeypatch.setattr(arms.run, "train_and_evaluate", _no_training)
  again = frontier.frontier(
    tiny_config,
    workdir,
    budgets,
    [0],
    [0, 1],
    frontier.DEFAULT_ARMS,
    command="python launch/frontier.py",
  )
  assert again == result


def test_frontier_trains_weight_selection_ft_from_its_source(tiny_config, tmp_path):
  """Real training: the source at half the budget, then fine-tuning from its selection."""
  result = frontier.frontier(
    tiny_config, str(tmp_path), (1.0,), [0], [0], methods=("weight_selection_ft",)
  )
  (point,) = result["points"]
  assert 0 < point["bits_per_dim"]["mean"] < 10 and len(point["bits_per_dim"]["per_task"]) == 10
  assert 0 < point["source_flops"] < point["train_flops"]
  one_step = result["reference_flops"] / tiny_config.train.num_steps
  assert abs(point["train_flops"] - point["budget_flops"]) <= one_step
  assert point["wall_s"] > 0
  assert {"frontier.json", "frontier.md", "frontier.png"} <= set(os.listdir(tmp_path))


def test_budget_below_one_step_raises_before_any_training(tiny_config, tmp_path, monkeypatch):
  monkeypatch.setattr(arms.run, "train_and_evaluate", _no_training)
  with pytest.raises(ValueError, match=r"budget 0\.01 x reference = .* FLOPs per step"):
    frontier.frontier(tiny_config, str(tmp_path), (1.0, 0.01), seeds=[0], top_seeds=[0])
  # The source half of weight_selection_ft's budget is checked on its own.
  with pytest.raises(ValueError, match=r"weight_selection_ft at budget 0\.2 .* step of source"):
    frontier.frontier(
      tiny_config, str(tmp_path), (0.2,), [0], [0], methods=("weight_selection_ft",)
    )
  assert os.listdir(tmp_path) == []


def test_distill_points_learn_from_their_source_point(tiny_config, tmp_path):
  data = data_lib.load(tiny_config.data)
  points = _top_points(
    tiny_config, tmp_path, ("universal_distill", "specialists_distill"), distill_weight=0.25
  )
  for point, mode in zip(points, ("universal", "specialists"), strict=True):
    assert point.config.mode == mode and point.config.distill.weight == 0.25
    assert point.config.distill.teacher_workdir == point.source.workdir
    assert os.path.basename(point.source.workdir) == "source_b0.5_seed0"
    # Each step also runs the teacher's forward pass.
    plain = arms.step_flops(arms.mode_config(tiny_config, mode, ""), data)
    assert arms.step_flops(point.config, data) > 1.5 * plain


def test_markdown_shows_seed_spread_and_source_steps():
  point = {"budget": 1.0, "budget_flops": 1e9, "train_flops": 1e9, "seed": 0, "wall_s": 1.0}
  points = [
    {**point, "method": "universal", "steps": 8, "bits_per_dim": {"mean": 2.0, "per_task": {}}},
    {**point, "method": "universal", "steps": 8, "bits_per_dim": {"mean": 2.2, "per_task": {}}},
    {
      **point,
      "method": "weight_selection_ft",
      "steps": 5,
      "source_steps": 3,
      "bits_per_dim": {"mean": 1.5, "per_task": {}},
    },
  ]
  result = _result(points)
  table = frontier_report.markdown(result)
  assert "| universal | 2.1000 ± 0.1414 (2 seeds) |" in table  # Sample std, ddof=1.
  assert "| weight_selection_ft | 1.5000 |" in table
  assert "| weight_selection_ft | 3 + 5 |" in table
  assert result["command"] in table


def _result(points, **fields):
  """A digits frontier.json holding ``points``."""
  return {
    "dataset": "digits",
    "command": "python launch/frontier.py --config=configs/digits.py --workdir=/tmp/f",
    "reference_flops": 1e9,
    "reference_steps": 6,
    "source_share": 0.5,
    "distill_weight": 0.5,
    "points": points,
    **fields,
  }


def _point(method, budget, seed, bits):
  flops = budget * 1e9
  return {
    "method": method,
    "budget": budget,
    "budget_flops": flops,
    "train_flops": flops,
    "steps": 4,
    "seed": seed,
    "wall_s": 1.0,
    "bits_per_dim": {"mean": bits, "per_task": {}},
  }


def test_a_verdict_needs_every_other_small_model_at_projectables_seeds():
  ours = [_point("projectable", 1.0, s, 1.70 + 0.01 * s) for s in range(3)]
  universal = [_point("universal", 1.0, s, 1.90 + 0.01 * s) for s in range(3)]
  specialists = [_point("specialists", 1.0, 0, 1.60)]  # Its seeds 1-2 still training.
  source = [_point("source", 1.0, 0, 1.20)]  # The large model: not a rival.
  table = frontier_report.markdown(_result(ours + universal + specialists + source))
  assert "| 1x | – | – | – | incomplete (seeds of 3: specialists 1) |" in table
  assert "projectable wins" not in table
  specialists += [_point("specialists", 1.0, s, 2.10) for s in (1, 2)]
  table = frontier_report.markdown(_result(ours + universal + specialists + source))
  assert "| 1x | universal | -0.2000 |" in table and "| projectable wins |" in table


def test_merge_joins_frontiers_of_one_ladder_and_refuses_others(tmp_path):
  ours = _result([_point("projectable", 0.5, 0, 2.0), _point("projectable", 1.0, 0, 1.8)])
  theirs = _result([_point("source", 1.0, 0, 1.7)], command="", missing=["source_b0.5_seed0"])
  merged = frontier_report.merge([ours, theirs])
  assert [(p["method"], p["budget"]) for p in merged["points"]] == [
    ("projectable", 0.5),
    ("projectable", 1.0),
    ("source", 1.0),
  ]
  assert merged["missing"] == ["source_b0.5_seed0"] and "grid" not in merged
  # Tuned frontiers keep every knob's values of both grids (the grid-edge flags read them).
  tuned = [{**ours, "grid": {"learning_rates": [1e-3, 2e-3]}}, {**theirs, "grid": {}}]
  tuned[1]["grid"] = {"learning_rates": [4e-3], "projector_lr_scales": [0.3]}
  assert frontier_report.merge(tuned)["grid"] == {
    "learning_rates": [1e-3, 2e-3, 4e-3],
    "projector_lr_scales": [0.3],
  }
  frontier_report.write(merged, str(tmp_path))
  table = (tmp_path / "frontier.md").read_text()
  assert "| source |  | 1.7000 |" in table
  assert (tmp_path / "frontier.png").stat().st_size > 0
  with pytest.raises(ValueError, match=r"reference_flops=2000000000\.0"):
    frontier_report.merge([ours, _result([_point("source", 1.0, 0, 1.7)], reference_flops=2e9)])
  with pytest.raises(ValueError, match=r"both hold point \('projectable', 1.0, 0\)"):
    frontier_report.merge([ours, _result([_point("projectable", 1.0, 0, 1.9)])])
  # A frontier written before lambda_source was recorded merges with one at λ=0, not at two λ.
  at_0 = _result([_point("universal", 1.0, 0, 1.9)], lambda_source=0.0)
  assert frontier_report.merge([ours, at_0])["lambda_source"] == 0.0
  with pytest.raises(ValueError, match=r"different lambda_source \[0.0, 1.0\]"):
    frontier_report.merge([at_0, _result([_point("source", 1.0, 0, 1.7)], lambda_source=1.0)])
  # Frontiers chosen on one seed (older ones record no confirm_top) and on the mean of 3.
  assert merged["confirm_top"] == 1
  confirmed = _result([_point("universal", 1.0, 0, 1.9)], confirm_top=2)
  with pytest.raises(ValueError, match=r"different confirm_top \[1, 2\]"):
    frontier_report.merge([ours, confirmed])


@pytest.mark.parametrize("override, expected", [([], 0.0), (["--config.lambda_source=1"], 1.0)])
def test_command_projects_at_lambda_0_unless_the_config_flag_says(
  tmp_path, run_launcher, override, expected
):
  from configs import digits

  run_launcher(
    "frontier",
    [
      f"--config={os.path.join(os.path.dirname(__file__), '..', 'configs', 'digits.py')}:tiny",
      f"--workdir={tmp_path}",
      "--methods=projectable,universal",
      "--budgets=1/2,1",
      "--report_only",
      *override,
    ],
  )
  result = json.loads((tmp_path / "frontier.json").read_text())
  config = digits.get_config("tiny")
  config.lambda_source = expected
  reference = arms.reference_flops(config, data_lib.load(config.data))
  assert result["lambda_source"] == expected and result["reference_flops"] == reference
  # Nothing trained: 12 trials (6 learning rates x 2 dropouts) per method at both budgets, and
  # the points of seed 0 at 1/2 and of 3 seeds at 1, whose settings tuning has not chosen yet.
  assert len(result["missing"]) == 2 * 2 * 12 + 2 * 4
  assert f"projectable steps at λ={expected:g}" in (tmp_path / "frontier.md").read_text()


def test_amortised_frontier_builds_every_method_on_the_given_source(
  tiny_config, source_workdir, tmp_path, monkeypatch
):
  fake = _FakeTraining(tiny_config)
  monkeypatch.setattr(arms.run, "train_and_evaluate", fake)
  budgets = (0.5, 1.0)
  result = frontier.frontier(
    tiny_config,
    str(tmp_path),
    budgets,
    [0],
    [0],
    arms.FROM_SOURCE,
    source_workdir=source_workdir,
  )
  # No source trained here: every point is the method's own training, the whole budget.
  assert sorted(fake.trained) == sorted(
    f"{m}_b{b:g}_seed0" for m in arms.FROM_SOURCE for b in budgets
  )
  one_step = result["reference_flops"] / tiny_config.train.num_steps
  for p in result["points"]:
    assert "source_flops" not in p and abs(p["train_flops"] - p["budget_flops"]) <= one_step
  with open(os.path.join(source_workdir, "eval", "metrics.json")) as f:
    trained = json.load(f)
  assert result["trained_source"]["train_flops"] == trained["train_flops"]
  assert "Amortised" in frontier_report.markdown(result)
  points = _top_points(tiny_config, tmp_path, arms.FROM_SOURCE, source_workdir=source_workdir)
  by_method = {p.method: p.config for p in points}
  for method in ("projectable_tuned", "projectable_frozen", "weight_selection_ft"):
    assert by_method[method].init.source_workdir == source_workdir
  assert by_method["projectable_frozen"].train.freeze_source
  assert not by_method["projectable_tuned"].train.freeze_source
  assert by_method["universal_distill"].distill.teacher_workdir == source_workdir


def test_amortised_frontier_checks_its_source_before_any_training(
  tiny_config, source_workdir, tmp_path, monkeypatch
):
  monkeypatch.setattr(arms.run, "train_and_evaluate", _no_training)
  workdir = str(tmp_path / "frontier")
  with pytest.raises(FileNotFoundError, match="holds no finished run"):
    frontier.frontier(
      tiny_config, workdir, (1.0,), [0], [0], source_workdir=str(tmp_path / "missing")
    )
  tiny_config.model.d *= 2
  with pytest.raises(ValueError, match=r"config\.model\.d=.* use the same source architecture"):
    frontier.frontier(
      tiny_config,
      workdir,
      (1.0,),
      [0],
      [0],
      ("weight_selection_ft",),
      source_workdir=source_workdir,
    )
  assert not os.path.exists(workdir)


def test_report_only_trains_nothing_and_lists_unfinished_points(tiny_config, tmp_path, monkeypatch):
  monkeypatch.setattr(arms.run, "train_and_evaluate", _FakeTraining(tiny_config))
  methods = ("universal", "weight_selection_ft")
  frontier.frontier(tiny_config, str(tmp_path), (0.5,), [0], [0], methods)
  monkeypatch.setattr(arms.run, "train_and_evaluate", _no_training)
  result = frontier.frontier(tiny_config, str(tmp_path), (0.5, 1.0), [0], [0], methods, train=False)
  assert {(p["method"], p["budget"]) for p in result["points"]} == {(m, 0.5) for m in methods}
  # weight_selection_ft at 1 would build on the source at 1/2 (finished): still missing.
  assert result["missing"] == [f"{m}_b1_seed0" for m in methods]
  with open(os.path.join(tmp_path, "frontier.md")) as f:
    assert "Not finished, left out: universal_b1_seed0, weight_selection_ft_b1_seed0." in f.read()


def test_projected_points_at_two_projector_rates_do_not_merge():
  # Before the rate was recorded, projected methods trained their projectors at 1.
  old = _result([_point("projectable", 0.5, 0, 2.0)])
  new = _result([_point("projectable", 1.0, 0, 1.8)], projector_lr_scale=0.3)
  with pytest.raises(ValueError, match=r"different projector_lr_scale \[0.3, 1.0\]"):
    frontier_report.merge([old, new])
  # Frontiers without projected points have no say, whatever code wrote them.
  baselines = _result([_point("universal", 1.0, 0, 1.9)])
  merged = frontier_report.merge([baselines, new])
  assert merged["projector_lr_scale"] == 0.3
  assert "Projectors train at 0.3 x the learning rate" in frontier_report.markdown(merged)
  assert "Projectors train" not in frontier_report.markdown(baselines)


def test_an_older_frontiers_baselines_merge_beside_projected_points_rerun_at_a_new_rate():
  old = _result(
    [_point("projectable", 0.5, 0, 2.0), _point("universal", 0.5, 0, 1.9)],
    tuning=[{"method": "projectable"}, {"method": "universal"}],
    missing=["projectable_b1_seed0", "projectable_rank0_b1_seed0", "universal_b1_seed0"],
  )
  new = _result([_point("projectable", 0.5, 0, 1.8)], projector_lr_scale=0.3)
  baselines = frontier_report.keep_methods(old, ["universal"])
  assert [p["method"] for p in baselines["points"]] == ["universal"]
  assert baselines["tuning"] == [{"method": "universal"}]
  assert baselines["missing"] == ["universal_b1_seed0"]  # Not projectable_rank0's either.
  merged = frontier_report.merge([baselines, new])
  assert merged["projector_lr_scale"] == 0.3
  assert [(p["method"], p["bits_per_dim"]["mean"]) for p in merged["points"]] == [
    ("universal", 1.9),
    ("projectable", 1.8),
  ]
  assert len(old["points"]) == 2  # The older frontier itself is left as it was.
  with pytest.raises(ValueError, match=r"no points of \['specialists'\]; it has"):
    frontier_report.keep_methods(old, ["universal", "specialists"])
