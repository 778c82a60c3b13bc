"""benchmarks/run.py --quick in-process: every issue #7 figure is there, finite and positive."""

import dataclasses
import json
import math

import pytest

from benchmarks import run, workloads
from projectable.training import typed_config

KEYS = (
  "mfu_source",
  "projectable_overhead",
  "emit_ms",
  "emit_vs_train",
  "sample_speedup",
  "scaling_batch",
  "scaling_seq_len",
  "scaling_width",
  "projection_scaling_d",
  "projection_scaling_ds",
  "step_compiles",
)


def test_quick_benchmarks_produce_every_figure(tmp_path):
  out = tmp_path / "results.json"
  run.run(quick=True, out=str(out))
  results = json.loads(out.read_text())
  assert results["meta"]["quick"] is True
  for key in KEYS:
    value = results[key]["value"]
    # A scaling exponent fitted to a few timings at the quick sizes can take any sign on a
    # loaded machine: that it is finite is what a test can hold; its size is the benchmark's.
    assert math.isfinite(value) and ("scaling" in key or value > 0), (key, value)
    assert results[key]["inputs"], key
  for extra in ("all_tasks_ms", "core_ms", "from_core_ms", "peak_ms"):
    assert math.isfinite(results["emit_ms"][extra]) and results["emit_ms"][extra] > 0, extra
  # No emission beats its FLOPs at the peak matmul rate.
  assert results["emit_ms"]["peak_ms"] < results["emit_ms"]["value"]
  for entry in results["sample_speedup"]["per_batch"].values():
    fractions = entry["specialist_fraction_of_peak"], entry["source_fraction_of_peak"]
    assert all(0 < f < 1 for f in fractions), fractions
    assert entry["speedup_over_flop_ratio"] == pytest.approx(fractions[0] / fractions[1])
  widths = results["sample_speedup"]["per_width"]
  assert sorted(map(int, widths)) == [8, 16, 32]  # Half, equal and twice the small width.
  assert all(math.isfinite(r) and r > 0 for w in widths.values() for r in w.values())
  assert results["step_compiles"]["value"] == 1
  assert set(results["step_compiles"]["per_mode"].values()) == {1}


def test_profile_ranks_the_xla_ops_of_a_traced_call(tmp_path):
  import jax
  import jax.numpy as jnp

  from benchmarks import profile

  a = jnp.ones((512, 512))
  matmul = jax.jit(lambda a: (a @ a).sum())
  matmul(a).block_until_ready()
  with jax.profiler.trace(str(tmp_path), create_perfetto_trace=True):
    matmul(a).block_until_ready()
  totals = profile.op_times(str(tmp_path))
  assert totals and all(not n.startswith("$") and "::" not in n for n in totals)
  assert any("dot" in name or "fusion" in name for name in totals), totals


def test_profile_traces_sampling_projection_and_steps_at_their_sizes():
  import jax

  from benchmarks import profile
  from configs import digits
  from projectable import data as data_lib

  data = data_lib.load(digits.get_config().data)
  sizes = workloads.QUICK
  for mode in ("source", "specialists"):
    tokens = profile.traced_call("sample", mode, sizes, data, batch=3)()
    assert tokens.shape == (3, data.seq_len)
    assert int(tokens.min()) >= 0 and int(tokens.max()) < data.levels
  small = profile.traced_call("project", "projectable", sizes, data)()
  assert small["blocks"]["w1"].shape == (
    sizes.source["depth"],
    sizes.small["d"],
    sizes.small["mlp_dim"],
  )
  step = profile.traced_call("step", "source", sizes, data)
  first, second = (jax.device_get(step()["step"]) for _ in range(2))
  assert second == first + 1  # Each call is one more train step on the kept state.


def test_train_options_reach_every_benchmarked_model_and_are_checked_first(tmp_path):
  from configs import digits
  from projectable import data as data_lib

  options = {"compute_dtype": "bfloat16", "attention": "xla"}
  sizes = dataclasses.replace(workloads.QUICK, train=options)
  data = data_lib.load(digits.get_config().data)
  for mode in ("source", "projectable"):
    src = typed_config.source_config(workloads.bench_config(sizes, mode), data)
    assert (src.compute_dtype, src.attention) == ("bfloat16", "xla")
  out = tmp_path / "results.json"
  with pytest.raises(ValueError, match=r"config\.train\.attention='cudnn'"):  # This is a CPU.
    run.run(quick=True, out=str(out), train={**options, "attention": "cudnn"})
  assert not out.exists()
