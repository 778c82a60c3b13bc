"""KV-cached sampling against the naive sampler, and the picture helpers."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from projectable import data
from projectable.core import model, sampling
from projectable.specialists import images

UNCOND = model.ModelConfig(
  vocab_size=17, seq_len=64, num_classes=0, d=16, heads=2, mlp_dim=32, depth=2
)
COND = model.ModelConfig(
  vocab_size=17, seq_len=64, num_classes=3, d=16, heads=2, mlp_dim=32, depth=2
)
TASK = jnp.array([0.5, 0.5, 0.0])


NUM = 4  # One batch size throughout, so tests share compiled samplers.


@functools.cache
def sharp_params(cfg: model.ModelConfig, seed: int = 0) -> dict:
  """Random weights of std 0.5 (scales around 1), so attention and the task visibly matter."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: model.init_params(cfg, jax.random.key(0)))
  leaves, treedef = jax.tree.flatten(shapes)
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(shapes)]
  noisy = [
    jnp.asarray(rng.normal(float("scale" in path), 0.5, x.shape), jnp.float32)
    for path, x in zip(paths, leaves, strict=True)
  ]
  return jax.tree.unflatten(treedef, noisy)


@pytest.mark.parametrize(("cfg", "task"), [(UNCOND, None), (COND, TASK)], ids=["uncond", "cond"])
def test_cached_sampling_matches_naive(cfg, task):
  params = sharp_params(cfg)
  key = jax.random.key(7)
  cached = sampling.sample(cfg, params, NUM, key, task, temperature=1.0)
  naive = sampling.sample_naive(cfg, params, NUM, key, task, temperature=1.0)
  np.testing.assert_array_equal(np.asarray(cached), np.asarray(naive))
  assert len(np.unique(np.asarray(cached))) > 3  # Real draws, not a constant sequence.


@pytest.mark.parametrize(("cfg", "task"), [(UNCOND, None), (COND, TASK)], ids=["uncond", "cond"])
def test_cached_log_probs_match_full_forward(cfg, task):
  params = sharp_params(cfg)
  task_BxC = None if task is None else jnp.broadcast_to(task[None], (NUM, cfg.num_classes))
  tokens, logp = sampling._sample_cached(cfg, params, NUM, jax.random.key(0), task_BxC, 1.0)
  expected = -model.token_nll(model.apply(cfg, params, tokens, task_BxC), tokens)
  np.testing.assert_allclose(np.asarray(logp), np.asarray(expected), atol=1e-4, rtol=1e-4)


def test_bfloat16_products_sample_as_their_full_forward_near_float32():
  """``compute_dtype='bfloat16'``: the cached sampler (bfloat16 cache) scores its draws as
  the bfloat16 full forward does, and those differ from float32, though not by much."""
  bf16 = dataclasses.replace(UNCOND, compute_dtype="bfloat16")
  params = sharp_params(UNCOND)
  tokens, logp = sampling._sample_cached(bf16, params, NUM, jax.random.key(0), None, 1.0)
  full_bf16, full_f32 = (
    -model.token_nll(model.apply(cfg, params, tokens), tokens) for cfg in (bf16, UNCOND)
  )
  np.testing.assert_allclose(np.asarray(logp), np.asarray(full_bf16), atol=0.05)
  gap = np.abs(np.asarray(full_bf16) - np.asarray(full_f32))
  assert 1e-3 < gap.max() < 0.5, gap.max()


def test_greedy_is_deterministic_and_matches_naive():
  params = sharp_params(UNCOND)
  a = sampling.sample(UNCOND, params, NUM, jax.random.key(0), temperature=0.0)
  b = sampling.sample(UNCOND, params, NUM, jax.random.key(1), temperature=0.0)
  naive = sampling.sample_naive(UNCOND, params, NUM, jax.random.key(2), temperature=0.0)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(naive))
  np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(a[1]))


def test_samples_shape_dtype_range_and_task_dependence():
  params = sharp_params(COND)
  key = jax.random.key(5)
  tokens = np.asarray(sampling.sample(COND, params, NUM, key, TASK))
  assert tokens.shape == (NUM, COND.seq_len) and tokens.dtype == np.int32
  assert tokens.min() >= 0 and tokens.max() < COND.vocab_size
  other = np.asarray(sampling.sample(COND, params, NUM, key, jnp.array([0.0, 0.0, 1.0])))
  assert (tokens != other).any()


def test_compiled_once_per_config():
  sampling.sample(UNCOND, sharp_params(UNCOND), NUM, jax.random.key(0))
  size = sampling._sample_cached._cache_size()
  sampling.sample(UNCOND, sharp_params(UNCOND, seed=1), NUM, jax.random.key(1))
  assert sampling._sample_cached._cache_size() == size


def test_argument_errors():
  params = sharp_params(COND)
  with pytest.raises(ValueError, match="task descriptor"):
    sampling.sample(COND, params, NUM, jax.random.key(0))
  with pytest.raises(ValueError, match="expected"):
    sampling.sample(COND, params, NUM, jax.random.key(0), jnp.ones(4))
  with pytest.raises(ValueError, match="no task descriptor"):
    sampling.sample(UNCOND, sharp_params(UNCOND), NUM, jax.random.key(0), TASK)
  with pytest.raises(ValueError, match="temperature"):
    sampling.sample(COND, params, NUM, jax.random.key(0), TASK, temperature=-1.0)


def test_tokens_to_images_inverts_quantisation(load_digits):
  digits = load_digits()
  tokens = digits.test.tokens[:10]
  pictures = images.tokens_to_images(tokens, digits.image_shape, digits.levels)
  assert pictures.shape == (10, 8, 8, 1) and pictures.dtype == np.uint8
  assert pictures.min() == 0 and pictures.max() == 255
  requantised = data.quantise(pictures, 255.0, digits.levels).reshape(10, -1)
  np.testing.assert_array_equal(requantised, tokens)


def test_save_grid_writes_expected_png(tmp_path):
  rng = np.random.default_rng(0)
  pictures = rng.integers(0, 256, (10, 8, 8, 1), dtype=np.uint8)
  path = tmp_path / "sub" / "grid.png"
  images.save_grid(pictures, str(path), cols=4, scale=3)
  with Image.open(path) as png:
    assert png.format == "PNG" and png.mode == "L"
    assert png.size == (4 * 24 + 3, 3 * 24 + 2)
    canvas = np.asarray(png)
  np.testing.assert_array_equal(canvas[:24, :24], pictures[0, :, :, 0].repeat(3, 0).repeat(3, 1))
  np.testing.assert_array_equal(
    canvas[25:49, 25:49], pictures[5, :, :, 0].repeat(3, 0).repeat(3, 1)
  )
  assert (canvas[:, 24] == images.SEPARATOR).all()
  assert (canvas[50:, 50:] == images.SEPARATOR).all()  # Two empty cells in the last row.


def test_save_grid_default_scale_rgb(tmp_path):
  pictures = np.zeros((3, 8, 8, 3), np.uint8)
  images.save_grid(pictures, str(tmp_path / "rgb.png"))
  with Image.open(tmp_path / "rgb.png") as png:
    assert png.mode == "RGB"
    assert png.size == images.grid_size(3, 8, 8, cols=2, scale=8) == (2 * 64 + 1, 2 * 64 + 1)


def test_save_bar_chart(tmp_path):
  series = {"projectable": {"0": 1.2, "1": 1.5, "2": 1.1}, "source (joint)": {"0": 1.0, "1": 1.3}}
  path = tmp_path / "eval" / "bits_per_dim.png"
  images.save_bar_chart(series, str(path), title="digits", ylabel="bits/dim")
  with Image.open(path) as png:
    assert png.format == "PNG" and png.size[0] >= 400 and png.size[1] >= 300
  with pytest.raises(ValueError):
    images.save_bar_chart({}, str(path), title="empty", ylabel="bits/dim")
