"""Exported specialists: save/load round trip, standalone loading, clear errors."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from projectable.core import model, sampling
from projectable.core.digests import DamagedCheckpointError
from projectable.specialists.artifact import Specialist, load_specialist, save_specialist

CFG = model.ModelConfig(
  vocab_size=17, seq_len=64, num_classes=0, d=16, heads=2, mlp_dim=32, depth=2
)
META = {
  "dataset": "digits",
  "image_shape": [8, 8, 1],
  "levels": 17,
  "task": "3",
  "task_classes": [3],
  "class_names": ["3"],
  "source_step": 120,
  "test_bits_per_dim": 1.25,
}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_params(cfg: model.ModelConfig, seed: int) -> dict:
  """Random weights (numpy-built, no compilation), std 0.3, scales around 1."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: model.init_params(cfg, jax.random.key(0)))
  return jax.tree_util.tree_map_with_path(
    lambda p, x: jnp.asarray(
      rng.normal(float("scale" in jax.tree_util.keystr(p)), 0.3, x.shape), jnp.float32
    ),
    shapes,
  )


@pytest.fixture(scope="module")
def digits_test_tokens(load_digits):
  return load_digits().test.tokens[:32]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """(directory, params) of one specialist saved once for the module."""
  params = random_params(CFG, 0)
  directory = str(tmp_path_factory.mktemp("export") / "3")
  save_specialist(directory, CFG, params, META)
  return directory, params


def test_round_trip_gives_identical_scores(saved, digits_test_tokens):
  directory, params = saved
  spec, meta = load_specialist(directory)
  assert spec.cfg == CFG and meta == META
  jax.tree.map(
    lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), spec.params, params
  )
  original = Specialist(CFG, params)
  logits = np.asarray(spec.logits(digits_test_tokens), np.float64)
  np.testing.assert_array_equal(logits, np.asarray(original.logits(digits_test_tokens)))
  bpd = np.asarray(spec.bits_per_dim(digits_test_tokens))
  np.testing.assert_array_equal(bpd, np.asarray(original.bits_per_dim(digits_test_tokens)))
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, digits_test_tokens[..., None], axis=-1)[..., 0]
  np.testing.assert_allclose(bpd, nll.mean(-1) / np.log(2.0), rtol=1e-5)
  assert bpd.shape == (32,) and (bpd > 0).all()
  tokens = spec.sample(4, seed=3)
  np.testing.assert_array_equal(
    np.asarray(tokens), np.asarray(sampling.sample(CFG, params, 4, jax.random.key(3)))
  )


def test_cudnn_trained_specialist_loads_with_einsum_attention_off_gpu(tmp_path, digits_test_tokens):
  params = random_params(CFG, 1)
  directory = str(tmp_path / "gpu_trained")
  save_specialist(directory, dataclasses.replace(CFG, attention="cudnn"), params, META)
  with open(os.path.join(directory, "config.json")) as f:
    assert json.load(f)["model"]["attention"] == "cudnn"
  spec, _ = load_specialist(directory)
  assert spec.cfg == CFG  # On this CPU: the same model with the einsum attention.
  np.testing.assert_array_equal(
    np.asarray(spec.bits_per_dim(digits_test_tokens)),
    np.asarray(Specialist(CFG, params).bits_per_dim(digits_test_tokens)),
  )


def test_config_json_is_plain_json(saved):
  directory, _ = saved
  with open(os.path.join(directory, "config.json")) as f:
    config = json.load(f)
  assert config["format_version"] == 1
  assert config["model"]["d"] == CFG.d and config["model"]["num_classes"] == 0
  assert config["task"] == "3" and config["test_bits_per_dim"] == 1.25
  assert sorted(os.listdir(directory)) == ["config.json", "params"]


def test_loads_and_scores_without_training_modules(saved, digits_test_tokens, tmp_path):
  directory, _ = saved
  tokens_path = str(tmp_path / "tokens.npy")
  np.save(tokens_path, digits_test_tokens)
  script = (
    "import json, sys, numpy as np\n"
    "from projectable import load_specialist\n"
    f"spec, meta = load_specialist({directory!r})\n"
    f"bpd = spec.bits_per_dim(np.load({tokens_path!r}))\n"
    "print(json.dumps({'bpd': np.asarray(bpd).tolist(), 'task': meta['task'],\n"
    "  'loaded': sorted(m for m in sys.modules if m.startswith('projectable'))}))\n"
  )
  env = {**os.environ, "PYTHONPATH": ROOT}
  result = subprocess.run(
    [sys.executable, "-c", script],
    capture_output=True,
    text=True,
    env=env,
    cwd=str(tmp_path),
    timeout=120,
    check=False,
  )
  assert result.returncode == 0, result.stderr
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out["task"] == "3"
  for forbidden in (
    "projectable.core.projector",
    "projectable.data",
    "projectable.training",
    "projectable.experiments",
  ):
    assert not any(m.startswith(forbidden) for m in out["loaded"]), forbidden
  spec, _ = load_specialist(directory)
  np.testing.assert_allclose(
    out["bpd"], np.asarray(spec.bits_per_dim(digits_test_tokens)), rtol=1e-6
  )


def test_refuses_to_overwrite_without_flag(saved, tmp_path, digits_test_tokens):
  _, params = saved
  directory = str(tmp_path / "spec")
  save_specialist(directory, CFG, params, META)
  other = random_params(CFG, 1)
  with pytest.raises(FileExistsError, match="--overwrite"):
    save_specialist(directory, CFG, other, META)
  spec, _ = load_specialist(directory)
  np.testing.assert_array_equal(
    np.asarray(spec.logits(digits_test_tokens)),
    np.asarray(Specialist(CFG, params).logits(digits_test_tokens)),
  )
  with open(os.path.join(directory, "notes.txt"), "w") as f:
    f.write("kept")
  save_specialist(directory, CFG, other, {**META, "task": "4"}, overwrite=True)
  spec, meta = load_specialist(directory)
  assert meta["task"] == "4" and os.path.exists(os.path.join(directory, "notes.txt"))
  np.testing.assert_array_equal(
    np.asarray(spec.logits(digits_test_tokens)),
    np.asarray(Specialist(CFG, other).logits(digits_test_tokens)),
  )


def _edit_config(directory: str, **changes) -> None:
  path = os.path.join(directory, "config.json")
  with open(path) as f:
    config = json.load(f)
  for key, value in changes.items():
    if key in CFG.__dataclass_fields__:
      config["model"][key] = value
    else:
      config[key] = value
  with open(path, "w") as f:
    json.dump(config, f)


@pytest.fixture
def copy_of_saved(saved, tmp_path):
  directory = str(tmp_path / "copy")
  save_specialist(directory, CFG, saved[1], META)
  return directory


def test_mismatched_shapes_name_the_weight(copy_of_saved):
  _edit_config(copy_of_saved, mlp_dim=48)
  with pytest.raises(
    ValueError,
    match=r"blocks/w1: \(2, 16, 32\) float32 but the config needs "
    r"\(2, 16, 48\)",
  ):
    load_specialist(copy_of_saved)


def test_unknown_format_version(copy_of_saved):
  _edit_config(copy_of_saved, format_version=2)
  with pytest.raises(ValueError, match="format_version 2"):
    load_specialist(copy_of_saved)


def test_bad_model_entry(copy_of_saved):
  _edit_config(copy_of_saved, model={"vocab_size": 17, "width": 3})
  with pytest.raises(ValueError, match="'model' must be an object"):
    load_specialist(copy_of_saved)


def test_unknown_compute_dtype(copy_of_saved):
  _edit_config(copy_of_saved, compute_dtype="float16")
  with pytest.raises(ValueError, match=r"bad 'model' entry: compute_dtype='float16'"):
    load_specialist(copy_of_saved)


def test_missing_pieces(copy_of_saved, tmp_path):
  with pytest.raises(FileNotFoundError, match="no specialist directory"):
    load_specialist(str(tmp_path / "nowhere"))
  os.rename(os.path.join(copy_of_saved, "params"), os.path.join(copy_of_saved, "moved"))
  with pytest.raises(FileNotFoundError, match="params/"):
    load_specialist(copy_of_saved)
  os.remove(os.path.join(copy_of_saved, "config.json"))
  with pytest.raises(FileNotFoundError, match=r"config\.json"):
    load_specialist(copy_of_saved)


def test_save_validates_inputs(saved, tmp_path):
  _, params = saved
  wide = model.ModelConfig(17, 64, 0, 24, 2, 32, 2)
  with pytest.raises(ValueError, match="token_embed"):
    save_specialist(str(tmp_path / "a"), wide, params, META)
  conditional = model.ModelConfig(17, 64, 10, 16, 2, 32, 2)
  with pytest.raises(ValueError, match="unconditional"):
    save_specialist(str(tmp_path / "b"), conditional, params, META)
  with pytest.raises(ValueError, match="reserved"):
    save_specialist(str(tmp_path / "c"), CFG, params, {"model": "x"})
  assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "c")


def test_scoring_checks_tokens(saved):
  spec, _ = load_specialist(saved[0])
  with pytest.raises(ValueError, match="shape"):
    spec.bits_per_dim(np.zeros((2, 63), np.int32))
  with pytest.raises(ValueError, match=r"\[0, 17\)"):
    spec.bits_per_dim(np.full((2, 64), 17, np.int32))


def test_flipped_bytes_in_the_weights_are_named_on_load(copy_of_saved, flip_middle_bytes):
  flip_middle_bytes(os.path.join(copy_of_saved, "params"))
  # Read back wrong (SHA-256) or not at all (a compressed block fails to decompress).
  with pytest.raises(
    DamagedCheckpointError, match=r"weights in .*params are damaged: .*(SHA-256|Error)"
  ):
    load_specialist(copy_of_saved)


@pytest.mark.parametrize("change", [{"heads": 4}, {"compute_dtype": "bfloat16"}, {"dropout": 0.3}])
def test_model_fields_edited_after_export_are_refused(copy_of_saved, change):
  _edit_config(copy_of_saved, **change)  # Same weight shapes: only the binding can tell.
  with pytest.raises(ValueError, match=r"config.json: its 'model' section .* changed after export"):
    load_specialist(copy_of_saved)


@pytest.mark.parametrize(
  "change, match",
  [
    ({"d": "32"}, r"model\.d='32' must be of type int"),
    ({"unroll": 1}, r"model\.unroll=1 must be of type bool"),
    ({"heads": 2.0}, r"model\.heads=2\.0 must be of type int"),
  ],
)
def test_mistyped_model_fields_name_config_json(copy_of_saved, change, match):
  _edit_config(copy_of_saved, **change)
  with pytest.raises(ValueError, match=rf"config\.json: {match}"):
    load_specialist(copy_of_saved)
