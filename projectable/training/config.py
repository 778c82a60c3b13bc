"""Base experiment config (every field commented), variants, and old runs' configs.

``validation.validate`` checks a config; ``typed`` turns it into the frozen
dataclasses that jitted code receives.
"""

from __future__ import annotations

import json

from ml_collections import ConfigDict, config_dict


def parse_variant(arg: str | None, variants: tuple[str, ...]) -> str:
  """``None``, ``'tiny'`` or ``'variant=tiny'`` -> the variant name, checked."""
  name = (arg or variants[0]).removeprefix("variant=")
  if name not in variants:
    raise ValueError(f"unknown config variant {name!r}; choose one of {variants}")
  return name


def make_tiny(c: ConfigDict) -> None:
  """Shrinks a config in place to the ``tiny`` variant: a few steps of tiny models (tests),
  compiled with XLA's optimisations off (compiling is most of such a run)."""
  c.train.update(
    num_steps=6, examples_per_task=4, warmup_steps=2, eval_every=3, log_every=1, checkpoint_every=3
  )
  c.train.fast_compile = True
  # Digits' val and test hold ~18 and ~36 images per class: chunks of 64 were mostly padding,
  # and XLA runs unoptimised programs slowly (a warm tiny run on one core: 4.8 s -> 3.5 s).
  c.train.eval_chunk = 24  # Divides every data axis of the tests (up to 8).
  c.model.update(d=32, heads=4, mlp_dim=64, depth=2)
  c.small.update(d=16, heads=2, mlp_dim=32, depth=2)
  c.projector.rank = 2
  c.samples.num_per_task = 4


def _add_data(c: ConfigDict) -> None:
  """config.data: which dataset, how it is tokenised, split and cut into tasks."""
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


def _add_train(c: ConfigDict) -> None:
  """config.train: optimizer, schedule, periods and kernels."""
  c.train = ConfigDict()
  c.train.num_steps = 600  # Optimizer steps; raise it and rerun to continue a finished run.
  c.train.batch_tasks = 10  # Tasks per batch (m); each step projects once per task.
  c.train.examples_per_task = 8  # Images per task per batch (n); divisible by the data axis.
  c.train.learning_rate = 1e-3  # Peak AdamW learning rate.
  c.train.warmup_steps = 50  # Linear warmup steps before cosine decay to zero.
  c.train.weight_decay = 0.01  # AdamW decoupled weight decay on matrices.
  c.train.grad_clip = 1.0  # Global gradient-norm clip.
  # Projectable mode: the projectors' learning rate as a multiple of learning_rate (the source
  # keeps learning_rate). None: 0.3 at lambda_source=0 (at 1 it stalls at the rates the small
  # models prefer), 1 with the source's own loss (typed_config, docs/method.md).
  c.train.projector_lr_scale = config_dict.placeholder(float)
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
  # Compile with most of XLA's optimisations off (jax_disable_most_optimizations) for the rest
  # of the process: about half the compile time, slower steps. For smoke runs whose compiling
  # outweighs their few steps (the tiny variant); False leaves JAX's own setting.
  c.train.fast_compile = False
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


def _add_architectures(c: ConfigDict) -> None:
  """config.model (the source) and config.small (every small model)."""
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


def _add_method(c: ConfigDict) -> None:
  """config.projector, config.sharding, config.init, config.distill, config.samples."""
  c.projector = ConfigDict()
  c.projector.rank = 8  # k: rank of the task-conditioned part; 0 = task-independent.
  c.projector.form = "factored"  # 'factored' (A0 + U diag(z) V^T) or 'full' (k full bases).
  c.projector.code_std = 1.0  # Initial scale of the per-class task codes.
  # Project LayerNorm scales as deviations from 1 (core/projector.shift_scales): the residual
  # map's column sums then no longer move every layer's scales together (docs/method.md).
  c.projector.scales_about_one = False
  # Rescale each projected block matrix to the RMS of the source sub-matrix its maps start from
  # (core/projector.match_selection_rms): the maps set directions, the source the size.
  c.projector.match_rms = False

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


def base_config() -> ConfigDict:
  """Defaults shared by every dataset config."""
  c = ConfigDict()
  c.mode = "projectable"  # One of modes.MODES: projectable | universal | specialists | source.
  c.seed = 0  # Seeds initialisation, dropout and the batch order.
  c.mesh = "data:-1,model:1"  # Device mesh 'axis:size,...'; -1 fills in the device count.
  c.lambda_source = 1.0  # Weight of the source's own NLL in projectable mode.
  # Images per task the source's own NLL is computed on (-1: all n); fewer makes a
  # projectable step cheaper while the source still gets gradients through projection.
  c.source_examples_per_task = -1
  # Checkpoint step to resume from instead of the latest (-1: the latest). Newer steps are
  # moved to DIR/checkpoints_set_aside/, never deleted; applied once (recorded in config.json).
  c.restore_step = -1

  for add in (_add_data, _add_train, _add_architectures, _add_method):
    add(c)
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

  filled = fill(saved, json.loads(base_config().to_json_best_effort()))
  if "projector_lr_scale" not in saved.get("train", {}):  # Trained at 1 before it existed.
    filled["train"] = {**filled["train"], "projector_lr_scale": 1.0}
  if "match_rms" not in saved.get("projector", {}):  # Projected unscaled before it existed.
    filled["projector"] = {**filled["projector"], "match_rms": False}
  return filled
