r"""Prints per-device memory and FLOPs of one training step, allocating nothing.

  python launch/plan.py --config=configs/fashion_mnist.py:full --mesh=data:16,model:4
  python launch/plan.py --config=configs/digits.py --mesh=data:16,model:4 \
      --config.model.d=2048 --config.model.depth=24 --config.model.heads=16 \
      --config.model.mlp_dim=8192 --config.small.depth=24 --config.train.examples_per_task=64

The mesh's devices are simulated on the CPU, so any mesh can be planned anywhere.
"""

import math
import os
import sys


def _simulate_devices(argv: list[str]) -> None:
  """Fakes as many CPU devices as --mesh needs; must run before JAX is imported."""
  mesh = next((a.split("=", 1)[1] for a in argv if a.startswith("--mesh=")), "data:1")
  sizes = [int(part.split(":")[1]) for part in mesh.split(",")]
  if any(s < 1 for s in sizes):
    raise SystemExit("--mesh needs explicit sizes (no -1), e.g. data:16,model:4")
  flag = f"--xla_force_host_platform_device_count={math.prod(sizes)}"
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")


_simulate_devices(sys.argv)

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from projectable import data as data_lib  # noqa: E402
from projectable.experiments import cli, memory  # noqa: E402
from projectable.training import log_filters, sharding, validation  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("mesh", "data:1", "Mesh to plan for, e.g. data:16,model:4.")
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  log_filters.quiet_library_logs()
  config = FLAGS.config.copy_and_resolve_references()
  config.mesh = FLAGS.mesh
  validation.validate(config)
  mesh = sharding.make_mesh(config.mesh)
  with jax.set_mesh(mesh):
    print(memory.format_memory_plan(memory.memory_plan(config, data_lib.load(config.data), mesh)))


if __name__ == "__main__":
  cli.run(main)
