"""Checks of every config field's type and range, before any data loading or compilation.

Each section has its own check; errors name the field, its value and what is allowed.
"""

from __future__ import annotations

import math

import jax
from absl import logging
from ml_collections import ConfigDict

from projectable.core.model import ATTENTION_IMPLS, COMPUTE_DTYPES
from projectable.core.projector import FORMS
from projectable.training.modes import MODES
from projectable.training.sharding import parse_mesh, rules_from_config

NONFINITE_POLICIES = ("stop", "skip")


def _check(ok: bool, field: str, value, allowed: str) -> None:
  if not ok:
    raise ValueError(f"config.{field}={value!r} is invalid: {allowed}")


def _get(config: ConfigDict, field: str):
  value = config
  for part in field.split("."):
    value = value[part]
  return value


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  """An int or float, finite (NaN and infinities are not numbers here)."""
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(config: ConfigDict, field: str) -> None:
  value = _get(config, field)
  _check(_is_int(value) and value > 0, field, value, "must be a positive integer")


def _number_at_least(config: ConfigDict, field: str, low: float, strict: bool = False) -> None:
  value = _get(config, field)
  ok = _is_number(value) and (value > low if strict else value >= low)
  _check(ok, field, value, f"must be a finite number {'>' if strict else '>='} {low}")


def _one_of(config: ConfigDict, field: str, choices: tuple[str, ...]) -> None:
  value = _get(config, field)
  _check(isinstance(value, str) and value in choices, field, value, f"must be one of {choices}")


def _validate_distill(config: ConfigDict) -> None:
  """alpha in [0, 1]; a teacher workdir exactly where a mode distills from a trained source."""
  weight, teacher = config.distill.weight, config.distill.teacher_workdir
  _check(
    _is_number(weight) and 0 <= weight <= 1, "distill.weight", weight, "must be a number in [0, 1]"
  )
  _check(isinstance(teacher, str), "distill.teacher_workdir", teacher, "must be a string")
  if config.mode == "source":
    _check(weight == 0, "distill.weight", weight, "must be 0 in source mode (it is the teacher)")
  unanchored = config.lambda_source == 0 and not config.train.freeze_source
  if config.mode == "projectable" and weight > 0 and unanchored:
    logging.warning(
      "config.distill.weight=%g with lambda_source=0: the teacher is a source trained only "
      "through its projections, whose own predictions drift; on digits this distillation "
      "cost 0.49 bits/dim (docs/results/digits/ablations). Set lambda_source > 0 or "
      "train.freeze_source=True for a trained teacher.",
      weight,
    )
  from_workdir = config.mode in ("universal", "specialists") and weight > 0
  _check(
    (teacher != "") == from_workdir,
    "distill.teacher_workdir",
    teacher,
    "must name a finished source or projectable run exactly when universal/specialists mode "
    "distills (distill.weight > 0), else be '' (projectable mode distills from its own source)",
  )


def check_backend(config: ConfigDict) -> None:
  """Raises if this process's devices cannot run ``config`` (``validate`` checks the rest,
  also for other machines: ``launch/plan.py``)."""
  backend = jax.default_backend()
  _check(
    config.train.attention != "cudnn" or backend == "gpu",
    "train.attention",
    config.train.attention,
    f"cuDNN's flash attention runs on NVIDIA GPUs, this process's backend is {backend!r}: "
    "use 'einsum' or 'xla'",
  )


def _validate_run(config: ConfigDict) -> None:
  """Seeds, the source loss weight and the rewind step."""
  for field in ("seed", "data.split_seed"):
    value = _get(config, field)
    _check(_is_int(value) and 0 <= value < 2**31, field, value, "must be an integer in [0, 2**31)")
  _number_at_least(config, "lambda_source", 0)
  _check(
    _is_int(config.restore_step) and config.restore_step >= -1,
    "restore_step",
    config.restore_step,
    "must be a checkpoint step >= 0, or -1 for the latest",
  )


def _validate_counts(config: ConfigDict) -> None:
  """Every count and period: positive integers."""
  for field in (
    "data.levels",
    "data.downsample",
    "train.num_steps",
    "train.batch_tasks",
    "train.examples_per_task",
    "train.eval_every",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.eval_chunk",
    "train.max_skipped_steps",
    "samples.num_per_task",
  ):
    _positive_int(config, field)


def _validate_data(config: ConfigDict) -> None:
  """config.data: levels, strings and split fractions."""
  _check(config.data.levels >= 2, "data.levels", config.data.levels, "must be >= 2")
  for field in ("name", "tfds_data_dir", "path", "test_path", "tasks"):
    _check(
      isinstance(config.data[field], str), f"data.{field}", config.data[field], "must be a string"
    )
  for field in ("val_fraction", "test_fraction"):
    value = config.data[field]
    _check(
      isinstance(value, float) and 0 < value < 0.5,
      f"data.{field}",
      value,
      "must be a float in (0, 0.5)",
    )


def _validate_train(config: ConfigDict) -> None:
  """config.train: optimizer, flags and kernels."""
  train = config.train
  _number_at_least(config, "train.learning_rate", 0, strict=True)
  _check(
    _is_int(train.warmup_steps) and 0 <= train.warmup_steps < train.num_steps,
    "train.warmup_steps",
    train.warmup_steps,
    "must be an integer in [0, num_steps)",
  )
  _number_at_least(config, "train.weight_decay", 0)
  _number_at_least(config, "train.grad_clip", 0, strict=True)
  if train.projector_lr_scale is not None:  # None: its default for the run's λ.
    _number_at_least(config, "train.projector_lr_scale", 0, strict=True)
  for field in ("freeze_source", "unroll_layers", "remat", "fast_compile"):
    _check(isinstance(train[field], bool), f"train.{field}", train[field], "must be True or False")
  _one_of(config, "train.nonfinite", NONFINITE_POLICIES)
  _check(
    _is_int(train.profile_steps) and train.profile_steps >= 0,
    "train.profile_steps",
    train.profile_steps,
    "must be an integer >= 0 (0: no trace)",
  )
  _one_of(config, "train.compute_dtype", COMPUTE_DTYPES)
  _one_of(config, "train.attention", ATTENTION_IMPLS)
  _check(
    train.attention != "cudnn" or train.compute_dtype == "bfloat16",
    "train.attention",
    train.attention,
    "cuDNN's flash attention takes 16-bit inputs: also pass --config.train.compute_dtype=bfloat16",
  )
  _check(
    not (train.remat is True and train.unroll_layers is True),
    "train.remat",
    train.remat,
    "saves no memory with unrolled layers; also pass --config.train.unroll_layers=False",
  )


def _validate_arch(config: ConfigDict, name: str) -> None:
  """One architecture section, config.model or config.small."""
  for field in ("d", "heads", "mlp_dim", "depth"):
    _positive_int(config, f"{name}.{field}")
  m = config[name]
  _check(m.d % m.heads == 0, f"{name}.heads", m.heads, f"must divide {name}.d={m.d}")
  _check(
    config.train.attention != "cudnn" or m.d // m.heads % 8 == 0,
    f"{name}.heads",
    m.heads,
    f"cuDNN's flash attention (train.attention) needs head widths {name}.d / heads that are "
    f"multiples of 8, here {m.d} / {m.heads}",
  )
  _check(
    isinstance(m.dropout, float) and 0 <= m.dropout < 1,
    f"{name}.dropout",
    m.dropout,
    "must be a float in [0, 1)",
  )


def _validate_small_fits_source(config: ConfigDict) -> None:
  """config.small no larger than config.model (projection selects from it)."""
  src, small = config.model, config.small
  _check(small.d <= src.d, "small.d", small.d, f"must be <= model.d={src.d}")
  _check(
    small.mlp_dim <= src.mlp_dim,
    "small.mlp_dim",
    small.mlp_dim,
    f"must be <= model.mlp_dim={src.mlp_dim}",
  )
  _check(
    small.heads <= src.heads, "small.heads", small.heads, f"must be <= model.heads={src.heads}"
  )
  _check(
    small.d // small.heads <= src.d // src.heads,
    "small.heads",
    small.heads,
    f"gives head width {small.d // small.heads} > the source's {src.d // src.heads}",
  )
  if config.mode == "projectable":
    _check(
      small.depth == src.depth,
      "small.depth",
      small.depth,
      f"must equal model.depth={src.depth} in projectable mode",
    )


def _validate_projector(config: ConfigDict) -> None:
  """The source loss subset, the projector and the warm start."""
  n_src = config.source_examples_per_task
  _check(
    _is_int(n_src) and (n_src == -1 or 1 <= n_src <= config.train.examples_per_task),
    "source_examples_per_task",
    n_src,
    f"must be -1 (all) or in [1, train.examples_per_task={config.train.examples_per_task}]",
  )
  _check(
    _is_int(config.projector.rank) and config.projector.rank >= 0,
    "projector.rank",
    config.projector.rank,
    "must be an integer >= 0",
  )
  _one_of(config, "projector.form", FORMS)
  for flag in ("scales_about_one", "match_rms"):
    value = config.projector[flag]
    _check(isinstance(value, bool), f"projector.{flag}", value, "must be True or False")
  _number_at_least(config, "projector.code_std", 0)
  _number_at_least(config, "samples.temperature", 0)
  _check(
    isinstance(config.init.source_workdir, str),
    "init.source_workdir",
    config.init.source_workdir,
    "must be a string",
  )


def _validate_mesh(config: ConfigDict) -> None:
  """The mesh, the sharding rules and batch divisibility by the data axis."""
  _check(isinstance(config.mesh, str), "mesh", config.mesh, "must be a string such as 'data:-1'")
  train = config.train
  sizes = parse_mesh(config.mesh, jax.device_count())  # Its errors name config.mesh.
  rules = config.sharding.rules
  _check(isinstance(rules, ConfigDict), "sharding.rules", rules, "must map logical to mesh axes")
  rules_from_config(rules)  # Its errors name config.sharding.rules.<axis>.
  for field in ("examples_per_task", "eval_chunk"):
    _check(
      train[field] % sizes["data"] == 0,
      f"train.{field}",
      train[field],
      f"must be divisible by the mesh's data axis ({sizes['data']})",
    )


def validate(config: ConfigDict) -> None:
  """Checks every field's type and range before any data loading or compilation."""
  _one_of(config, "mode", tuple(MODES))
  _validate_run(config)
  _validate_counts(config)
  _validate_data(config)
  _validate_train(config)
  for name in ("model", "small"):
    _validate_arch(config, name)
  _validate_small_fits_source(config)
  _validate_projector(config)
  _validate_distill(config)
  _validate_mesh(config)
