r"""Where a train step's time goes: XLA ops ranked by time in a ``jax.profiler`` trace.

  PYTHONPATH=. python benchmarks/profile.py --mode=projectable [--quick] [--top=30]

Traces two steps of ``--mode`` at the benchmark sizes (``benchmarks/run.py``) and prints
each XLA op's time per step and count; the trace stays in ``--trace_dir`` for Perfetto or
TensorBoard. Map an op name to its HLO with ``trainer.train_step.lower(...).compile().as_text()``.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json

import jax
from absl import app, flags

from benchmarks import run as bench
from configs import digits
from projectable import data as data_lib
from projectable import host_memory, sharding

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """Command-line flags, defined only when run as a script (tests import this module)."""
  modes = ["source", "projectable", "universal", "specialists"]
  flags.DEFINE_enum("mode", "source", modes, "Which mode's train step.")
  flags.DEFINE_bool("quick", False, "Quick benchmark sizes.")
  flags.DEFINE_integer("top", 30, "Ops to print.")
  flags.DEFINE_string("trace_dir", "/tmp/projectable_profile", "Where the trace is written.")


STEPS = 2


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


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  host_memory.retain_freed_memory()  # As the entry points (launch/train.py) do.
  sizes = bench.QUICK if FLAGS.quick else bench.FULL
  data = data_lib.load(digits.get_config().data)
  with jax.set_mesh(sharding.make_mesh("data:1,model:1")):
    config = bench.bench_config(sizes, FLAGS.mode)
    trainer = bench.make_trainer(config, data)
    batcher = data_lib.TaskBatcher(data, config.train.batch_tasks, sizes.examples_per_task, 0)
    batch = trainer.place_batch(batcher.batch(0))
    state = trainer.init_state(jax.random.key(0))
    state, _ = trainer.train_step(state, batch)  # Compiles outside the trace.
    jax.block_until_ready(state)
    with jax.profiler.trace(FLAGS.trace_dir, create_perfetto_trace=True):
      for _ in range(STEPS):
        state, _ = trainer.train_step(state, batch)
      jax.block_until_ready(state)
  for name, micros in op_times(FLAGS.trace_dir).most_common(FLAGS.top):
    print(f"{micros / 1e3 / STEPS:10.1f} ms/step  {name[:100]}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
