r"""Issue #7 benchmarks in one process: MFU, projectable overhead, emission, sampling, scaling.

  PYTHONPATH=. python benchmarks/run.py           # full: several minutes on 2 CPU cores
  PYTHONPATH=. python benchmarks/run.py --quick   # tiny sizes, under a minute
  PYTHONPATH=. python benchmarks/run.py --compute_dtype=bfloat16 --attention=cudnn  # a GPU

Every figure is a median over repeats of compiled calls (``benchmarks.common``) on one
device; prints a table and writes ``--out`` (default ``benchmarks/results.json``):
``{key: {"value": float, "inputs": {...}, ...}}``. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os

import jax
import jax.numpy as jnp
from absl import app, flags

from benchmarks import common, workloads
from configs import digits
from projectable import data as data_lib
from projectable.core import costs, model, projector
from projectable.data import pipeline
from projectable.experiments import arms, frontier
from projectable.training import host_memory, sharding, typed_config, validation

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """Command-line flags, defined only when run as a script (tests import this module)."""
  flags.DEFINE_bool("quick", False, "Tiny sizes and few repeats (seconds; what the test runs).")
  flags.DEFINE_string("out", "benchmarks/results.json", "Where the results JSON goes.")
  flags.DEFINE_enum("compute_dtype", "float32", model.COMPUTE_DTYPES, "config.train.compute_dtype.")
  flags.DEFINE_enum("attention", "einsum", model.ATTENTION_IMPLS, "config.train.attention.")


def matmul_flops_per_s(n: int, repeats: int, dtype: str = "float32") -> float:
  """FLOP/s of an n x n matmul of ``dtype`` inputs (float32 output), jitted, on the default
  device: the models' products are of that kind."""
  a, b = (jax.random.normal(jax.random.key(i), (n, n)).astype(dtype) for i in range(2))
  matmul = jax.jit(functools.partial(jnp.matmul, preferred_element_type=jnp.float32))
  return 2 * n**3 / common.median_seconds(lambda _: matmul(a, b), repeats)


def mfu_and_overhead(sizes: workloads.Sizes, data, peak: float) -> dict:
  """mfu_source, projectable_overhead and step_compiles at the default digits batch;
  ``peak``: FLOP/s of the large matmul in the compute dtype."""
  dtype = workloads.bench_config(sizes, "source").train.compute_dtype
  seconds, compiles, step_flops = {}, {}, {}
  for mode in ("source", "projectable"):
    config = workloads.bench_config(sizes, mode)
    trainer = workloads.make_trainer(config, data)
    batcher = pipeline.TaskBatch(data, config.train.batch_tasks, config.train.examples_per_task, 0)
    seconds[mode], compiles[mode] = workloads.step_seconds(trainer, batcher(0), sizes.repeats)
    step_flops[mode] = trainer.method.step_flops()
  inputs = {"source": sizes.source, "small": sizes.small, "batch": [10, sizes.examples_per_task]}
  achieved = step_flops["source"] / seconds["source"]
  return {
    "mfu_source": {
      "value": achieved / peak,
      "inputs": {**inputs, "matmul_n": sizes.matmul_n, "matmul_dtype": dtype, "dataset": data.name},
      "step_flops": step_flops["source"],
      "step_seconds": seconds["source"],
      "achieved_flops_per_s": achieved,
      "matmul_flops_per_s": peak,
    },
    "projectable_overhead": {
      "value": seconds["projectable"] / seconds["source"],
      "inputs": inputs,
      "step_seconds": seconds,
      "step_flops": step_flops,
    },
    "step_compiles": {
      "value": compiles["source"],
      "inputs": {"mode": "source", "steps": sizes.repeats + 1},
      "per_mode": compiles,
    },
  }


def _emission_seconds(trainer, batch, sizes: workloads.Sizes, data) -> tuple[dict, float]:
  """Trains the projectable run, then times one task's, all tasks' and the core's emission;
  ({name: seconds}, the projected specialists' test bits/dim)."""
  state = trainer.init_state(jax.random.key(0))
  for step in range(sizes.projectable_steps):
    state, _ = trainer.train_step(state, pipeline.place(batch(step), trainer.batch_shardings))
  params = state["params"]
  target = trainer.evaluate(params, data, data.test)["main"]["mean"]
  source, proj = params["source"], params["projector"]
  tasks_MxC = jnp.asarray(data.task_descriptors())
  emit = jax.jit(projector.project)
  emit_all = jax.jit(projector.project_tasks)
  core_of = jax.jit(projector.projection_core)
  core = core_of(source, proj)
  from_core = jax.jit(lambda c, p, t_C: projector.project_from_core(c, p, t_C[None]))
  calls = {
    "emit": lambda _: emit(source, proj, tasks_MxC[0]),
    "emit_all": lambda _: emit_all(source, proj, tasks_MxC),
    "core": lambda _: core_of(source, proj),
    "from_core": lambda _: from_core(core, proj, tasks_MxC[0]),
  }
  return {k: common.median_seconds(f, sizes.repeats) for k, f in calls.items()}, target


def emission(sizes: workloads.Sizes, data, peak: float) -> dict:
  """emit_ms of a jitted ``project`` and emit_vs_train against specialists trained from scratch.

  Both are complete runs (learning rate warmed up and decayed to zero, digits.py's schedule
  scaled to their steps); the projectable run is at ``frontier.compute_optimal``'s
  lambda_source (0), the setting that spends its compute on the specialists. ``peak_ms`` is
  the machine's limit for one emission: its matmul FLOPs at ``peak`` FLOP/s.
  """
  trainers, batches = {}, {}
  for mode, steps in (
    ("projectable", sizes.projectable_steps),
    ("specialists", sizes.specialist_cap),
  ):
    config = frontier.compute_optimal(arms.scaled(workloads.bench_config(sizes, mode), steps), ())
    trainers[mode] = workloads.make_trainer(config, data)
    batches[mode] = pipeline.TaskBatch(data, config.train.batch_tasks, sizes.examples_per_task, 0)
  seconds, target = _emission_seconds(trainers["projectable"], batches["projectable"], sizes, data)
  emit_s, emit_all_s = seconds["emit"], seconds["emit_all"]
  tasks = data.num_tasks
  method = trainers["projectable"].method
  proj = method.proj
  emit_flops = costs.projection_flops(method.src, method.small, proj.rank, proj.form)
  spec = trainers["specialists"]
  step_s, _ = workloads.step_seconds(spec, batches["specialists"](0), sizes.repeats)
  state, reached, steps, bits = spec.init_state(jax.random.key(0)), False, 0, math.inf
  best = math.inf
  while steps < sizes.specialist_cap and not reached:
    for _ in range(sizes.eval_every):
      state, _ = spec.train_step(
        state, pipeline.place(batches["specialists"](steps), spec.batch_shardings)
      )
      steps += 1
    bits = spec.evaluate(state["params"], data, data.test)["main"]["mean"]
    best, reached = min(best, bits), bits <= target
  train_s = steps * step_s
  return {
    "emit_ms": {
      "value": emit_s * 1e3,
      "inputs": {
        "source": sizes.source,
        "small": sizes.small,
        "rank": proj.rank,
        "jit": True,
      },
      "all_tasks_ms": emit_all_s * 1e3,  # Every task's specialist from one project_tasks.
      # The task-independent projection_core, computed once per checkpoint ...
      "core_ms": seconds["core"] * 1e3,
      # ... after which each further specialist costs only its rank-k corrections.
      "from_core_ms": seconds["from_core"] * 1e3,
      "tasks": tasks,
      "flops": emit_flops,  # One task's projection (costs.projection_flops) ...
      "peak_ms": emit_flops / peak * 1e3,  # ... at the peak matmul rate: the machine's limit.
    },
    "emit_vs_train": {
      "value": train_s / emit_all_s,
      "inputs": {
        "projectable_steps": sizes.projectable_steps,
        "lambda_source": frontier.COMPUTE_OPTIMAL_LAMBDA,
        "specialist_cap": sizes.specialist_cap,
        "eval_every": sizes.eval_every,
        "method": "train seconds = specialists steps until test bits/dim <= the projected "
        "specialists' (checked every eval_every steps of a specialist_cap-step run) x median "
        "specialists step time (all 10 tasks' specialists trained together), over the time to "
        "emit all 10 (project_tasks); a lower bound when not reached",
      },
      "projected_bits_per_dim": target,
      "specialist_bits_per_dim": bits,  # At the last evaluation ...
      "specialist_best_bits_per_dim": best,  # ... and the best of all of them.
      "reached": reached,
      "specialist_steps": steps,
      "specialist_step_seconds": step_s,
      "train_seconds": train_s,
    },
  }


def sample_speedup(sizes: workloads.Sizes, data, peak: float) -> dict:
  """Specialist/source KV-cached tokens/s at batch 1 and 64, over their forward FLOP ratio.

  The value is at the benchmark's small width; ``per_width`` repeats the ratio for
  specialists half and twice as wide (same head width, mlp 4x), against the same source
  timings, to show how it depends on the width ratio. The ratio equals the specialist's
  fraction of the ``peak`` matmul FLOP/s over the source's (both recorded): how much less
  of the machine the smaller model keeps busy.
  """
  config = workloads.bench_config(sizes, "projectable")
  src = typed_config.source_config(config, data)
  task_C = data.task_descriptors()[0]
  src_params = model.init_params(src, jax.random.key(0))
  batches = (1, 64)
  src_s = {b: common.sample_seconds(src, src_params, task_C, b, sizes.repeats) for b in batches}
  head_dim = sizes.small["d"] // sizes.small["heads"]
  per_width = {}
  for ds in (sizes.small["d"] // 2, sizes.small["d"], 2 * sizes.small["d"]):
    config.small.update(d=ds, heads=ds // head_dim, mlp_dim=4 * ds)
    small = typed_config.small_config(config, data, False)
    small_params = model.init_params(small, jax.random.key(1))
    seq_flops = {m: costs.forward_flops_per_sequence(m) for m in (src, small)}
    flop_ratio = seq_flops[src] / seq_flops[small]
    per_batch = {}
    for b in batches:
      small_s = common.sample_seconds(small, small_params, None, b, sizes.repeats)
      per_batch[b] = {
        "source_tokens_per_s": b * src.seq_len / src_s[b],
        "specialist_tokens_per_s": b * small.seq_len / small_s,
        "speedup_over_flop_ratio": src_s[b] / small_s / flop_ratio,
        "source_fraction_of_peak": b * seq_flops[src] / src_s[b] / peak,
        "specialist_fraction_of_peak": b * seq_flops[small] / small_s / peak,
      }
    per_width[ds] = {"flop_ratio": flop_ratio, "per_batch": per_batch}
  at_size = per_width[sizes.small["d"]]
  return {
    "sample_speedup": {
      "value": min(b["speedup_over_flop_ratio"] for b in at_size["per_batch"].values()),
      "inputs": {"source": sizes.source, "small": sizes.small, "batches": list(batches)},
      **at_size,
      "per_width": {
        ds: {b: e["speedup_over_flop_ratio"] for b, e in w["per_batch"].items()}
        for ds, w in per_width.items()
      },
    }
  }


def scaling(sizes: workloads.Sizes) -> dict:
  """Source step time against batch, sequence length and width; projection against d and ds."""
  results = {}
  sweeps = {
    "scaling_batch": [(n, {"n": n}) for n in sizes.batch_sweep],
    "scaling_seq_len": [(l, {"seq_len": l}) for l in sizes.seq_sweep],
    "scaling_width": [(d, {"d": d}) for d in sizes.width_sweep],
  }
  for key, points in sweeps.items():
    xs, ys = [], []
    for x, p in points:
      width = {"d": p["d"], "mlp_dim": 4 * p["d"]} if "d" in p else {}
      config = workloads.bench_config(sizes, "source", **width)
      config.train.examples_per_task = p.get("n", sizes.examples_per_task)
      data = workloads.synthetic_data(p.get("seq_len", 64))
      seconds, _ = workloads.step_seconds(
        workloads.make_trainer(config, data), workloads.synthetic_batch(config, data), sizes.repeats
      )
      xs.append(10 * config.train.examples_per_task if key == "scaling_batch" else x)
      ys.append(seconds)
    results[key] = {
      "value": common.power_law_exponent(xs, ys),
      "inputs": {
        "mode": "source",
        "x": xs,
        "base": {**sizes.source, "batch": [10, sizes.examples_per_task], "seq_len": 64},
        "data": "synthetic tokens",
      },
      "step_seconds": ys,
    }
  base_d, base_ds = sizes.proj_ds_at_d, sizes.small["d"]
  for key, sweep in (
    ("projection_scaling_d", sizes.proj_d_sweep),
    ("projection_scaling_ds", sizes.proj_ds_sweep),
  ):
    ys = [
      workloads.projection_seconds(
        sizes, d if key.endswith("_d") else base_d, base_ds if key.endswith("_d") else d
      )
      for d in sweep
    ]
    results[key] = {
      "value": common.power_law_exponent(sweep, ys),
      "inputs": {
        "x": list(sweep),
        "fixed": {"ds": base_ds} if key.endswith("_d") else {"d": base_d},
        "mlp_dim": "4 x width",
        "rank": 8,
      },
      "seconds": ys,
    }
  return results


def run(quick: bool, out: str, retained_memory: bool = False, train: dict | None = None) -> dict:
  """Runs every benchmark, prints a table, writes ``out``; returns the results.

  ``retained_memory`` records whether ``host_memory.retain_freed_memory`` applied, as the
  entry points do (``main``; the in-process test runs without it). ``train``: config.train
  options of every benchmarked model, checked as a training run would before any work.
  """
  sizes = dataclasses.replace(workloads.QUICK if quick else workloads.FULL, train=train or {})
  config = workloads.bench_config(sizes, "projectable")
  validation.validate(config)
  validation.check_backend(config)
  data = data_lib.load(digits.get_config().data)
  mesh = sharding.make_mesh("data:1,model:1")
  with jax.set_mesh(mesh):
    peak = matmul_flops_per_s(sizes.matmul_n, sizes.repeats, config.train.compute_dtype)
    results = {
      **mfu_and_overhead(sizes, data, peak),
      **emission(sizes, data, peak),
      **sample_speedup(sizes, data, peak),
      **scaling(sizes),
    }
  device = jax.devices()[0]
  meta = {
    "quick": quick,
    "device": f"{device.platform} {device.device_kind}",
    # Cores this process may use: a taskset pin shows here, not in os.cpu_count().
    "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    "retained_memory": retained_memory,
    "train": sizes.train,
  }
  print(f"{meta['device']}, quick={quick}, medians of {sizes.repeats}")
  for key, entry in results.items():
    print(f"{key:<24} {entry['value']:>12.4g}")
  with open(out, "w") as f:
    json.dump({"meta": meta, **results}, f, indent=2, default=str)
  return results


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  train = {"compute_dtype": FLAGS.compute_dtype, "attention": FLAGS.attention}
  run(FLAGS.quick, FLAGS.out, host_memory.retain_freed_memory(), train)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
