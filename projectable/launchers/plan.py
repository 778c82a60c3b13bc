r"""Prints per-device memory and FLOPs of one training step, allocating nothing.

  projectable-plan --config=fashion_mnist:full --mesh=data:16,model:4
  projectable-plan --config=digits --mesh=data:16,model:4 \
      --config.model.d=2048 --config.model.depth=24 --config.model.heads=16 \
      --config.model.mlp_dim=8192 --config.small.depth=24 --config.train.examples_per_task=64

The mesh's devices are simulated on the CPU, so any mesh can be planned anywhere.
"""

import math
import os

import jax
from absl import app, flags
from ml_collections import config_flags

from projectable import data as data_lib
from projectable import launchers
from projectable.experiments import memory
from projectable.training import log_filters, sharding, validation

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("mesh", "data:1", "Mesh to plan for, e.g. data:16,model:4.")
flags.mark_flags_as_required(["config"])


def simulate_devices(mesh: str) -> None:
  """Fakes as many CPU devices as ``mesh`` needs; must run before JAX's first computation
  (importing JAX is fine: XLA reads its flags when the backend starts)."""
  try:
    sizes = [int(part.split(":")[1]) for part in mesh.split(",")]
  except (IndexError, ValueError):
    raise app.UsageError(f"--mesh={mesh}: expected axis:size,..., e.g. data:16,model:4") from None
  if any(s < 1 for s in sizes):
    raise app.UsageError("--mesh needs explicit sizes (no -1), e.g. data:16,model:4")
  flag = f"--xla_force_host_platform_device_count={math.prod(sizes)}"
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
  if "JAX_PLATFORMS" not in os.environ:
    jax.config.update("jax_platforms", "cpu")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  simulate_devices(FLAGS.mesh)
  log_filters.quiet_library_logs()
  config = FLAGS.config.copy_and_resolve_references()
  config.mesh = FLAGS.mesh
  validation.validate(config)
  mesh = sharding.make_mesh(config.mesh)
  with jax.set_mesh(mesh):
    print(memory.format_memory_plan(memory.memory_plan(config, data_lib.load(config.data), mesh)))


def run() -> None:
  """The ``projectable-plan`` command."""
  launchers.serve(__name__, main)
