"""host_memory.retain_freed_memory: a jitted call's large temporaries stop re-faulting."""

import json
import platform
import subprocess
import sys

import pytest

# Calls a jitted function whose temporaries (~100 MB) glibc would serve from fresh mmaps,
# and prints the page faults of each call after the first.
_PROBE = """
import json, resource, sys
from projectable.training import host_memory
applied = host_memory.retain_freed_memory() if sys.argv[1] == "retain" else False
import jax, jax.numpy as jnp
f = jax.jit(lambda a: jnp.sum(jnp.sin(jnp.outer(a, a)) @ jnp.cos(jnp.outer(a, a))))
a = jnp.linspace(0.0, 1.0, 3000)
f(a).block_until_ready()
faults = []
for _ in range(3):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(a).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _probe(mode: str) -> dict:
  out = subprocess.run(
    [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True
  ).stdout
  return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_retained_memory_is_reused_instead_of_faulted_in_again():
  default, retained = _probe("default"), _probe("retain")
  assert retained["applied"] is True
  # Each call's ~100 MB of temporaries: ~25,000 fresh pages at least by default.
  assert min(default["faults"]) > 20_000, default
  assert max(retained["faults"]) < min(default["faults"]) / 4, (default, retained)
