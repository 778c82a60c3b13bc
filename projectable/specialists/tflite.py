"""Specialists as LiteRT (TFLite) flatbuffers for on-device scoring and sampling.

``model.tflite`` has three signatures, all float32 with the weights baked in as
constants (L = seq_len, V = vocab_size, B = the ``batch`` fixed at conversion,
``DEFAULT_BATCH`` unless given; LiteRT's converter rejects the dynamic gathers a
symbolic batch lowers to, so B is static):

- ``serving_default``: ``tokens`` (1, L) int32 -> ``logits`` (1, L, V), exactly
  ``model.apply``: logits[0, i] predict pixel i from the pixels before it.
- ``logits``: the same on a batch, ``tokens`` (B, L) -> ``logits`` (B, L, V).
- ``decode``: one position of B sequences with a KV cache (``core.decode.step``):
  ``token`` (B,) int32, the pixels at ``position - 1`` (ignored at 0),
  ``position`` () int32, ``kv_cache`` (depth, 2, B, heads, L, head_dim) float32
  (zeros at position 0; [layer, 0] keys, [layer, 1] values) -> ``logits`` (B, V)
  for pixel ``position`` and the updated ``kv_cache`` to feed back. Sampling an
  image is L calls, one per pixel (``litert_sample``).

The path is ``jax2tf.convert`` -> ``tf.saved_model.save`` (``saved_model/``) ->
``tf.lite.TFLiteConverter.from_saved_model`` (``model.tflite``). TensorFlow,
LiteRT and their converters are imported on first use only.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import os
import shutil
import sys

import jax
import numpy as np

from projectable.core import decode, model
from projectable.core.model import ModelConfig

TFLITE_FILE = "model.tflite"
SAVED_MODEL_DIR = "saved_model"
SIGNATURE = "serving_default"  # (1, L) tokens -> logits.
BATCHED_SIGNATURE = "logits"  # (B, L) tokens -> logits.
DECODE_SIGNATURE = "decode"  # (token, position, kv_cache) -> (logits, kv_cache).
DEFAULT_BATCH = 8
# What converting and checking need: the `tflite` extra (`pip install 'projectable[tflite]'`).
EXTRA_MODULES = ("tensorflow", "ai_edge_litert")


def require() -> None:
  """Raises ValueError (a user error) naming the ``tflite`` extra unless it is installed."""
  missing = [m for m in EXTRA_MODULES if importlib.util.find_spec(m) is None]
  if missing:
    raise ValueError(
      f"--format=tflite needs {' and '.join(missing)}, which the core install lacks: "
      "pip install 'projectable[tflite]' (or -e '.[tflite]' in a checkout)"
    )


def _import_quietly(name: str):
  """``importlib.import_module(name)`` with the process's stderr (fd 2) closed off meanwhile:
  TensorFlow's and LiteRT's C++ start-up notices (oneDNN, absl's pre-init warning) bypass
  Python logging and TF_CPP_MIN_LOG_LEVEL. An import error still raises, after fd 2 is back."""
  sys.stderr.flush()
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    return importlib.import_module(name)
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def convert(cfg: ModelConfig, params: dict, directory: str, batch: int = DEFAULT_BATCH) -> str:
  """Writes ``directory/saved_model/`` and ``directory/model.tflite``; returns the latter.

  ``batch`` is the B of the ``logits`` and ``decode`` signatures.
  """
  tf = _import_quietly("tensorflow")
  from jax.experimental import jax2tf

  if cfg.num_classes:
    raise ValueError(
      f"only unconditional specialists convert (num_classes=0), got num_classes={cfg.num_classes}"
    )
  if batch < 1:
    raise ValueError(f"batch must be at least 1, got {batch}")
  params = jax.device_get(params)
  # TFLite's kernels take no bfloat16 and no cuDNN attention: a specialist trained with either
  # runs float32 einsum attention there (its logits then differ from JAX's by bfloat16 rounding).
  cfg = dataclasses.replace(cfg, compute_dtype="float32", attention="einsum")
  logits_fn = jax2tf.convert(lambda tokens: model.apply(cfg, params, tokens), with_gradient=False)
  step_fn = jax2tf.convert(
    lambda token, position, kv_cache: decode.step(cfg, params, token, position, kv_cache),
    with_gradient=False,
  )

  def tokens_spec(rows: int) -> list:
    return [tf.TensorSpec((rows, cfg.seq_len), tf.int32, name="tokens")]

  def step(token, position, kv_cache):
    logits, kv_cache = step_fn(token, position, kv_cache)
    return {"logits": logits, "kv_cache": kv_cache}

  module = tf.Module()
  wrap = lambda tokens: {"logits": logits_fn(tokens)}
  module.logits = tf.function(wrap, autograph=False, input_signature=tokens_spec(1))
  module.batched = tf.function(wrap, autograph=False, input_signature=tokens_spec(batch))
  module.decode = tf.function(
    step,
    autograph=False,
    input_signature=[
      tf.TensorSpec((batch,), tf.int32, name="token"),
      tf.TensorSpec((), tf.int32, name="position"),
      tf.TensorSpec(decode.cache_shape(cfg, batch), tf.float32, name="kv_cache"),
    ],
  )
  signatures = {
    SIGNATURE: module.logits.get_concrete_function(),
    BATCHED_SIGNATURE: module.batched.get_concrete_function(),
    DECODE_SIGNATURE: module.decode.get_concrete_function(),
  }
  os.makedirs(directory, exist_ok=True)
  saved = os.path.join(directory, SAVED_MODEL_DIR)
  shutil.rmtree(saved, ignore_errors=True)
  tf.saved_model.save(module, saved, signatures=signatures)
  converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=list(signatures))
  flatbuffer = converter.convert()
  path = os.path.join(directory, TFLITE_FILE)
  with open(path + ".tmp", "wb") as f:
    f.write(flatbuffer)
  os.replace(path + ".tmp", path)
  return path


def _runner(path: str, signature: str):
  interpreter = _import_quietly("ai_edge_litert.interpreter").Interpreter
  return interpreter(model_path=path).get_signature_runner(signature)


def litert_logits(path: str, tokens_BxL: np.ndarray) -> np.ndarray:
  """Logits (B, L, V) of the ``model.tflite`` at ``path``, one image at a time, via LiteRT."""
  runner = _runner(path, SIGNATURE)
  rows = np.asarray(tokens_BxL, np.int32)
  return np.concatenate([runner(tokens=row[None])["logits"] for row in rows])


def signature_batch(path: str) -> int:
  """The B that the ``model.tflite`` at ``path`` was converted with."""
  return int(_runner(path, DECODE_SIGNATURE).get_input_details()["token"]["shape"][0])


def litert_batched_logits(path: str, tokens_NxL: np.ndarray) -> np.ndarray:
  """Logits (N, L, V) of any number of images through the ``logits`` signature, B at a time."""
  runner = _runner(path, BATCHED_SIGNATURE)
  batch = int(runner.get_input_details()["tokens"]["shape"][0])
  tokens = np.asarray(tokens_NxL, np.int32)
  pad = -len(tokens) % batch  # The last chunk is filled with zeros, their logits dropped.
  tokens = np.concatenate([tokens, np.zeros((pad, tokens.shape[1]), np.int32)])
  out = [runner(tokens=chunk)["logits"] for chunk in np.split(tokens, len(tokens) // batch)]
  return np.concatenate(out)[: len(tokens) - pad]


def litert_decode_logits(path: str, tokens_BxL: np.ndarray) -> np.ndarray:
  """Logits (B, L, V) of B given images from the ``decode`` signature, one call per position."""
  runner = _runner(path, DECODE_SIGNATURE)
  cache = np.zeros(runner.get_input_details()["kv_cache"]["shape"], np.float32)
  tokens = np.asarray(tokens_BxL, np.int32)
  rows = []
  for i in range(tokens.shape[1]):
    prev = tokens[:, i - 1] if i else np.zeros(len(tokens), np.int32)
    out = runner(token=prev, position=np.int32(i), kv_cache=cache)
    rows.append(out["logits"])
    cache = out["kv_cache"]
  return np.stack(rows, axis=1)


def litert_sample(path: str, seed: int = 0, temperature: float = 1.0) -> np.ndarray:
  """B images (B, L) int32 sampled through the ``decode`` signature, one call per pixel.

  The reference loop of an on-device sampler. Token i is drawn as
  ``sampling.sample`` draws it, ``jax.random.categorical(fold_in(key(seed), i),
  logits / temperature)`` over the batch (argmax at temperature 0), so for the
  same seed and ``num`` = B it gives JAX's tokens up to float32 rounding.
  """
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
  runner = _runner(path, DECODE_SIGNATURE)
  inputs = runner.get_input_details()
  batch, seq_len = int(inputs["token"]["shape"][0]), int(inputs["kv_cache"]["shape"][4])
  cache = np.zeros(inputs["kv_cache"]["shape"], np.float32)
  key, token = jax.random.key(seed), np.zeros(batch, np.int32)
  tokens = np.zeros((batch, seq_len), np.int32)
  for i in range(seq_len):
    out = runner(token=token, position=np.int32(i), kv_cache=cache)
    logits, cache = out["logits"], out["kv_cache"]
    if temperature == 0:
      token = np.argmax(logits, axis=-1).astype(np.int32)
    else:
      token = np.asarray(_draw(key, np.int32(i), logits, float(temperature)), np.int32)
    tokens[:, i] = token
  return tokens


@functools.partial(jax.jit, static_argnames="temperature")
def _draw(key: jax.Array, i: jax.Array, logits_BxV: jax.Array, temperature: float) -> jax.Array:
  """``sampling.sample``'s draw of token ``i``: categorical under ``fold_in(key, i)``."""
  return jax.random.categorical(jax.random.fold_in(key, i), logits_BxV / temperature, axis=-1)
