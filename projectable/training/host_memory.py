"""Keeping freed host memory in the process, so that CPU train steps stop re-faulting it.

XLA:CPU allocates an executable's temporaries afresh at every call (about 1.2 GB for the
source train step at the benchmark sizes) with ``posix_memalign`` on its worker threads.
glibc serves a block that large from a fresh ``mmap`` in the thread's arena and unmaps it on
free, so every step page-faults and zero-fills all of its temporaries again: ~290,000 faults
and a sixth of a source step on one core (benchmarks/README.md). Served from the main heap
and never trimmed, the same block is reused from step to step.
"""

from __future__ import annotations

import ctypes
import platform

# mallopt(3) parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER = -1  # As M_TRIM_THRESHOLD: never give the heap's free top back (mallopt(3)).


def retain_freed_memory() -> bool:
  """Makes glibc's malloc keep freed memory for reuse instead of returning it to the OS.

  One arena for all threads, no ``mmap`` for large blocks, and the heap's free top never
  trimmed: the process's resident memory stays at its peak, as with an accelerator's
  memory pool. Takes effect for threads that have not allocated yet, so call it before
  JAX starts its CPU backend (the first JAX computation). Multi-threaded programs of many
  small buffers then contend for the one arena (a jitted ``project`` 8 -> 11 ms on two cores,
  ``benchmarks/allocator.py``), so export paths leave it off. Returns whether it applied:
  False where the C library is not glibc (macOS, musl), where nothing changes.
  """
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  mallopt = ctypes.CDLL(None).mallopt
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER))
  return all(mallopt(param, value) == 1 for param, value in settings)
