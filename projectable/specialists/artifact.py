"""Standalone specialists: one small unconditional Transformer saved with its config.

An exported specialist is a directory holding

* ``config.json``: ``{"format_version": 1, "model": <ModelConfig fields>, ...}``
  plus free metadata (image shape, levels, task, classes, dataset, source step,
  test bits/dim), and ``integrity``: a SHA-256 per weight array and one binding
  the ``model`` section to them, verified on load; JSON only, nothing pickled;
* ``params/``: an Orbax checkpoint of the plain-dict weights (the tree of
  ``model.init_params``).

Loading needs only ``projectable.model`` and ``projectable.sampling``, never the
projector, the training modes or the source model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from projectable.core import digests, model, sampling
from projectable.core.digests import DamagedCheckpointError
from projectable.core.model import ModelConfig

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
_RESERVED = ("format_version", "model", "integrity")
# ModelConfig's annotations (strings under ``from __future__ import annotations``) as types.
_FIELD_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


@dataclasses.dataclass(frozen=True)
class Specialist:
  """A loaded specialist: architecture and weights, scored and sampled without a task."""

  cfg: ModelConfig
  params: dict

  def logits(self, tokens_BxL: jax.Array) -> jax.Array:
    """Next-pixel logits (B, L, V) of images given as tokens (B, L)."""
    return _logits(self.cfg, self.params, self._check(tokens_BxL))

  def bits_per_dim(self, tokens_BxL: jax.Array) -> jax.Array:
    """Mean negative log2-likelihood per pixel token of each image, shape (B,)."""
    return _bits_per_dim(self.cfg, self.params, self._check(tokens_BxL))

  def sample(self, num: int, seed: int = 0, temperature: float = 1.0) -> jax.Array:
    """``num`` int32 token sequences (num, L); temperature 0 is greedy."""
    return sampling.sample(self.cfg, self.params, num, jax.random.key(seed), None, temperature)

  def _check(self, tokens_BxL: jax.Array) -> jax.Array:
    tokens_BxL = np.asarray(tokens_BxL)
    if tokens_BxL.ndim != 2 or tokens_BxL.shape[1] != self.cfg.seq_len:
      raise ValueError(f"tokens must have shape (B, {self.cfg.seq_len}), got {tokens_BxL.shape}")
    if tokens_BxL.size and (tokens_BxL.min() < 0 or tokens_BxL.max() >= self.cfg.vocab_size):
      raise ValueError(
        f"tokens must lie in [0, {self.cfg.vocab_size}), got "
        f"[{tokens_BxL.min()}, {tokens_BxL.max()}]"
      )
    return jnp.asarray(tokens_BxL, jnp.int32)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _logits(cfg: ModelConfig, params: dict, tokens_BxL: jax.Array) -> jax.Array:
  return model.apply(cfg, params, tokens_BxL)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _bits_per_dim(cfg: ModelConfig, params: dict, tokens_BxL: jax.Array) -> jax.Array:
  nll_BxL = model.token_nll(model.apply(cfg, params, tokens_BxL), tokens_BxL)
  return nll_BxL.mean(-1) / math.log(2.0)


def _local_checkpointer() -> ocp.StandardCheckpointer:
  """A checkpointer of this process alone: specialists are small host arrays, written and read
  by one process even inside a multi-process job (no cross-process barriers)."""
  me = jax.process_index()
  return ocp.StandardCheckpointer(
    multiprocessing_options=ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me}
    )
  )


def save_specialist(
  directory: str, cfg: ModelConfig, params: dict, meta: dict, overwrite: bool = False
) -> None:
  """Writes ``directory/params/`` (Orbax) and ``directory/config.json``.

  A non-empty ``directory`` is refused unless ``overwrite``; overwriting replaces
  only ``params/`` and ``config.json`` and leaves any other file alone.
  """
  if cfg.num_classes:
    raise ValueError(f"a specialist is unconditional (num_classes=0), got {cfg.num_classes}")
  clash = [k for k in _RESERVED if k in meta]
  if clash:
    raise ValueError(f"meta may not set the reserved keys {clash}")
  problems = _mismatches(_abstract_params(cfg), params)
  if problems:
    raise ValueError("params do not match the model config: " + "; ".join(problems))
  fields = dataclasses.asdict(cfg)
  weights = digests.tree_digests(jax.device_get(params))
  integrity = {"params_sha256": weights, "binding": digests.binding(fields, weights)}
  text = json.dumps(
    {"format_version": FORMAT_VERSION, "model": fields, **meta, "integrity": integrity}, indent=2
  )
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and not os.path.isdir(directory):
    raise FileExistsError(f"{directory} exists and is not a directory")
  if os.path.isdir(directory) and os.listdir(directory):
    if not overwrite:
      raise FileExistsError(
        f"{directory} is not empty; pass --overwrite (overwrite=True) to "
        "replace the specialist there"
      )
    shutil.rmtree(os.path.join(directory, PARAMS_DIR), ignore_errors=True)
    if os.path.exists(os.path.join(directory, CONFIG_FILE)):
      os.remove(os.path.join(directory, CONFIG_FILE))
  os.makedirs(directory, exist_ok=True)
  with _local_checkpointer() as checkpointer:
    checkpointer.save(os.path.join(directory, PARAMS_DIR), jax.device_get(params))
    checkpointer.wait_until_finished()
  tmp = os.path.join(directory, CONFIG_FILE + ".tmp")
  with open(tmp, "w") as f:
    f.write(text + "\n")
  os.replace(tmp, os.path.join(directory, CONFIG_FILE))


def load_specialist(path: str) -> tuple[Specialist, dict]:
  """The specialist saved at ``path`` and its metadata (config.json minus the model).

  One saved with ``attention='cudnn'`` runs the einsum attention off NVIDIA GPUs.
  """
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no specialist directory at {path}")
  config_path = os.path.join(path, CONFIG_FILE)
  params_path = os.path.join(path, PARAMS_DIR)
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{path} has no {CONFIG_FILE}; is it an exported specialist?")
  if not os.path.isdir(params_path):
    raise FileNotFoundError(f"{path} has no {PARAMS_DIR}/ checkpoint")
  with open(config_path) as f:
    try:
      config = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{config_path} is not valid JSON: {e}") from e
  version = config.get("format_version") if isinstance(config, dict) else None
  if version != FORMAT_VERSION:
    raise ValueError(
      f"{config_path} has format_version {version!r}; this code reads version {FORMAT_VERSION}"
    )
  cfg = _model_config(config.get("model"), config_path)
  expected = _abstract_params(cfg)
  with _local_checkpointer() as checkpointer:
    stored = checkpointer.metadata(params_path).item_metadata
    if stored is None:
      raise ValueError(f"{params_path} is not a complete Orbax checkpoint")
    problems = _mismatches(expected, stored.tree)
    if problems:
      raise ValueError(
        f"the weights in {params_path} do not match the model in {config_path}: "
        + "; ".join(problems)
      )
    try:
      params = checkpointer.restore(params_path, expected)
    except Exception as e:  # Orbax/TensorStore read errors: damaged or truncated files.
      first_line = str(e).strip().partition("\n")[0]
      raise DamagedCheckpointError(
        f"the weights in {params_path} are damaged: {type(e).__name__}: {first_line}; "
        "re-export the specialist (launch/export.py)"
      ) from e
  _verify(config, jax.device_get(params), config_path, params_path)
  params = jax.device_put(params)
  meta = {k: v for k, v in config.items() if k not in _RESERVED}
  return Specialist(cfg, params), meta


def _verify(config: dict, params: dict, config_path: str, params_path: str) -> None:
  """Checks the weights against their SHA-256s and the model section against both, as
  recorded at export (specialists exported before ``integrity`` existed load unchecked)."""
  integrity = config.get("integrity")
  if integrity is None:
    logging.warning("%s records no integrity digests (an older export): not verified", config_path)
    return
  recorded = integrity.get("params_sha256") if isinstance(integrity, dict) else None
  if not isinstance(recorded, dict) or not isinstance(integrity.get("binding"), str):
    raise ValueError(f"{config_path}: 'integrity' must hold 'params_sha256' and 'binding'")
  if digests.binding(config["model"], recorded) != integrity["binding"]:
    raise ValueError(
      f"{config_path}: its 'model' section or digests were changed after export, so it no "
      "longer describes these weights; re-export the specialist (launch/export.py)"
    )
  bad = digests.mismatched(recorded, params)
  if bad:
    raise DamagedCheckpointError(
      f"the weights in {params_path} are damaged: {', '.join(bad[:3])} differ from the SHA-256 "
      f"recorded in {config_path}; re-export the specialist (launch/export.py)"
    )


def _model_config(fields: object, config_path: str) -> ModelConfig:
  names = {f.name for f in dataclasses.fields(ModelConfig)}
  if not isinstance(fields, dict) or not set(fields) <= names:
    raise ValueError(
      f"{config_path}: 'model' must be an object with fields among {sorted(names)}, got {fields!r}"
    )
  for field in dataclasses.fields(ModelConfig):
    value, kind = fields.get(field.name), _FIELD_TYPES[field.type]
    allowed = (kind, int) if kind is float else (kind,)  # JSON writes 0.0 as 0 at times.
    if field.name in fields and type(value) not in allowed:
      raise ValueError(
        f"{config_path}: model.{field.name}={value!r} must be of type {kind.__name__}"
      )
  try:
    cfg = ModelConfig(**fields)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{config_path}: bad 'model' entry: {e}") from e
  if cfg.num_classes:
    raise ValueError(
      f"{config_path}: a specialist is unconditional, got num_classes={cfg.num_classes}"
    )
  if cfg.attention == "cudnn" and jax.default_backend() != "gpu":
    # Trained with cuDNN's kernel on a GPU; the einsums compute the same function here.
    cfg = dataclasses.replace(cfg, attention="einsum")
  return cfg


def _abstract_params(cfg: ModelConfig) -> dict:
  return jax.eval_shape(lambda: model.init_params(cfg, jax.random.key(0)))


def _mismatches(expected: dict, actual: dict) -> list[str]:
  """Per weight, how ``actual``'s shapes and dtypes differ from ``expected``'s."""
  want, got = _shapes(expected), _shapes(actual)
  problems = [f"{name}: missing" for name in want if name not in got]
  problems += [f"{name}: unexpected weight" for name in got if name not in want]
  problems += [
    f"{name}: {got[name][0]} {got[name][1]} but the config needs {want[name][0]} {want[name][1]}"
    for name in want
    if name in got and got[name] != want[name]
  ]
  return problems


def _shapes(tree: dict) -> dict[str, tuple[tuple[int, ...], str]]:
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {
    "/".join(str(getattr(k, "key", k)) for k in path): (tuple(x.shape), str(x.dtype))
    for path, x in leaves
  }
