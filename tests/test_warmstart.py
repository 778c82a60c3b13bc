"""Starting runs from a trained source in another workdir."""

import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pytest

from projectable import data as data_lib
from projectable.core import model, projector
from projectable.training import warmstart
from projectable.training.modes import make_method
from projectable.training.restore import restore_params


@pytest.mark.parametrize("mode", ["specialists", "universal", "projectable"])
def test_warm_start_is_the_weight_selection_of_the_trained_source(
  tiny_config, source_workdir, mode
):
  tiny_config.mode = mode
  tiny_config.init.source_workdir = source_workdir
  data = data_lib.load(tiny_config.data)
  method = make_method(tiny_config, data)
  source = warmstart.load_source(tiny_config, data)
  _, trained, _ = restore_params(_source_config(tiny_config), source_workdir)
  jax.tree.map(np.testing.assert_array_equal, source, trained["source"])
  params = warmstart.warm_params(method, method.init(jax.random.key(0)), source)
  tokens = data.test.tokens[:4]
  task = data.task_descriptors()[2]
  selected = projector.select_subnetwork(source, method.src, method.small, task)
  unconditional = dataclasses.replace(method.small, num_classes=0)
  expected = model.apply(unconditional, selected, tokens)
  if mode == "specialists":
    got = model.apply(method.small, jax.tree.map(lambda p: p[2], params["small"]), tokens)
  elif mode == "universal":
    got = model.apply(method.small, params["small"], tokens, np.tile(task, (4, 1)))
  else:
    got = model.apply(method.small, method.specialist(params, 2, task), tokens)
  np.testing.assert_allclose(got, expected, atol=1e-5)


def _source_config(config):
  source_config = config.copy_and_resolve_references()
  source_config.mode = "source"
  return source_config


def test_a_source_written_before_a_config_field_existed_still_starts_runs(
  tiny_config, source_workdir, tmp_path
):
  old = str(tmp_path / "old_source")
  shutil.copytree(source_workdir, old)
  with open(os.path.join(old, "config.json")) as f:
    saved = json.load(f)
  del saved["train"]["unroll_layers"]
  with open(os.path.join(old, "config.json"), "w") as f:
    json.dump(saved, f)
  tiny_config.mode, tiny_config.init.source_workdir = "specialists", old
  source = warmstart.load_source(tiny_config, data_lib.load(tiny_config.data))
  _, trained, _ = restore_params(_source_config(tiny_config), source_workdir)
  jax.tree.map(np.testing.assert_array_equal, source, trained["source"])


def test_mismatched_source_architecture_is_refused(tiny_config, source_workdir):
  tiny_config.mode = "specialists"
  tiny_config.init.source_workdir = source_workdir
  tiny_config.model.mlp_dim = 128
  with pytest.raises(ValueError, match=r"config\.model\.mlp_dim=128"):
    warmstart.load_source(tiny_config, data_lib.load(tiny_config.data))


def test_missing_source_workdir_says_how_to_fix(tiny_config, tmp_path):
  tiny_config.init.source_workdir = str(tmp_path / "nothing")
  with pytest.raises(FileNotFoundError, match="mode=source"):
    warmstart.load_source(tiny_config, data_lib.load(tiny_config.data))
