r"""Where a call's time goes: XLA ops ranked by time in a ``jax.profiler`` trace.

  PYTHONPATH=. python benchmarks/profile.py --mode=projectable [--quick] [--top=30]
  PYTHONPATH=. python benchmarks/profile.py --call=sample --mode=specialists --batch=64
  PYTHONPATH=. python benchmarks/profile.py --call=project

Traces two calls at the benchmark sizes (``benchmarks/workloads.py``) and prints each XLA op's
time per call; the trace stays in ``--trace_dir`` for Perfetto or TensorBoard. ``--call``:
``step``, a train step of ``--mode``; ``sample``, KV-cached sampling of ``--batch`` images
from the source (``--mode=source``) or an unconditional specialist (any other mode; random
weights); ``project``, a jitted ``projector.project`` of one task
(``workloads.projection_call``: random weights, rank-8 projector). Map an op name to its HLO
with ``.lower(...).compile().as_text()``.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
from collections.abc import Callable
from typing import Any

import jax
from absl import app, flags

from benchmarks import workloads
from configs import digits
from projectable import data as data_lib
from projectable.core import model, sampling
from projectable.data import pipeline
from projectable.training import host_memory, sharding, typed_config

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """Command-line flags, defined only when run as a script (tests import this module)."""
  mode_names = ["source", "projectable", "universal", "specialists"]
  flags.DEFINE_enum("call", "step", ["step", "sample", "project"], "What to trace.")
  flags.DEFINE_enum(
    "mode", "source", mode_names, "Train step's mode; sample: source or specialist."
  )
  flags.DEFINE_integer("batch", 64, "Images per sampling call.")
  flags.DEFINE_bool("quick", False, "Quick benchmark sizes.")
  flags.DEFINE_integer("top", 30, "Ops to print.")
  flags.DEFINE_string("trace_dir", "/tmp/projectable_profile", "Where the trace is written.")


CALLS = 2


def op_times(trace_dir: str) -> collections.Counter:
  """Total microseconds per XLA op in the newest Perfetto trace under ``trace_dir``.

  Python frames (``$file:line``) and runtime spans (``Class::Method``) are left out; a
  ``while`` op's time includes the ops of its body (layer scans).
  """
  path = sorted(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True))[-1]
  with gzip.open(path) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  totals = collections.Counter()
  for event in events:
    name = event.get("name", "")
    if event.get("ph") == "X" and not name.startswith("$") and "::" not in name:
      totals[name] += event.get("dur", 0)
  return totals


def traced_call(
  call: str, mode: str, sizes: workloads.Sizes, data: data_lib.TaskData, batch: int = 64
) -> Callable[[], Any]:
  """The call to trace (see the module docstring), ready to run again and again."""
  config = workloads.bench_config(sizes, mode)
  if call == "sample":
    source = mode == "source"
    cfg = (
      typed_config.source_config(config, data)
      if source
      else typed_config.small_config(config, data, False)
    )
    params = model.init_params(cfg, jax.random.key(0))
    task_C = data.task_descriptors()[0] if source else None
    return lambda: sampling.sample(cfg, params, batch, jax.random.key(1), task_C)
  if call == "project":
    return workloads.projection_call(sizes, sizes.source["d"], sizes.small["d"])
  trainer = workloads.make_trainer(config, data)
  batcher = pipeline.TaskBatch(data, config.train.batch_tasks, sizes.examples_per_task, 0)
  placed = pipeline.place(batcher(0), trainer.batch_shardings)
  state = trainer.init_state(jax.random.key(0))

  def step():
    nonlocal state
    state, _ = trainer.train_step(state, placed)
    return state

  return step


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  host_memory.retain_freed_memory()  # As the entry points (launch/train.py) do.
  sizes = workloads.QUICK if FLAGS.quick else workloads.FULL
  data = data_lib.load(digits.get_config().data)
  with jax.set_mesh(sharding.make_mesh("data:1,model:1")):
    call = traced_call(FLAGS.call, FLAGS.mode, sizes, data, FLAGS.batch)
    jax.block_until_ready(call())  # Compiles outside the trace.
    with jax.profiler.trace(FLAGS.trace_dir, create_perfetto_trace=True):
      for _ in range(CALLS):
        jax.block_until_ready(call())
  for name, micros in op_times(FLAGS.trace_dir).most_common(FLAGS.top):
    print(f"{micros / 1e3 / CALLS:10.3f} ms/call  {name[:100]}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
