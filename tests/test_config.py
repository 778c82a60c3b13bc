"""Config validation: every bad value names its field before any work starts."""

import os
import re

import jax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ml_collections import ConfigDict

from configs import digits
from projectable.core.projector import FORMS
from projectable.experiments.run import train_and_evaluate
from projectable.training import config as config_lib
from projectable.training import modes, summaries, typed_config, validation

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
  ("train.remat", True, "config.train.remat"),  # With the default unrolled layers.
  ("train.attention", "flash", "config.train.attention"),
  ("train.profile_steps", -1, "config.train.profile_steps"),
  ("train.attention", "cudnn", "config.train.attention"),  # Needs bfloat16 (and a GPU).
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
    train_and_evaluate(config, workdir)
  assert not os.path.exists(workdir)


def test_cudnn_attention_off_gpu_raises_before_any_work(tmp_path):
  config = digits.get_config("tiny")
  config.train.update(attention="cudnn", compute_dtype="bfloat16")
  validation.validate(config)  # A valid config (launch/plan.py plans it anywhere) ...
  workdir = os.path.join(tmp_path, "run")
  with pytest.raises(ValueError, match=r"config\.train\.attention=.*NVIDIA GPUs.*'cpu'"):
    train_and_evaluate(config, workdir)  # ... that this CPU cannot run.
  assert not os.path.exists(workdir)


def test_cudnn_attention_needs_head_widths_that_are_multiples_of_8():
  config = digits.get_config("tiny")  # Heads 8 and 8 wide: valid ...
  config.train.update(attention="cudnn", compute_dtype="bfloat16")
  validation.validate(config)
  config.small.heads = 4  # ... 16 / 4 = 4 wide: not for cuDNN.
  with pytest.raises(ValueError, match=r"config\.small\.heads=4 .*multiples of 8"):
    validation.validate(config)


def test_defaults_and_variants_validate():
  for variant in (None, "tiny", "variant=tiny"):
    validation.validate(digits.get_config(variant))
  with pytest.raises(ValueError, match="unknown config variant"):
    digits.get_config("huge")


NOT_INT = st.one_of(
  st.none(), st.booleans(), st.floats(), st.text(max_size=4), st.lists(st.integers(), max_size=2)
)
NOT_NUMBER = st.one_of(
  st.none(), st.booleans(), st.text(max_size=4), st.sampled_from([float("nan"), float("inf")])
)
NOT_STR = st.one_of(st.none(), st.booleans(), st.integers(), st.floats())
NEGATIVE = st.one_of(st.integers(max_value=-1), st.floats(max_value=-1e-6), st.just(-float("inf")))


def _not_positive_int():
  return NOT_INT | st.integers(max_value=0)


def _other_text(allowed):
  return NOT_STR | st.text(max_size=12).filter(lambda s: s not in allowed)


def _bad_meshes():
  many = st.tuples(st.integers(1, 9), st.integers(1, 9)).filter(
    lambda ab: ab[0] * ab[1] > jax.device_count()
  )
  return st.one_of(
    NOT_STR,
    st.text(alphabet="datmol,-0123456789 ", max_size=12),  # No ':' at all.
    st.text(alphabet="abcxyz", min_size=1).map(lambda a: f"{a}:1"),  # Unknown axis.
    st.text(alphabet="x.e+", min_size=1).map(lambda s: f"data:{s}"),  # Not an integer.
    st.integers(max_value=0).filter(lambda n: n != -1).map(lambda n: f"data:{n}"),
    st.sampled_from(["data:1,data:1", "data:-1,model:-1", "data:-1,model:3"]),
    many.map(lambda ab: f"data:{ab[0]},model:{ab[1]}"),  # More devices than there are.
  )


# Values that are bad for the field alone, whatever the other fields hold.
BAD = {
  "mode": _other_text(tuple(modes.MODES)),
  "seed": NOT_INT | st.integers(max_value=-1) | st.integers(min_value=2**31),
  "data.split_seed": NOT_INT | st.integers(max_value=-1),
  "lambda_source": NOT_NUMBER | NEGATIVE,
  "restore_step": NOT_INT | st.integers(max_value=-2),
  "mesh": _bad_meshes(),
  "data.levels": NOT_INT | st.integers(max_value=1),
  "data.downsample": _not_positive_int(),
  "data.name": NOT_STR,
  "data.path": NOT_STR,
  "data.tasks": NOT_STR,
  "data.val_fraction": NOT_NUMBER | st.floats().filter(lambda x: not 0 < x < 0.5),
  "data.test_fraction": st.integers() | st.floats(min_value=0.5),
  "train.num_steps": _not_positive_int(),
  "train.batch_tasks": _not_positive_int(),
  "train.examples_per_task": _not_positive_int(),
  "train.eval_every": _not_positive_int(),
  "train.checkpoint_every": _not_positive_int(),
  "train.keep_checkpoints": _not_positive_int(),
  "train.max_skipped_steps": _not_positive_int(),
  "train.learning_rate": NOT_NUMBER | NEGATIVE | st.just(0.0),
  "train.warmup_steps": NOT_INT | st.integers(max_value=-1) | st.integers(min_value=6),
  "train.weight_decay": NOT_NUMBER | NEGATIVE,
  "train.grad_clip": NOT_NUMBER | NEGATIVE | st.just(0.0),
  "train.projector_lr_scale": NOT_NUMBER.filter(lambda v: v is not None) | NEGATIVE | st.just(0.0),
  "projector.scales_about_one": st.none() | st.integers() | st.text(max_size=4),
  "projector.match_rms": st.none() | st.integers() | st.text(max_size=4),
  "train.freeze_source": st.none() | st.integers() | st.text(max_size=4),
  "train.unroll_layers": st.none() | st.integers() | st.text(max_size=4),
  "train.remat": st.none() | st.integers() | st.text(max_size=4),
  "train.fast_compile": st.none() | st.integers() | st.text(max_size=4),
  "train.nonfinite": _other_text(validation.NONFINITE_POLICIES),
  "train.compute_dtype": _other_text(validation.COMPUTE_DTYPES),
  "model.d": _not_positive_int(),
  "model.heads": _not_positive_int(),
  "small.depth": _not_positive_int(),
  "small.dropout": NOT_NUMBER | st.floats().filter(lambda x: not 0 <= x < 1),
  "source_examples_per_task": NOT_INT | st.integers(max_value=0).filter(lambda n: n != -1),
  "projector.rank": NOT_INT | st.integers(max_value=-1),
  "projector.form": _other_text(FORMS),
  "projector.code_std": NOT_NUMBER | NEGATIVE,
  "samples.temperature": NOT_NUMBER | NEGATIVE,
  "samples.num_per_task": _not_positive_int(),
  "sharding.rules.heads": _other_text(("", "data", "model")).filter(lambda v: v is not None),
  "init.source_workdir": NOT_STR,
}


def _with(field: str, value) -> ConfigDict:
  """The tiny config with ``field`` set to ``value``, whatever its type."""
  tree = digits.get_config("tiny").to_dict()
  *sections, name = field.split(".")
  node = tree
  for section in sections:
    node = node[section]
  node[name] = value
  return ConfigDict(tree)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.sampled_from(sorted(BAD)).flatmap(lambda f: st.tuples(st.just(f), BAD[f])))
def test_any_bad_value_raises_a_value_error_naming_its_field(field_and_value):
  field, value = field_and_value
  with pytest.raises(ValueError, match=rf"config\.{re.escape(field)}\b"):
    validation.validate(_with(field, value))


def test_the_projectors_rate_defaults_by_lambda_and_old_runs_keep_theirs():
  config = digits.get_config("tiny")
  assert config.train.projector_lr_scale is None
  rates = {}
  for lambda_source in (0.0, 1.0):
    config.lambda_source = lambda_source
    rates[lambda_source] = typed_config.StepConfig.from_config(config).optimizer.projector_lr_scale
    # TensorBoard's HParams show the rate the run trained at, not None.
    assert summaries.hparams(config)["train.projector_lr_scale"] == rates[lambda_source]
  assert rates == {0.0: typed_config.LAMBDA0_PROJECTOR_LR_SCALE, 1.0: 1.0}
  config.train.projector_lr_scale = 2.0  # An explicit value wins at any λ.
  assert typed_config.StepConfig.from_config(config).optimizer.projector_lr_scale == 2.0
  # A run saved before the field existed trained its projectors at the source's rate.
  saved = config.to_dict()
  del saved["train"]["projector_lr_scale"]
  assert config_lib.with_defaults(saved)["train"]["projector_lr_scale"] == 1.0
  # ... and one saved before match_rms existed projected without rescaling.
  del saved["projector"]["match_rms"]
  assert config_lib.with_defaults(saved)["projector"]["match_rms"] is False
