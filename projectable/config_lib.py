"""Base experiment config (every field commented) and variant parsing."""

from __future__ import annotations

import json
import math

import jax
from absl import logging
from ml_collections import ConfigDict

from projectable.model import ATTENTION_IMPLS, COMPUTE_DTYPES
from projectable.projector import FORMS
from projectable.sharding import parse_mesh, rules_from_config

MODES = ("projectable", "universal", "specialists", "source")
NONFINITE_POLICIES = ("stop", "skip")


def parse_variant(arg: str | None, variants: tuple[str, ...]) -> str:
  """``None``, ``'tiny'`` or ``'variant=tiny'`` -> the variant name, checked."""
  name = (arg or variants[0]).removeprefix("variant=")
  if name not in variants:
    raise ValueError(f"unknown config variant {name!r}; choose one of {variants}")
  return name


def make_tiny(c: ConfigDict) -> None:
  """Shrinks a config in place to the ``tiny`` variant: a few steps of tiny models (tests)."""
  c.train.update(
    num_steps=6, examples_per_task=4, warmup_steps=2, eval_every=3, log_every=1, checkpoint_every=3
  )
  c.model.update(d=32, heads=4, mlp_dim=64, depth=2)
  c.small.update(d=16, heads=2, mlp_dim=32, depth=2)
  c.projector.rank = 2
  c.samples.num_per_task = 4


def base_config() -> ConfigDict:
  """Defaults shared by every dataset config."""
  c = ConfigDict()
  c.mode = "projectable"  # One of MODES: projectable | universal | specialists | source.
  c.seed = 0  # Seeds initialisation, dropout and the batch order.
  c.mesh = "data:-1,model:1"  # Device mesh 'axis:size,...'; -1 fills in the device count.
  c.lambda_source = 1.0  # Weight of the source's own NLL in projectable mode.
  # Images per task the source's own NLL is computed on (-1: all n); fewer makes a
  # projectable step cheaper while the source still gets gradients through projection.
  c.source_examples_per_task = -1
  # Checkpoint step to resume from instead of the latest (-1: the latest). Newer steps are
  # moved to DIR/checkpoints_set_aside/, never deleted; applied once (recorded in config.json).
  c.restore_step = -1

  c.data = ConfigDict()
  c.data.name = "digits"  # Dataset name (see projectable/data.py).
  c.data.levels = 17  # Quantisation levels of a pixel (the vocabulary size).
  c.data.val_fraction = 0.1  # Per-class share of the data held out for best-step selection.
  c.data.test_fraction = 0.2  # Per-class share of the data held out for the reported test metric.
  c.data.split_seed = 0  # Seed of the fixed train/val/test split.
  c.data.tfds_data_dir = ""  # Prepared TFDS datasets; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets.
  c.data.path = ""  # 'arrays': the .npz; 'fashion_mnist': its IDX dir ('' = Debian's package dir).
  c.data.test_path = ""  # 'arrays': optional test .npz ('' = test carved from config.data.path).
  c.data.downsample = 1  # Mean-pooling factor on height and width (2: 28x28 -> 14x14).
  c.data.tasks = ""  # 'name:class,class;name:...' class sets ('' = one task per class).

  c.train = ConfigDict()
  c.train.num_steps = 600  # Optimizer steps; raise it and rerun to continue a finished run.
  c.train.batch_tasks = 10  # Tasks per batch (m); each step projects once per task.
  c.train.examples_per_task = 8  # Images per task per batch (n); divisible by the data axis.
  c.train.learning_rate = 1e-3  # Peak AdamW learning rate.
  c.train.warmup_steps = 50  # Linear warmup steps before cosine decay to zero.
  c.train.weight_decay = 0.01  # AdamW decoupled weight decay on matrices.
  c.train.grad_clip = 1.0  # Global gradient-norm clip.
  c.train.freeze_source = False  # Projectable mode: train projectors only, source fixed.
  c.train.eval_every = 100  # Steps between val/test evaluations (best step chosen on val).
  c.train.log_every = 20  # Steps between train-metric logs.
  c.train.checkpoint_every = 200  # Steps between checkpoints (the last step is always saved).
  c.train.keep_checkpoints = 3  # Checkpoints kept in DIR/checkpoints.
  c.train.eval_chunk = 64  # Test images per task evaluated per call.
  # Unroll every model's layer loop instead of scanning it: no per-layer stacking of
  # activations for the backward pass (train steps 20-28% faster on CPU, benchmarks/README.md);
  # compile time grows with depth (projectable step at depth 24: 43 s against 19 s scanned).
  c.train.unroll_layers = True
  # Dtype of every matmul's inputs, accumulated in float32 ('bfloat16' for TPUs and GPUs;
  # on CPUs without AMX it is slower). Weights, optimizer, LayerNorm, softmax stay float32.
  c.train.compute_dtype = "float32"
  # Recompute each block's activations in the backward pass, keeping only its input: less
  # activation memory (launch/plan.py reports it) for one more forward pass of compute. Needs
  # unroll_layers=False: unrolled, XLA schedules the recomputation into the forward pass.
  c.train.remat = False
  # Attention kernel: 'einsum' (heads-major einsums, fastest on CPU), 'xla' or 'cudnn'
  # (jax.nn.dot_product_attention; cuDNN's is flash attention, no L x L probabilities
  # kept: NVIDIA GPUs with compute_dtype='bfloat16'). All compute the same function.
  c.train.attention = "einsum"
  # A non-finite loss or gradient: 'stop' raises naming the step; 'skip' leaves the weights and
  # optimizer unchanged for that step and raises after max_skipped_steps consecutive skips.
  c.train.nonfinite = "stop"
  c.train.max_skipped_steps = 10
  # Train steps traced with jax.profiler into DIR/plugins/profile (TensorBoard's Profile tab),
  # from the 4th step of the run (after compilation); 0 = no trace.
  c.train.profile_steps = 0

  c.model = ConfigDict()  # The source (large, task-conditional) Transformer.
  c.model.d = 128  # Residual width d.
  c.model.heads = 4  # Attention heads h.
  c.model.mlp_dim = 512  # MLP hidden width f.
  c.model.depth = 4  # Blocks L.
  c.model.dropout = 0.1  # Residual/embedding dropout.

  c.small = ConfigDict()  # The small model: projected, universal and specialist.
  c.small.d = 32  # Residual width ds.
  c.small.heads = 2  # Attention heads hs (<= h, and head width <= the source's).
  c.small.mlp_dim = 128  # MLP hidden width fs.
  c.small.depth = 4  # Blocks Ls (must equal model.depth in projectable mode).
  c.small.dropout = 0.1  # Residual/embedding dropout.

  c.projector = ConfigDict()
  c.projector.rank = 8  # k: rank of the task-conditioned part; 0 = task-independent.
  c.projector.form = "factored"  # 'factored' (A0 + U diag(z) V^T) or 'full' (k full bases).
  c.projector.code_std = 1.0  # Initial scale of the per-class task codes.

  c.sharding = ConfigDict()
  # Logical axis -> mesh axis ('' = replicated). FSDP: embed='data'. The small model's
  # axes are 'small_<axis>': replicated by default (measured in README "Clusters").
  c.sharding.rules = ConfigDict(
    {
      "batch": "data",
      "embed": "",
      "heads": "model",
      "mlp": "model",
      "vocab": "",
      "layers": "",
      "small_embed": "",
      "small_heads": "",
      "small_mlp": "",
    }
  )

  c.init = ConfigDict()
  # A finished source/projectable run whose best source weights start this run
  # (projectable/source: the source; specialists/universal: its weight selection).
  c.init.source_workdir = ""

  c.distill = ConfigDict()
  # alpha: a small model's loss is (1 - alpha) * NLL + alpha * KL(teacher || small); 0 = off.
  # The teacher is the source: projectable mode its own (stop-gradient); universal and
  # specialists the frozen best source of distill.teacher_workdir.
  c.distill.weight = 0.0
  c.distill.teacher_workdir = ""  # A finished source/projectable run (universal/specialists).

  c.samples = ConfigDict()
  c.samples.num_per_task = 16  # Samples drawn per task into DIR/samples/ at the end.
  c.samples.temperature = 1.0  # Sampling temperature.
  return c


def with_defaults(saved: dict) -> dict:
  """A run's saved config (``config.json``) with every field added to the code since it was
  written set to its default, so that old runs still load and compare."""

  def fill(values: dict, defaults: dict) -> dict:
    out = dict(values)
    for key, default in defaults.items():
      if key not in out:
        out[key] = default
      elif isinstance(default, dict) and isinstance(out[key], dict):
        out[key] = fill(out[key], default)
    return out

  return fill(saved, json.loads(base_config().to_json_best_effort()))


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


def validate(config: ConfigDict) -> None:
  """Checks every field's type and range before any data loading or compilation."""
  _one_of(config, "mode", MODES)
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
  for field in ("freeze_source", "unroll_layers", "remat"):
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
  for name in ("model", "small"):
    for field in ("d", "heads", "mlp_dim", "depth"):
      _positive_int(config, f"{name}.{field}")
    m = config[name]
    _check(m.d % m.heads == 0, f"{name}.heads", m.heads, f"must divide {name}.d={m.d}")
    _check(
      train.attention != "cudnn" or m.d // m.heads % 8 == 0,
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
  n_src = config.source_examples_per_task
  _check(
    _is_int(n_src) and (n_src == -1 or 1 <= n_src <= train.examples_per_task),
    "source_examples_per_task",
    n_src,
    f"must be -1 (all) or in [1, train.examples_per_task={train.examples_per_task}]",
  )
  _check(
    _is_int(config.projector.rank) and config.projector.rank >= 0,
    "projector.rank",
    config.projector.rank,
    "must be an integer >= 0",
  )
  _one_of(config, "projector.form", FORMS)
  _number_at_least(config, "projector.code_std", 0)
  _number_at_least(config, "samples.temperature", 0)
  _check(
    isinstance(config.init.source_workdir, str),
    "init.source_workdir",
    config.init.source_workdir,
    "must be a string",
  )
  _validate_distill(config)
  _check(isinstance(config.mesh, str), "mesh", config.mesh, "must be a string such as 'data:-1'")
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
