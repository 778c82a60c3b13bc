"""The packaged entry points: config names, one launcher module per command, thin
``launch/`` wrappers, and ``sample --model`` (issue 31)."""

import ast
import importlib
import json
import os
import sys
import time

import jax
import numpy as np
import pytest
from absl import app, flags

from projectable.experiments import cli, config_names, frontier, frontier_report
from projectable.training import restore
from projectable.training.modes import make_method

tomllib = pytest.importorskip("tomllib")  # Python 3.11+.

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(REPO, "pyproject.toml"), "rb") as _f:
  PYPROJECT = tomllib.load(_f)
SCRIPTS = PYPROJECT["project"]["scripts"]


def test_a_shipped_config_is_addressable_by_name_and_a_path_stays_a_path():
  path = config_names.resolve("digits")
  assert os.path.samefile(path, os.path.join(REPO, "configs", "digits.py"))  # The one copy.
  assert config_names.resolve("fashion_mnist:tiny") == (
    f"{config_names.resolve('fashion_mnist')}:tiny"
  )
  assert config_names.resolve("configs/digits.py:tiny") == "configs/digits.py:tiny"
  assert config_names.resolve("my_config.py") == "my_config.py"
  assert config_names.names() == ["digits", "fashion_mnist", "mnist"]


def test_both_flag_forms_are_resolved_and_nothing_else():
  argv = ["prog", "--config=digits:tiny", "--workdir=digits", "--config", "fashion_mnist"]
  resolved = config_names.resolve_argv(argv)
  assert resolved[1] == f"--config={config_names.resolve('digits')}:tiny"
  assert resolved[2] == "--workdir=digits"
  assert resolved[4] == config_names.resolve("fashion_mnist")
  assert config_names.resolve_argv(["prog", "--config.mode=universal"]) == [
    "prog",
    "--config.mode=universal",
  ]


def test_an_unknown_config_name_is_one_line_and_exit_status_2(monkeypatch, capsys):
  monkeypatch.setattr(sys, "argv", ["projectable-train", "--config=digitz:tiny"])
  with pytest.raises(SystemExit) as exit_info:
    cli.run(lambda argv: pytest.fail("main ran"))
  assert exit_info.value.code == cli.USER_ERROR
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("error: --config=digitz:tiny: no shipped config named 'digitz'")
  assert "['digits', 'fashion_mnist', 'mnist']" in err[-1]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_command_ends_in_cli_run_and_has_a_launch_wrapper(script):
  module, _, func = SCRIPTS[script].partition(":")
  name = module.rpartition(".")[2]
  assert script == f"projectable-{name.replace('_', '-')}" and func == "run"
  with open(os.path.join(REPO, *module.split(".")) + ".py") as f:
    tree = ast.parse(f.read())
  run = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run")
  # launchers.serve(__name__, main) is cli.run(main) after quieting the libraries' logs.
  assert ast.unparse(run.body[-1]) == "launchers.serve(__name__, main)"
  with open(os.path.join(REPO, "launch", f"{name}.py")) as f:
    wrapper = f.read()
  assert f"from {module} import main, run" in wrapper and len(wrapper.splitlines()) < 20


def test_serve_is_cli_run_with_library_logs_quieted(monkeypatch):
  from projectable import launchers
  from projectable.training import log_filters

  calls = []
  monkeypatch.setattr(cli, "run", lambda main: calls.append(main))
  monkeypatch.setattr(log_filters, "quiet_library_logs", lambda: calls.append("quiet"))
  main = lambda argv: None
  launchers.serve(__name__, main)
  assert calls == ["quiet", main]


@pytest.fixture
def sample():
  """``projectable.launchers.sample``, its flags forgotten afterwards (launchers' flags
  share names, so another launcher's test could not define its own)."""
  known = set(flags.FLAGS)
  sys.modules.pop("projectable.launchers.sample", None)
  yield importlib.import_module("projectable.launchers.sample")
  for flag in set(flags.FLAGS) - known:
    delattr(flags.FLAGS, flag)


@pytest.fixture(scope="module")
def runs(load_digits):
  """Untrained runs of two modes (a Run as ``restore.load_run`` returns it)."""
  from configs import digits

  out = {}
  for mode in ("projectable", "universal"):
    config = digits.get_config("tiny")
    config.mode = mode
    method = make_method(config, load_digits())
    params = method.init(jax.random.key(0))
    out[mode] = restore.Run(config, method, params, load_digits(), 0, "best")
  return out


def test_sample_model_chooses_the_specialist_or_the_source(runs, sample):
  run = runs["projectable"]
  task_C = run.data.task_descriptors()[3]
  cfg, weights, desc = sample._sampler(run, 3, task_C, None)  # Today's default.
  assert cfg == run.method.small and desc is None
  spec_cfg, spec_weights, spec_desc = sample._sampler(run, 3, task_C, "specialist")
  assert spec_cfg == cfg and spec_desc is None
  chex_equal = jax.tree.map(np.array_equal, weights, spec_weights)
  assert all(jax.tree.leaves(chex_equal))
  src_cfg, src_weights, src_desc = sample._sampler(run, 3, task_C, "source")
  assert src_cfg == run.method.src and src_cfg.d > cfg.d
  assert src_weights is run.params["source"]
  np.testing.assert_array_equal(src_desc, task_C)


@pytest.mark.parametrize("model", ["source", "specialist"])
def test_sample_model_a_run_lacks_is_refused_naming_the_mode(runs, model, sample):
  run = runs["universal"]
  with pytest.raises(ValueError, match=f"--model={model}: a universal run has no"):
    sample._sampler(run, 3, run.data.task_descriptors()[3], model)


def test_sample_model_goes_with_workdir_only(tmp_path, run_launcher):
  with pytest.raises(app.UsageError, match="--model go with --workdir"):
    run_launcher(
      "sample",
      [f"--specialist={tmp_path}", "--model=source", f"--out={tmp_path / 'g.png'}"],
    )


def test_compare_refuses_a_bad_config_value_before_any_run(tmp_path, run_launcher):
  config = os.path.join(REPO, "configs", "digits.py") + ":tiny"
  args = [f"--config={config}", f"--workdir={tmp_path / 'c'}", "--config.train.learning_rate=-1"]
  with pytest.raises(ValueError, match=r"config\.train\.learning_rate=-1\.0 is invalid"):
    run_launcher("compare", args)
  assert not os.path.exists(tmp_path / "c")


def test_evaluate_refuses_a_bad_config_value_naming_the_field(tmp_path, run_launcher):
  config = os.path.join(REPO, "configs", "digits.py") + ":tiny"
  args = [f"--specialist={tmp_path}", f"--config={config}", "--config.data.levels=1"]
  with pytest.raises(app.UsageError, match=r"config\.data\.levels=1"):
    run_launcher("evaluate", args)


def test_frontier_refuses_a_bad_config_value_before_any_point(tmp_path, run_launcher):
  config = os.path.join(REPO, "configs", "digits.py") + ":tiny"
  args = [f"--config={config}", f"--workdir={tmp_path / 'f'}", "--config.train.learning_rate=-1"]
  with pytest.raises(ValueError, match=r"config\.train\.learning_rate=-1\.0 is invalid"):
    run_launcher("frontier", args)
  assert not os.path.exists(tmp_path / "f")


def test_frontier_refuses_a_bad_shard_before_any_point(tmp_path, run_launcher):
  config = os.path.join(REPO, "configs", "digits.py") + ":tiny"
  args = [f"--config={config}", f"--workdir={tmp_path / 'f'}", "--shard=2/2"]
  with pytest.raises(app.UsageError, match=r"--shard=2/2: .*want 0 <= index < count"):
    run_launcher("frontier", args)
  assert not os.path.exists(tmp_path / "f")


def test_a_polling_shard_runs_again_until_nothing_is_missing(tmp_path, run_launcher, monkeypatch):
  results = [{"missing": ["a", "b"]}, {"missing": ["b"]}, {"missing": []}]
  calls, naps = [], []

  def stand_in(*args, shard, **kwargs):
    calls.append(shard)
    return {**results[len(calls) - 1], "points": []}

  monkeypatch.setattr(frontier, "frontier", stand_in)
  monkeypatch.setattr(frontier_report, "markdown", lambda result: "")
  monkeypatch.setattr(time, "sleep", naps.append)
  config = os.path.join(REPO, "configs", "digits.py") + ":tiny"
  args = [f"--config={config}", f"--workdir={tmp_path}", "--shard=1/2", "--poll_s=7"]
  run_launcher("frontier", args)
  assert calls == [frontier.Shard(1, 2)] * 3 and naps == [7, 7]


def test_merge_keeps_the_methods_named_per_frontier(tmp_path, run_launcher):
  def frontier_json(name, points, **fields):
    result = {
      "dataset": "digits",
      "command": f"python launch/frontier.py --workdir={name}",
      "reference_flops": 1e9,
      "reference_steps": 6,
      "source_share": 0.5,
      "distill_weight": 0.5,
      "points": [
        {
          "method": m,
          "budget": 1.0,
          "budget_flops": 1e9,
          "train_flops": 1e9,
          "steps": 6,
          "seed": 0,
          "wall_s": 1.0,
          "bits_per_dim": {"mean": bits, "per_task": {}},
        }
        for m, bits in points
      ],
      **fields,
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(result))
    return str(path)

  old = frontier_json("old", [("projectable", 2.0), ("universal", 1.9), ("specialists", 1.95)])
  new = frontier_json("new", [("projectable", 1.8)], projector_lr_scale=0.3)
  with pytest.raises(app.UsageError, match="different projector_lr_scale"):
    run_launcher("merge_frontiers", [f"--frontiers={old},{new}", f"--workdir={tmp_path / 'a'}"])
  out = tmp_path / "merged"
  args = [f"--frontiers={old},{new}", "--methods=universal+specialists,all", f"--workdir={out}"]
  run_launcher("merge_frontiers", args)
  merged = json.loads((out / "frontier.json").read_text())
  assert sorted((p["method"], p["bits_per_dim"]["mean"]) for p in merged["points"]) == [
    ("projectable", 1.8),
    ("specialists", 1.95),
    ("universal", 1.9),
  ]
  with pytest.raises(app.UsageError, match="--methods has 1 entries for 2 --frontiers"):
    run_launcher("merge_frontiers", [f"--frontiers={old},{new}", "--methods=all", "--workdir=x"])
  with pytest.raises(app.UsageError, match=r"--methods=source of .*old\.json: no points of"):
    run_launcher(
      "merge_frontiers", [f"--frontiers={old},{new}", "--methods=source,all", "--workdir=x"]
    )
