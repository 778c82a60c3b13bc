"""Config validation: every bad value names its field before any work starts."""

import os

import pytest

from configs import digits
from projectable import config_lib, train

BAD_VALUES = [
  ("mode", "teacher", "config.mode"),
  ("small.d", 256, "config.small.d"),
  ("model.heads", 5, "config.model.heads"),
  ("small.heads", 3, "config.small.heads"),
  ("projector.rank", -1, "config.projector.rank"),
  ("projector.form", "dense", "config.projector.form"),
  ("small.depth", 3, "config.small.depth"),
  ("train.learning_rate", -0.1, "config.train.learning_rate"),
  ("train.num_steps", 0, "config.train.num_steps"),
  ("model.dropout", 1.5, "config.model.dropout"),
  ("mesh", "data:3,model:2", "config.mesh"),
  ("train.examples_per_task", 3, "config.train.examples_per_task"),
]


@pytest.mark.parametrize("field,value,message", BAD_VALUES)
def test_bad_value_raises_naming_the_field_before_any_work(tmp_path, field, value, message):
  config = digits.get_config("tiny")
  if field == "train.examples_per_task":
    config.mesh = "data:2,model:1"
  section, _, name = field.rpartition(".")
  (config[section] if section else config)[name] = value
  workdir = os.path.join(tmp_path, "run")
  with pytest.raises(ValueError, match=message.replace(".", r"\.")):
    train.train_and_evaluate(config, workdir)
  assert not os.path.exists(workdir)


def test_defaults_and_variants_validate():
  for variant in (None, "tiny", "variant=tiny"):
    config_lib.validate(digits.get_config(variant))
  with pytest.raises(ValueError, match="unknown config variant"):
    digits.get_config("huge")
