"""Equal tuning on validation, Welch's test and the ladder-extension rule of the frontier."""

import fcntl
import json
import math
import os

import numpy as np
import pytest

from projectable import data as data_lib
from projectable.experiments import arms, frontier, frontier_report, stats, tuning
from projectable.experiments.progress import PointProgress
from projectable.training import step_log


class _Disagreeing:
  """Stands in for training: validation prefers learning rate 1e-3, test prefers 8e-3."""

  def __init__(self, config):
    self.data = data_lib.load(config.data)

  def __call__(self, config, workdir):
    lr, steps = config.train.learning_rate, config.train.num_steps
    val = 2.0 + abs(math.log(lr / 1e-3)) + config.seed * 1e-3
    test = 2.0 + abs(math.log(lr / 8e-3)) + config.seed * 1e-3
    metrics = {
      "bits_per_dim": {"mean": test, "per_task": {}},
      "val_bits_per_dim": {"mean": val},
      "final_step": {"step": steps},
      "train_flops": steps * arms.step_flops(config, self.data),
    }
    os.makedirs(os.path.join(workdir, "eval"))
    with open(os.path.join(workdir, "eval", "metrics.json"), "w") as f:
      json.dump(metrics, f)
    return metrics


def test_tuning_selects_validations_choice_when_test_disagrees(tiny_config, tmp_path, monkeypatch):
  monkeypatch.setattr(arms.run, "train_and_evaluate", _Disagreeing(tiny_config))
  grid = tuning.Grid(learning_rates=(1e-3, 8e-3), dropouts=(0.0, 0.1))
  result = frontier.frontier(
    tiny_config,
    str(tmp_path),
    (0.5, 1.0),
    seeds=[0],
    top_seeds=[0, 1],
    methods=("universal", "projectable_rank0"),
    grid=grid,
    tune_budgets=(1.0,),
  )
  # Tuned at 1 only: 4 trials per method, all recorded with their validation figures.
  assert [(t["method"], t["budget"]) for t in result["tuning"]] == [
    ("universal", 1.0),
    ("projectable_rank0", 1.0),
  ]
  for t in result["tuning"]:
    assert len(t["trials"]) == 4 and t["chosen"]["learning_rate"] == 1e-3
    assert {trial["val_bits_per_dim"] for trial in t["trials"]} == {2.0, 2.0 + math.log(8)}
  # Every point, the untuned budget 1/2 and seed 1 included, trains the validation choice.
  assert len(result["points"]) == 2 * (1 + 2)
  for p in result["points"]:
    assert p["settings"]["learning_rate"] == 1e-3, p
    assert p["bits_per_dim"]["mean"] == pytest.approx(2.0 + math.log(8) + p["seed"] * 1e-3)
  trained = sorted(os.listdir(tmp_path))
  assert "universal_b0.5_do0_lr0.001_seed0" in trained  # Settings from the nearest tuned.
  assert "universal_b0.5_do0_lr0.008_seed0" not in trained
  md = (tmp_path / "frontier.md").read_text()
  assert "**dropout 0, learning_rate 0.001: 2.0000**" in md
  assert md.count(" | no |") == 2  # Two-value grids have no edge worth flagging.


class _DivergingAbove(_Disagreeing):
  """As ``_Disagreeing``, but a run above learning rate 1e-2 stops at a NaN loss at step 3."""

  def __call__(self, config, workdir):
    if config.train.learning_rate > 1e-2:
      os.makedirs(workdir, exist_ok=True)
      raise step_log.Diverged("non-finite loss=nan at step 3", 3)
    return super().__call__(config, workdir)


def test_a_diverged_trial_is_a_result_never_chosen_and_the_sweep_goes_on(
  tiny_config, tmp_path, monkeypatch
):
  monkeypatch.setattr(arms.run, "train_and_evaluate", _DivergingAbove(tiny_config))
  args = (tiny_config, str(tmp_path), (1.0,), [0], [0], ("universal",))
  grid = tuning.Grid(learning_rates=(2e-2, 1e-3), dropouts=(0.0,))
  result = frontier.frontier(*args, grid=grid)
  (tuned,) = result["tuning"]
  trials = {t["settings"]["learning_rate"]: t["val_bits_per_dim"] for t in tuned["trials"]}
  assert trials == {2e-2: math.inf, 1e-3: 2.0} and tuned["chosen"]["learning_rate"] == 1e-3
  (written,) = tmp_path.glob(f"universal_*lr0.02*/{arms.DIVERGED}")
  assert json.loads(written.read_text())["step"] == 3
  assert "learning_rate 0.02: diverged" in (tmp_path / "frontier.md").read_text()
  # A rerun reuses the divergence instead of training the trial again.
  monkeypatch.setattr(arms.run, "train_and_evaluate", lambda *a: pytest.fail("trained again"))
  assert frontier.frontier(*args, grid=grid)["tuning"] == result["tuning"]


class _LuckyFirstSeed(_Disagreeing):
  """As ``_Disagreeing``, but learning rate 8e-3 is best on seed 0 only (1.9, then 2.5)."""

  def __call__(self, config, workdir):
    metrics = super().__call__(config, workdir)
    if config.train.learning_rate == 8e-3:
      metrics["val_bits_per_dim"]["mean"] = 1.9 if config.seed == 0 else 2.5
      with open(os.path.join(workdir, "eval", "metrics.json"), "w") as f:
        json.dump(metrics, f)
    return metrics


@pytest.mark.parametrize("confirm_top, chosen", [(1, 8e-3), (2, 1e-3)])
def test_confirming_the_best_trials_on_every_seed_outvotes_a_lucky_first_seed(
  tiny_config, tmp_path, monkeypatch, confirm_top, chosen
):
  monkeypatch.setattr(arms.run, "train_and_evaluate", _LuckyFirstSeed(tiny_config))
  totals = []  # The N of the "point k/N" progress lines, and how many were left to train.
  monkeypatch.setattr(
    frontier,
    "PointProgress",
    lambda total, **kw: totals.append((total, kw["to_train"])) or PointProgress(total, **kw),
  )
  grid = tuning.Grid(learning_rates=(3e-4, 1e-3, 8e-3), dropouts=(0.0,))
  args = (tiny_config, str(tmp_path), (1.0,), [0], [0, 1, 2], ("universal",))
  result = frontier.frontier(*args, grid=grid, confirm_top=confirm_top)
  (tuned,) = result["tuning"]
  assert tuned["chosen"]["learning_rate"] == chosen
  assert {p["settings"]["learning_rate"] for p in result["points"]} == {chosen}
  trained = [d for d in os.listdir(tmp_path) if d.startswith("universal_")]
  if confirm_top == 1:  # Seed 0's choice trains seeds 1 and 2: 3 trials + 2 seeds.
    assert "confirmation" not in tuned and len(trained) == 5 and totals == [(5, 5)]
    return
  # Seed 0's two best (8e-3, 1e-3) on every seed: 8e-3's mean is 2.3, 1e-3's 2.001.
  means = {c["settings"]["learning_rate"]: c["mean"] for c in tuned["confirmation"]}
  assert means == pytest.approx({8e-3: 2.3, 1e-3: 2.001})
  assert [c["seeds"] for c in tuned["confirmation"]] == [[0, 1, 2]] * 2
  assert len(trained) == 7 and not any("lr0.0003_seed1" in d for d in trained)
  assert totals == [(7, 7)]  # The progress count includes the confirmation runs.
  frontier.frontier(*args, grid=grid, confirm_top=confirm_top)
  assert totals[-1] == (7, 0)  # Rerun: every point reused, none left to train.
  md = (tmp_path / "frontier.md").read_text()
  assert "**dropout 0, learning_rate 0.001: 2.0010 (2.0000 / 2.0010 / 2.0020)**" in md
  assert "dropout 0, learning_rate 0.008: 2.3000 (1.9000 / 2.5000 / 2.5000)" in md


def test_every_trial_spends_its_budget_at_its_own_step_cost(tiny_config, tmp_path):
  """Dropout's random bits cost FLOPs: each trial's steps come from its own step cost."""
  grid = tuning.Grid(learning_rates=(1e-3,), dropouts=(0.0, 0.5))
  _, points = frontier.schedule(
    tiny_config, str(tmp_path), (32.0,), [0], [0], ("universal", "projectable"), 0.5, grid=grid
  )
  data = data_lib.load(tiny_config.data)
  for method in ("universal", "projectable"):
    plain, dropped = [p for p in points if p.method == method]
    assert plain.config.train.num_steps > dropped.config.train.num_steps, method
    for p in (plain, dropped):
      per_step = arms.step_flops(p.config, data)
      assert abs(p.config.train.num_steps * per_step - p.budget_flops) <= per_step / 2


def test_a_trial_that_trains_the_sources_own_loss_buys_fewer_steps(tiny_config, tmp_path):
  grid = tuning.Grid(learning_rates=(1e-3,), dropouts=(0.0,), lambda_sources=(0.0, 1.0))
  assert len(grid.trials("universal")) == 1 and len(grid.trials("projectable")) == 2
  _, points = frontier.schedule(
    tiny_config, str(tmp_path), (32.0,), [0], [0], ("projectable",), 0.5, grid=grid
  )
  at_0, at_1 = points
  assert (at_0.config.lambda_source, at_1.config.lambda_source) == (0.0, 1.0)
  assert at_1.workdir.endswith("lam1_lr0.001_seed0")
  data = data_lib.load(tiny_config.data)
  assert at_0.config.train.num_steps > 1.2 * at_1.config.train.num_steps
  for p in points:
    per_step = arms.step_flops(p.config, data)
    assert abs(p.config.train.num_steps * per_step - p.budget_flops) <= per_step / 2


def test_rank0_control_projects_with_no_task_conditioned_part(tiny_config):
  config = arms.mode_config(tiny_config, "projectable_rank0", "")
  assert config.mode == "projectable" and config.projector.rank == 0
  assert arms.mode_config(tiny_config, "projectable", "").projector.rank == 2


def test_every_method_gets_the_same_trials_and_controls_on_a_source_more():
  grid = tuning.Grid(source_shares=tuning.DEFAULT_SOURCE_SHARES)
  counts = {m: len(grid.trials(m)) for m in frontier.ARMS}
  assert {counts[m] for m in frontier.ARMS if m not in arms.FROM_SOURCE} == {12}
  assert {counts[m] for m in arms.FROM_SOURCE} == {36}
  lrs = tuning.DEFAULT_LEARNING_RATES
  assert len(lrs) >= 4 and max(lrs) / min(lrs) >= 16 - 1e-9


def test_projector_lr_scales_are_a_knob_of_the_projected_methods_only(tiny_config):
  grid = tuning.Grid(learning_rates=(1e-3,), dropouts=(0.0,), projector_lr_scales=(0.3, 1.0))
  assert {m for m in frontier.ARMS if len(grid.trials(m)) == 2} == {
    "projectable",
    "projectable_rank0",
    *arms.PROJECTORS_ON_SOURCE,
  }
  settings = grid.trials("projectable")[0]
  assert tuning.tag(settings) == "do0_lr0.001_ps0.3"
  config = arms.mode_config(tiny_config, "projectable", "")
  tuning.apply(config, "projectable", settings)
  assert config.train.projector_lr_scale == 0.3 and config.train.learning_rate == 1e-3


def test_a_choice_on_the_edge_of_the_grid_is_flagged():
  grid = {"learning_rates": [5e-4, 1e-3, 2e-3, 8e-3], "dropouts": [0.0, 0.1], "source_shares": []}
  trial = {"settings": {"learning_rate": 8e-3, "dropout": 0.1}, "val_bits_per_dim": 2.0}
  inside = {"settings": {"learning_rate": 1e-3, "dropout": 0.1}, "val_bits_per_dim": 2.1}
  rows = {"method": "universal", "budget": 1.0, "trials": [trial, inside]}
  (edge,) = frontier_report._tuning([{**rows, "chosen": trial["settings"]}], grid)[-1:]
  (middle,) = frontier_report._tuning([{**rows, "chosen": inside["settings"]}], grid)[-1:]
  assert edge.endswith("| learning_rates |") and middle.endswith("| no |")


def test_untuned_budgets_take_the_nearest_tuned_one_on_a_log_scale():
  assert tuning.nearest_tuned(1 / 8, (1 / 16, 1, 16)) == 1 / 16
  assert tuning.nearest_tuned(1 / 4, (1 / 16, 1, 16)) == 1 / 16  # A tie: the cheaper one.
  assert tuning.nearest_tuned(4, (1 / 16, 1, 16)) == 1
  assert tuning.nearest_tuned(8, (1 / 16, 1, 16)) == 16


def test_welch_p_on_a_worked_example():
  # Welch's t-test article's first example (Wikipedia): t = -2.46, dof = 24.99, p = 0.021.
  a = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
  b = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]
  assert stats.welch_p(a, b) == pytest.approx(0.021378, abs=1e-5)
  assert stats.verdict(a, b) == "wins"  # Lower is better, p < 0.05.
  assert stats.verdict([1.0, 1.1, 0.9], [1.05, 1.0, 1.1]) == "no significant difference"
  assert math.isnan(stats.welch_p([1.0], b))
  assert stats.sample_std([2.0, 2.2]) == pytest.approx(0.1 * math.sqrt(2))


def test_ladder_extension_rule_on_a_synthetic_curve():
  # Gains 10%, 5%, 2%, 0.5% per doubling: converged only once the last doubling gains < 1%.
  curve = {1.0: 2.0, 2.0: 1.8, 4.0: 1.71, 8.0: 1.6758, 16.0: 1.667421}
  gains = stats.doubling_gains(curve)
  assert [round(gains[b], 4) for b in (2, 4, 8, 16)] == [0.1, 0.05, 0.02, 0.005]
  assert stats.converged(curve) and not stats.converged({b: curve[b] for b in (1, 2, 4, 8)})
  assert stats.converged({1.0: 2.0, 2.0: 2.1})  # Validation turned up.
  assert not stats.converged({1.0: 2.0})


def test_extend_until_converged_doubles_only_until_the_best_baseline_flattens():
  def val(method, budget):  # universal flattens from 8x on; projectable keeps improving.
    return 3.0 - 0.5 * np.log2(min(budget, 8.0)) if method == "universal" else 2.0 / budget

  ladders = []

  def run(ladder):
    ladders.append(list(ladder))
    return {
      "points": [
        {"method": m, "budget": b, "val_bits_per_dim": val(m, b), "bits_per_dim": {"mean": 0}}
        for m in ("projectable", "universal")
        for b in ladder
      ]
    }

  frontier.extend_until_converged(run, [1.0, 2.0], max_budget=64)
  assert ladders[-1] == [1.0, 2.0, 4.0, 8.0, 16.0]  # 8 -> 16 gains nothing: stop there.
  ladders.clear()
  frontier.extend_until_converged(run, [1.0, 2.0], max_budget=4)
  assert ladders[-1] == [1.0, 2.0, 4.0]  # The cap wins.


def test_shards_sharing_a_workdir_train_disjoint_points_and_complete_the_frontier(
  tiny_config, tmp_path, monkeypatch
):
  by_shard: dict[str, list[str]] = {}
  stand_in, current = _Disagreeing(tiny_config), ["whole"]

  built_on = []  # (shard, the source run a run starts from)

  def record(config, workdir):
    by_shard.setdefault(current[0], []).append(os.path.basename(workdir))
    if config.init.source_workdir:
      built_on.append((current[0], os.path.basename(config.init.source_workdir)))
    return stand_in(config, workdir)

  monkeypatch.setattr(arms.run, "train_and_evaluate", record)

  def run(shard: str, workdir: str) -> dict:
    current[0] = shard
    return frontier.frontier(
      tiny_config,
      workdir,
      (0.5, 1.0),
      seeds=[0],
      top_seeds=[0, 1],
      methods=("universal", "specialists", "weight_selection_ft"),
      grid=tuning.Grid(learning_rates=(1e-3, 8e-3), dropouts=(0.0,), source_shares=(0.5,)),
      confirm_top=2,
      shard=frontier.Shard.parse(shard),
    )

  whole = run("0/1", str(tmp_path / "whole"))
  first = run("0/2", str(tmp_path / "sharded"))
  assert first["missing"] and not set(first["missing"]) & set(by_shard["0/2"])
  for _ in range(3):  # A choice waits on the other shard's trials: rounds finish it.
    result = run("1/2", str(tmp_path / "sharded"))
    result = run("0/2", str(tmp_path / "sharded"))
  assert result["missing"] == []
  # Each point trained once, in one shard; together they trained what one process did.
  mine, theirs = set(by_shard["0/2"]), set(by_shard["1/2"])
  assert mine and theirs and not mine & theirs
  assert len(by_shard["0/2"]) + len(by_shard["1/2"]) == len(by_shard["0/1"])
  assert sorted(mine | theirs) == sorted(by_shard["0/1"])
  assert result["tuning"] == whole["tuning"]
  # A method built on a source trains in the shard that trains its source.
  sharded = [(shard, source) for shard, source in built_on if shard != "0/1"]
  assert sharded and all(source in by_shard[shard] for shard, source in sharded), sharded
  with pytest.raises(ValueError, match="want INDEX/COUNT"):
    frontier.Shard.parse("2")
  with pytest.raises(ValueError, match="want 0 <= index < count"):
    frontier.Shard.parse("2/2")


def _hold_lock(workdir: str) -> int:
  """Another process's writer lock on ``workdir`` (flock is per open file): its fd."""
  os.makedirs(workdir, exist_ok=True)
  fd = os.open(os.path.join(workdir, ".writer_lock"), os.O_RDWR | os.O_CREAT)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    raise
  return fd


def test_any_shard_leaves_points_another_process_holds_and_trains_each_once(
  tiny_config, tmp_path, monkeypatch
):
  stand_in, trained, sources = _Disagreeing(tiny_config), [], []

  def record(config, workdir):
    if "shared" in workdir:  # While an any/N shard trains it, no other process gets its lock.
      with pytest.raises(BlockingIOError):
        os.close(_hold_lock(workdir))
    trained.append(os.path.basename(workdir))
    if config.init.source_workdir:
      sources.append(config.init.source_workdir)
    return stand_in(config, workdir)

  monkeypatch.setattr(arms.run, "train_and_evaluate", record)
  run = lambda workdir, shard: frontier.frontier(
    tiny_config,
    workdir,
    (0.5, 1.0),
    seeds=[0],
    top_seeds=[0, 1],
    methods=("universal", "weight_selection_ft"),
    grid=tuning.Grid(learning_rates=(1e-3, 8e-3), dropouts=(0.0,), source_shares=(0.5,)),
    confirm_top=2,
    shard=frontier.Shard.parse(shard),
  )
  whole = run(str(tmp_path / "whole"), "0/1")
  everything, trained[:] = list(trained), []
  shared = tmp_path / "shared"
  # Another process trains the first universal trial and the first source meanwhile.
  busy = [str(shared / everything[0]), sources[0]]
  assert everything[0].startswith("universal_")
  fds = [_hold_lock(w.replace(str(tmp_path / "whole"), str(shared))) for w in busy]
  first = run(str(shared), "any/2")
  assert os.path.basename(busy[0]) in first["missing"]
  built_on_busy = [n for n in first["missing"] if n.startswith("weight_selection_ft_")]
  assert built_on_busy and not set(first["missing"]) & set(trained)
  for fd in fds:
    os.close(fd)  # That process died: its points are free again.
  for _ in range(3):
    result = run(str(shared), "any/2")
  assert result["missing"] == [] and result["tuning"] == whole["tuning"]
  assert sorted(trained) == sorted(everything)  # Every run trained once, none twice.
