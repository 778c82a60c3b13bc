r"""Issue #6: what the sharding choices cost, measured on fake CPU devices and planned at scale.

  PYTHONPATH=. python benchmarks/sharding.py [--devices=8] [--mesh=data:4,model:2]

Compiles the projectable train step of ``configs/digits.py`` on the mesh under each
rule set below and prints, per set: median step time (ms) and its ratio to the default,
XLA's per-device temporary memory, and the collectives in the compiled HLO. Fake CPU
devices share one host's cores, so time ratios say what extra work a choice adds, not
what an interconnect would make of it; ``launch/plan.py`` gives memory at scale.
"""

from __future__ import annotations

import math
import os
import re
import sys

from absl import app, flags

FLAGS = flags.FLAGS
VARIANTS = {
  "default (small replicated)": {},
  "small sharded over model": {"small_heads": "model", "small_mlp": "model"},
  "FSDP (embed over data)": {"embed": "data"},
}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def _define_flags() -> None:
  flags.DEFINE_integer("devices", 8, "Fake CPU devices (set before JAX starts).")
  flags.DEFINE_string("mesh", "data:4,model:2", "Mesh of the measured step.")
  flags.DEFINE_integer("repeats", 10, "Timed steps per median.")


def _measure(rules: dict, mesh_spec: str, repeats: int) -> dict:
  import jax

  from benchmarks import common
  from configs import digits
  from projectable import data as data_lib
  from projectable.data import pipeline
  from projectable.training import sharding
  from projectable.training.modes import make_method
  from projectable.training.trainer import Trainer

  config = digits.get_config()
  config.mesh = mesh_spec
  config.sharding.rules.update(rules)
  data = data_lib.load(config.data)
  mesh = sharding.make_mesh(config.mesh)
  with jax.set_mesh(mesh):
    trainer = Trainer(make_method(config, data), mesh)
    state = trainer.init_state(jax.random.key(0))
    it = pipeline.train_iterator(data, config.train.batch_tasks, config.train.examples_per_task, 0)
    batch = pipeline.place(next(it), trainer.batch_shardings)
    compiled = trainer.lower_train_step(state, batch).compile()
    hlo = compiled.as_text()
    holder = {"state": state}

    def step(_):
      holder["state"], metrics = trainer.train_step(holder["state"], batch)
      return metrics["loss"]

    seconds = common.median_seconds(step, repeats)
  memory = compiled.memory_analysis()
  return {
    "step_ms": 1e3 * seconds,
    "gflops_per_device": compiled.cost_analysis()["flops"] / 1e9,
    "temp_mib": memory.temp_size_in_bytes / 2**20,
    **_collectives(hlo),
  }


def _collectives(hlo: str) -> dict:
  """Count and result MiB of each collective op in compiled HLO text."""
  counts, mib = dict.fromkeys(COLLECTIVES, 0), 0.0
  for line in hlo.splitlines():
    m = re.search(rf"= (.*?) ({'|'.join(COLLECTIVES)})(-start)?\(", line)
    if m:
      counts[m.group(2)] += 1
      for dtype, dims in re.findall(r"([a-z]+\d+)\[([\d,]*)\]", m.group(1)):
        size = math.prod(int(x) for x in dims.split(",") if x)
        mib += size * int(re.sub(r"\D", "", dtype)) / 8 / 2**20
  return {"collectives": counts, "collective_mib": mib}


def main(argv: list[str]) -> None:
  del argv
  print(f"projectable train step, configs/digits.py, mesh {FLAGS.mesh}, {FLAGS.devices} devices")
  results = {name: _measure(rules, FLAGS.mesh, FLAGS.repeats) for name, rules in VARIANTS.items()}
  base = results["default (small replicated)"]["step_ms"]
  print("| rules | step ms | vs default | GFLOP/device | temp MiB/device | collectives | MiB |")
  print("|---|---|---|---|---|---|---|")
  for name, r in results.items():
    coll = ", ".join(f"{k} {v}" for k, v in r["collectives"].items() if v)
    print(
      f"| {name} | {r['step_ms']:.1f} | {r['step_ms'] / base:.2f} | {r['gflops_per_device']:.2f} "
      f"| {r['temp_mib']:.1f} | {coll} | {r['collective_mib']:.2f} |"
    )


if __name__ == "__main__":
  _define_flags()
  flags.FLAGS(sys.argv, known_only=True)
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={flags.FLAGS.devices}"
  app.run(main)
