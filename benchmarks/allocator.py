r"""What ``host_memory.retain_freed_memory`` costs emission and buys a train step.

  PYTHONPATH=. python benchmarks/allocator.py              # both cores
  PYTHONPATH=. taskset -c 0 python benchmarks/allocator.py # one core

Runs the same measurement in two fresh processes, glibc's default allocator and the
retained one: a jitted ``projector.project`` at the benchmark sizes
(``workloads.projection_seconds``), then the source train step, then ``project`` again in the
same process; medians of 5. Prints one row per process; no thresholds.
"""

from __future__ import annotations

import json
import subprocess
import sys

from absl import app, flags

from projectable.data import pipeline

FLAGS = flags.FLAGS


def measure(retained: bool) -> dict:
  """The three timings in this process (call first thing, before JAX starts)."""
  from projectable.training import host_memory

  applied = host_memory.retain_freed_memory() if retained else False
  import jax

  from benchmarks import workloads
  from configs import digits
  from projectable import data as data_lib
  from projectable.training import sharding

  sizes = workloads.FULL
  fresh_s = workloads.projection_seconds(sizes, 256, 64)
  data = data_lib.load(digits.get_config().data)
  with jax.set_mesh(sharding.make_mesh("data:1,model:1")):
    config = workloads.bench_config(sizes, "source")
    batch = pipeline.TaskBatch(data, config.train.batch_tasks, sizes.examples_per_task, 0)
    step_s, _ = workloads.step_seconds(
      workloads.make_trainer(config, data), batch(0), sizes.repeats
    )
  after_s = workloads.projection_seconds(sizes, 256, 64)
  return {
    "retained": applied,
    "emit_fresh_ms": fresh_s * 1e3,
    "step_s": step_s,
    "emit_after_ms": after_s * 1e3,
  }


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.child is not None:
    print(json.dumps(measure(FLAGS.child)))
    return
  print(f"{'allocator':<10} {'project fresh':>14} {'source step':>12} {'project after':>14}")
  for retained in (False, True):
    out = subprocess.run(
      [sys.executable, "-m", "benchmarks.allocator", f"--child={retained}"],
      check=True,
      capture_output=True,
      text=True,
    ).stdout
    row = json.loads(out.strip().splitlines()[-1])
    name = "retained" if row["retained"] else "default"
    print(
      f"{name:<10} {row['emit_fresh_ms']:>11.2f} ms {row['step_s']:>10.3f} s "
      f"{row['emit_after_ms']:>11.2f} ms"
    )


if __name__ == "__main__":
  flags.DEFINE_bool("child", None, "Internal: measure in this process (True: retained).")
  app.run(main)
