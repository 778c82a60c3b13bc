r"""Sampling throughput of a digits specialist against the digits source, with their FLOPs.

  PYTHONPATH=. python benchmarks/sampling.py
  PYTHONPATH=. python benchmarks/sampling.py --batches=1,8,64 --repeats=10

Both models at ``configs/digits.py``'s default sizes with random initial weights
(timing does not depend on the values): the task-conditional source and one
unconditional specialist. Each draws whole images with the KV-cached sampler
(``projectable.sampling.sample``), compiled before timing; a row reports the
median over ``--repeats`` fresh keys. Prints a table; no thresholds.
"""

import jax
from absl import app, flags

from benchmarks.common import sample_seconds
from configs import digits
from projectable import data as data_lib
from projectable.core import costs, model
from projectable.training import host_memory, typed_config

FLAGS = flags.FLAGS
flags.DEFINE_list("batches", ["1", "64"], "Images drawn per call.")
flags.DEFINE_integer("repeats", 5, "Timed calls per row (median reported).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  host_memory.retain_freed_memory()  # As the entry points (launch/train.py) do.
  config = digits.get_config()
  data = data_lib.load(config.data)
  task_C = data.task_descriptors()[0]
  models = {
    "source": (typed_config.source_config(config, data), task_C),
    "specialist": (typed_config.small_config(config, data, conditional=False), None),
  }
  print(
    f"device: {jax.devices()[0].device_kind}; {data.name}: {data.seq_len} tokens per image, "
    f"KV-cached sampling, median of {FLAGS.repeats}"
  )
  print(
    f"{'model':<11} {'d/heads/mlp/depth':>17} {'params':>8} {'MFLOP/image':>11} {'batch':>5} "
    f"{'tokens/s':>10} {'ms/image':>9}"
  )
  rate: dict[tuple[str, int], float] = {}
  for name, (cfg, cond) in models.items():
    params = model.init_params(cfg, jax.random.key(0))
    mflop = costs.forward_flops_per_sequence(cfg) / 1e6
    shape = f"{cfg.d}/{cfg.heads}/{cfg.mlp_dim}/{cfg.depth}"
    for batch in map(int, FLAGS.batches):
      seconds = sample_seconds(cfg, params, cond, batch, FLAGS.repeats)
      rate[name, batch] = batch * cfg.seq_len / seconds
      print(
        f"{name:<11} {shape:>17} {model.num_params(params):>8} {mflop:>11.2f} {batch:>5} "
        f"{rate[name, batch]:>10.0f} {seconds / batch * 1e3:>9.3f}"
      )
  src, small = (models[n][0] for n in ("source", "specialist"))
  ratio = costs.forward_flops_per_sequence(src) / costs.forward_flops_per_sequence(small)
  speedups = ", ".join(
    f"batch {b}: {rate['specialist', b] / rate['source', b]:.2f}x" for b in map(int, FLAGS.batches)
  )
  print(f"source/specialist forward FLOPs: {ratio:.2f}x; specialist/source tokens/s: {speedups}")


if __name__ == "__main__":
  app.run(main)
