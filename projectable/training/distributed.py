"""Joining JAX's multi-controller runtime when run as one of several processes."""

from __future__ import annotations

import os

import jax
from absl import logging

# Environment variables by which cluster launchers announce a multi-process job.
_CLUSTER_HINTS = {
  "SLURM_NTASKS": lambda v: int(v) > 1,
  "OMPI_COMM_WORLD_SIZE": lambda v: int(v) > 1,
  "TPU_WORKER_HOSTNAMES": lambda v: "," in v,
}


def in_cluster() -> bool:
  """Whether a launcher (SLURM, Open MPI, a TPU pod slice) started several processes."""
  return any(k in os.environ and hint(os.environ[k]) for k, hint in _CLUSTER_HINTS.items())


def initialize(
  coordinator: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> None:
  """Calls ``jax.distributed.initialize`` with explicit flags, or auto-detected in a cluster.

  A single-process run (no flags, no cluster environment) is left alone.
  """
  explicit = (coordinator, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ValueError("--coordinator, --num_processes and --process_id go together")
    jax.distributed.initialize(coordinator, num_processes, process_id)
  elif in_cluster():
    jax.distributed.initialize()
  else:
    return
  logging.info(
    "process %d of %d; %d local of %d devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


# How to get each platform's JAX backend into the environment (pyproject extras).
_INSTALL = {
  "gpu": "pip install -e '.[cuda12]' (or '.[cuda13]') for NVIDIA GPUs",
  "tpu": "pip install -e '.[tpu]'",
  "cpu": "unset JAX_PLATFORMS or set it to cpu",
}


def require_platform(platform: str | None) -> None:
  """Raises unless JAX's default backend is ``platform`` ('gpu', 'tpu', 'cpu'; None: any).

  A cluster job whose environment lacks the accelerator's JAX plugin would otherwise train
  on the hosts' CPUs without a word. Call after ``initialize`` (it starts the backend).
  """
  if platform is None:
    return
  if platform not in _INSTALL:
    raise ValueError(f"platform={platform!r}: must be one of {sorted(_INSTALL)}")
  backend = jax.default_backend()
  if backend != platform:
    raise RuntimeError(
      f"this job needs JAX's {platform} backend but JAX runs on {backend!r} "
      f"(devices: {jax.devices()}); install it: {_INSTALL[platform]}"
    )
