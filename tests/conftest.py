"""Test setup: 4 fake CPU devices and strict rank promotion, before JAX starts."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def tiny_config():
  """The digits ``tiny`` variant on one device, unlocked for per-test overrides."""
  from configs import digits

  config = digits.get_config("tiny")
  config.mesh = "data:1,model:1"
  return config
