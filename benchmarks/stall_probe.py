r"""Issue #29's λ = 0 stall, measured inside the projected model while it trains.

  PYTHONPATH=. python benchmarks/stall_probe.py --mode=projectable --lr=2e-2
  PYTHONPATH=. python benchmarks/stall_probe.py --mode=projectable --lr=2e-2 \
    --overrides=projector.match_rms=True
  PYTHONPATH=. python benchmarks/stall_probe.py --mode=universal --lr=2e-2
  PYTHONPATH=. python benchmarks/stall_probe.py --dataset=fashion_mnist --steps=300 --lr=2e-2

The tiny digits config with digits' source width (d=96, 4 heads, MLP 384; small d=16,
depth 2), λ = 0, warmup 10, one seed (or Fashion-MNIST's cpu variant without dropout).
Every ``--every`` steps it prints one JSON line for task 0's specialist (or the universal
model) on a fixed train batch: the mean train loss of the last 20 steps, the embeddings'
and each layer's residual-stream RMS, the attention's and the MLP's output RMS, the largest
attention logit and the mean attention entropy, the block matrices' Frobenius norms, the
LayerNorm scales and the output logits; for projection also the maps' column norms and the
source's matrices. ``--source_lr_scale`` / ``--projector_lr_scale`` set the two groups' rates.
Figures: docs/method.md ("Why λ = 0 stalls").
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from configs import digits, fashion_mnist
from projectable import data as data_lib
from projectable.core import model
from projectable.data import pipeline
from projectable.training import sharding
from projectable.training import trainer as trainer_lib
from projectable.training.modes import make_method

FLAGS = flags.FLAGS
MATRICES = ("wq", "wk", "wv", "wo", "w1", "w2")


def _define_flags() -> None:
  flags.DEFINE_enum("mode", "projectable", ["projectable", "universal"], "What trains.")
  flags.DEFINE_enum(
    "dataset",
    "digits",
    ["digits", "fashion_mnist"],
    "digits: tiny at digits' source width; "
    "fashion_mnist: its cpu variant without dropout (warmup 50).",
  )
  flags.DEFINE_float("lr", 2e-2, "Peak learning rate.")
  flags.DEFINE_integer("steps", 150, "Train steps (the cosine schedule's length).")
  flags.DEFINE_integer("every", 25, "Steps between probes.")
  flags.DEFINE_float("source_lr_scale", 1.0, "Projectable: the source's rate multiple.")
  flags.DEFINE_float("projector_lr_scale", None, "Projectable: the projectors' (None: default).")
  flags.DEFINE_list("overrides", [], "More config fields as a.b=value (bool, int or float).")


def probe_config():
  """The probed config, λ = 0, with the flags' settings."""
  if FLAGS.dataset == "digits":
    c = digits.get_config("tiny")
    c.model.update(d=96, heads=4, mlp_dim=384)
    c.train.warmup_steps = 10
  else:
    c = fashion_mnist.get_config("cpu")
    c.model.dropout = c.small.dropout = 0.0
  c.lambda_source, c.mode = 0.0, FLAGS.mode
  c.train.update(num_steps=FLAGS.steps, learning_rate=FLAGS.lr)
  c.train.projector_lr_scale = FLAGS.projector_lr_scale
  for item in FLAGS.overrides:
    field, value = item.split("=")
    *path, name = field.split(".")
    node = c
    for part in path:
      node = node[part]
    node[name] = value == "True" if value in ("True", "False") else type(node[name])(value)
  return c


def block_stats(cfg: model.ModelConfig, w: dict, tokens_NxL: jax.Array, task_C: jax.Array) -> dict:
  """What the residual stream and attention of the small weights ``w`` do on ``tokens``."""
  n, length = tokens_NxL.shape
  task_NxC = jnp.broadcast_to(task_C, (n, task_C.shape[0])) if cfg.num_classes else None
  x = nnx.merge(model.graphdef(cfg), w).embed(tokens_NxL, task_NxC)
  heads = cfg.heads
  rms = lambda a: float(jnp.sqrt(jnp.mean(jnp.square(a))))
  out = {"embed_rms": rms(x), "token_embed_fro": float(jnp.linalg.norm(w["token_embed"]))}
  causal_LxL = jnp.tril(jnp.ones((length, length), bool))
  for layer in range(w["blocks"]["wq"].shape[0]):
    wl = {k: v[layer] for k, v in w["blocks"].items()}
    h = model.layer_norm(x, wl["ln1_scale"], wl["ln1_bias"])
    d, a = wl["wq"].shape
    q, k = (
      jnp.einsum("nld,dhk->nhlk", h, wl[m].reshape(d, heads, a // heads)) for m in ("wq", "wk")
    )
    logits = jnp.einsum("nhqk,nhsk->nhqs", q, k) * (a // heads) ** -0.5
    probs = jax.nn.softmax(jnp.where(causal_LxL, logits, -1e30), -1)
    entropy = -jnp.where(causal_LxL, probs * jnp.log(probs + 1e-30), 0.0).sum(-1).mean()
    attn = model.attention(h, wl, heads)
    x = x + attn
    mlp = model.mlp(model.layer_norm(x, wl["ln2_scale"], wl["ln2_bias"]), wl)
    x = x + mlp
    out |= {
      f"l{layer}_max_logit": float(jnp.where(causal_LxL, jnp.abs(logits), 0).max()),
      f"l{layer}_entropy": float(entropy),
      f"l{layer}_attn_rms": rms(attn),
      f"l{layer}_mlp_rms": rms(mlp),
      f"l{layer}_resid_rms": rms(x),
      f"l{layer}_ln_scale_max": float(jnp.abs(jnp.stack([wl["ln1_scale"], wl["ln2_scale"]])).max()),
      **{f"l{layer}_{m}_fro": float(jnp.linalg.norm(wl[m])) for m in MATRICES},
    }
  final = model.layer_norm(x, w["final_ln_scale"], w["final_ln_bias"])
  logits = final @ w["unembed"] + w["unembed_bias"]
  return out | {
    "final_ln_scale_max": float(jnp.abs(w["final_ln_scale"]).max()),
    "unembed_fro": float(jnp.linalg.norm(w["unembed"])),
    "logit_std": float(logits.std(-1).mean()),
  }


def projector_stats(params: dict) -> dict:
  """The maps' column norms and the source's matrices' Frobenius norms."""
  out = {}
  for name, entry in params["projector"]["maps"].items():
    norms = np.linalg.norm(np.asarray(entry["base"]), axis=-2)
    out |= {f"map_{name}_col_max": float(norms.max()), f"map_{name}_col_mean": float(norms.mean())}
  blocks = params["source"]["blocks"]
  return out | {f"src_{m}_fro": float(np.linalg.norm(blocks[m])) for m in MATRICES}


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = probe_config()
  data = data_lib.load(config.data)
  mesh = sharding.make_mesh(config.mesh)
  with jax.set_mesh(mesh):
    method = make_method(config, data)
    if FLAGS.mode == "projectable" and FLAGS.source_lr_scale != 1:
      scales = method.lr_scales() or jax.tree.map(lambda _: 1.0, method.init(jax.random.key(0)))
      scales["source"] = jax.tree.map(lambda _: FLAGS.source_lr_scale, scales["source"])
      method.lr_scales = lambda: scales
    trainer = trainer_lib.Trainer(method, mesh)
    train = config.train
    batcher = pipeline.TaskBatch(data, train.batch_tasks, train.examples_per_task, config.seed)
    fixed = batcher(10**6)  # A batch no step trains on.
    tokens_NxL, task_C = jnp.asarray(fixed["tokens"][0]), jnp.asarray(fixed["task"][0])
    state, losses = trainer.init_state(jax.random.key(config.seed)), []
    for step in range(1, config.train.num_steps + 1):
      batch = pipeline.place(batcher(step - 1), trainer.batch_shardings)
      state, metrics = trainer.train_step(state, batch)
      losses.append(float(metrics["loss"]))
      if step % FLAGS.every and step != config.train.num_steps:
        continue
      params = jax.device_get(state["params"])
      projected = FLAGS.mode == "projectable"
      w = method.specialist(params, 0, task_C) if projected else params["small"]
      row = {"step": step, "late_loss": float(np.mean(losses[-20:]))}
      row |= block_stats(method.small, w, tokens_NxL, task_C)
      row |= projector_stats(params) if projected else {}
      print(json.dumps({k: round(v, 4) for k, v in row.items()}), flush=True)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
