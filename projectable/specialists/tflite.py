"""Specialists as LiteRT (TFLite) flatbuffers for on-device scoring and sampling.

The converted function is a specialist's next-pixel logits at its fixed sequence
length with the full prefix, exactly ``model.apply``: ``tokens`` (1, L) int32 ->
``logits`` (1, L, V) float32, where logits[0, i] predicts pixel i from the
pixels before it. The weights are baked in as constants. The path is
``jax2tf.convert`` -> ``tf.saved_model.save`` (``saved_model/``) ->
``tf.lite.TFLiteConverter.from_saved_model`` (``model.tflite``). TensorFlow and
LiteRT are imported on first use only.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

import jax
import numpy as np

from projectable.core import model
from projectable.core.model import ModelConfig

TFLITE_FILE = "model.tflite"
SAVED_MODEL_DIR = "saved_model"
SIGNATURE = "serving_default"


def convert(cfg: ModelConfig, params: dict, directory: str) -> str:
  """Writes ``directory/saved_model/`` and ``directory/model.tflite``; returns the latter."""
  import tensorflow as tf
  from jax.experimental import jax2tf

  if cfg.num_classes:
    raise ValueError(
      f"only unconditional specialists convert (num_classes=0), got num_classes={cfg.num_classes}"
    )
  params = jax.device_get(params)
  # TFLite's kernels take no bfloat16 and no cuDNN attention: a specialist trained with either
  # runs float32 einsum attention there (its logits then differ from JAX's by bfloat16 rounding).
  cfg = dataclasses.replace(cfg, compute_dtype="float32", attention="einsum")
  logits_fn = jax2tf.convert(lambda tokens: model.apply(cfg, params, tokens), with_gradient=False)
  module = tf.Module()
  module.logits = tf.function(
    lambda tokens: {"logits": logits_fn(tokens)},
    autograph=False,
    input_signature=[tf.TensorSpec((1, cfg.seq_len), tf.int32, name="tokens")],
  )
  os.makedirs(directory, exist_ok=True)
  saved = os.path.join(directory, SAVED_MODEL_DIR)
  shutil.rmtree(saved, ignore_errors=True)
  tf.saved_model.save(module, saved, signatures={SIGNATURE: module.logits.get_concrete_function()})
  flatbuffer = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=[SIGNATURE]).convert()
  path = os.path.join(directory, TFLITE_FILE)
  with open(path + ".tmp", "wb") as f:
    f.write(flatbuffer)
  os.replace(path + ".tmp", path)
  return path


def litert_logits(path: str, tokens_BxL: np.ndarray) -> np.ndarray:
  """Logits (B, L, V) of the ``model.tflite`` at ``path``, one image at a time, via LiteRT."""
  from ai_edge_litert.interpreter import Interpreter

  runner = Interpreter(model_path=path).get_signature_runner(SIGNATURE)
  rows = np.asarray(tokens_BxL, np.int32)
  return np.concatenate([runner(tokens=row[None])["logits"] for row in rows])
