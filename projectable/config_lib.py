"""Base experiment config (every field commented) and variant parsing."""

from __future__ import annotations

import jax
from ml_collections import ConfigDict

from projectable.projector import FORMS
from projectable.sharding import parse_mesh

MODES = ("projectable", "universal", "specialists", "source")


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
  # Logical axis -> mesh axis (None = replicated). Small weights are always replicated.
  c.sharding.rules = ConfigDict(
    {
      "batch": "data",
      "embed": None,
      "heads": "model",
      "mlp": "model",
      "vocab": None,
      "layers": None,
    }
  )

  c.init = ConfigDict()
  # A finished source/projectable run whose best source weights start this run
  # (projectable/source: the source; specialists/universal: its weight selection).
  c.init.source_workdir = ""

  c.samples = ConfigDict()
  c.samples.num_per_task = 16  # Samples drawn per task into DIR/samples/ at the end.
  c.samples.temperature = 1.0  # Sampling temperature.
  return c


def _check(ok: bool, field: str, value, allowed: str) -> None:
  if not ok:
    raise ValueError(f"config.{field}={value!r} is invalid: {allowed}")


def _positive_int(config: ConfigDict, field: str) -> None:
  value = config
  for part in field.split("."):
    value = value[part]
  _check(
    isinstance(value, int) and not isinstance(value, bool) and value > 0,
    field,
    value,
    "must be a positive integer",
  )


def validate(config: ConfigDict) -> None:
  """Checks every field's type and range before any data loading or compilation."""
  _check(config.mode in MODES, "mode", config.mode, f"must be one of {MODES}")
  _check(isinstance(config.seed, int), "seed", config.seed, "must be an integer")
  _check(
    isinstance(config.lambda_source, (int, float)) and config.lambda_source >= 0,
    "lambda_source",
    config.lambda_source,
    "must be a number >= 0",
  )
  for field in (
    "data.levels",
    "train.num_steps",
    "train.batch_tasks",
    "train.examples_per_task",
    "train.eval_every",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.eval_chunk",
    "samples.num_per_task",
  ):
    _positive_int(config, field)
  _check(config.data.levels >= 2, "data.levels", config.data.levels, "must be >= 2")
  _positive_int(config, "data.downsample")
  for field in ("tfds_data_dir", "path", "test_path", "tasks"):
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
  _check(
    isinstance(train.learning_rate, float) and train.learning_rate > 0,
    "train.learning_rate",
    train.learning_rate,
    "must be a float > 0",
  )
  _check(
    isinstance(train.warmup_steps, int) and 0 <= train.warmup_steps < train.num_steps,
    "train.warmup_steps",
    train.warmup_steps,
    "must be an integer in [0, num_steps)",
  )
  for field in ("weight_decay", "grad_clip"):
    _check(
      isinstance(train[field], (int, float)) and train[field] >= 0,
      f"train.{field}",
      train[field],
      "must be a number >= 0",
    )
  for name in ("model", "small"):
    for field in ("d", "heads", "mlp_dim", "depth"):
      _positive_int(config, f"{name}.{field}")
    m = config[name]
    _check(m.d % m.heads == 0, f"{name}.heads", m.heads, f"must divide {name}.d={m.d}")
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
    isinstance(n_src, int) and (n_src == -1 or 1 <= n_src <= train.examples_per_task),
    "source_examples_per_task",
    n_src,
    f"must be -1 (all) or in [1, train.examples_per_task={train.examples_per_task}]",
  )
  _check(
    isinstance(config.projector.rank, int) and config.projector.rank >= 0,
    "projector.rank",
    config.projector.rank,
    "must be an integer >= 0",
  )
  _check(
    config.projector.form in FORMS,
    "projector.form",
    config.projector.form,
    f"must be one of {FORMS}",
  )
  _check(
    isinstance(config.samples.temperature, float) and config.samples.temperature >= 0,
    "samples.temperature",
    config.samples.temperature,
    "must be a float >= 0",
  )
  sizes = parse_mesh(config.mesh, jax.device_count())
  for field in ("examples_per_task", "eval_chunk"):
    _check(
      train[field] % sizes["data"] == 0,
      f"train.{field}",
      train[field],
      f"must be divisible by the mesh's data axis ({sizes['data']})",
    )
