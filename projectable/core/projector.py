"""Task-conditioned low-rank projectors from source weights to small weights.

A projector holds one linear map per role (see ``docs/method.md``):

* ``residual``: R(t), d -> ds, shared by every layer (all layers read and write
  the same residual stream);
* ``attn_qk``: per layer, heads*head_dim -> hs*head_dim_s, shared by queries and
  keys so their dot products stay meaningful;
* ``attn_vo``: per layer, shared by values and the attention output;
* ``mlp``: per layer, f -> fs.

Each map is A(t) = A0 + a task-dependent part of rank k:
``factored``: A0 + U diag(z_t) V^T (U: in x k, V: out x k), or
``full``: A0 + sum_i z_t,i A_i (k full-size bases).
z_t = c_t @ task_code, where c_t is the task descriptor (weights over classes),
so any class set has a code. A weight W (in x out) becomes A_in^T W A_out.

At initialisation A0 selects source coordinates (first ds residual coordinates,
first head_dim_s coordinates of the first hs heads, first fs MLP units) and the
task part is zero, so the projected model is exactly a sub-network of the source.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from projectable.core.model import ModelConfig

FORMS = ("factored", "full")


@dataclasses.dataclass(frozen=True)
class ProjectorConfig:
  rank: int  # k: rank of the task-dependent part; 0 = task-independent maps.
  form: str = "factored"  # 'factored' (U diag(z) V^T) or 'full' (k full bases).
  code_std: float = 1.0  # Initial scale of the per-class task codes.
  scales_about_one: bool = False  # Project LayerNorm scales as deviations from 1.
  match_rms: bool = False  # Rescale projected block matrices to their selection's RMS.


LN_SCALES = ("ln1_scale", "ln2_scale")


def shift_scales(weights: dict, by: float) -> dict:
  """``weights`` (a source's or a small model's, any leading axes) with ``by`` added to
  every LayerNorm scale.

  Projected as they are, LayerNorm scales (ones at initialisation) become the residual
  map's column sums: every Adam step on the map's d_in rows moves them together, and all
  layers' scales alike. Projecting ``scale - 1`` and adding 1 back
  (``ProjectorConfig.scales_about_one``) is the same specialist while the map selects
  coordinates, and leaves the scales to the source once the map mixes them.
  """
  blocks = {**weights["blocks"], **{k: weights["blocks"][k] + by for k in LN_SCALES}}
  return {**weights, "blocks": blocks, "final_ln_scale": weights["final_ln_scale"] + by}


def selection_indices(src: ModelConfig, small: ModelConfig) -> dict[str, np.ndarray]:
  """Source coordinates that the small model's coordinates start as, per map."""
  attn = [h * src.head_dim + e for h in range(small.heads) for e in range(small.head_dim)]
  return {
    "residual": np.arange(small.d),
    "attn_qk": np.asarray(attn),
    "attn_vo": np.asarray(attn),
    "mlp": np.arange(small.mlp_dim),
  }


# Logical axis of each map's input (the source's wide dimension).
_MAP_IN_AXIS = {"residual": "embed", "attn_qk": "heads", "attn_vo": "heads", "mlp": "mlp"}


def _map_dims(src: ModelConfig, small: ModelConfig) -> dict[str, tuple[tuple[int, ...], int, int]]:
  """(leading layer dims, in, out) of every map."""
  layers = (src.depth,)
  return {
    "residual": ((), src.d, small.d),
    "attn_qk": (layers, src.heads * src.head_dim, small.heads * small.head_dim),
    "attn_vo": (layers, src.heads * src.head_dim, small.heads * small.head_dim),
    "mlp": (layers, src.mlp_dim, small.mlp_dim),
  }


def init_projector(
  src: ModelConfig, small: ModelConfig, cfg: ProjectorConfig, key: jax.Array
) -> dict:
  """Projector weights whose maps start as the structured selection."""
  k = cfg.rank
  indices = selection_indices(src, small)
  keys = jax.random.split(key, 5)
  maps = {}
  for i, (name, (lead, d_in, d_out)) in enumerate(_map_dims(src, small).items()):
    base = jnp.zeros((d_in, d_out), jnp.float32).at[indices[name], jnp.arange(d_out)].set(1.0)
    entry = {"base": jnp.broadcast_to(base, (*lead, d_in, d_out))}
    if k and cfg.form == "factored":
      entry["u"] = jax.random.normal(keys[i], (*lead, d_in, k)) / np.sqrt(d_in)
      entry["v"] = jnp.zeros((*lead, d_out, k), jnp.float32)
    elif k:
      entry["bases"] = jnp.zeros((*lead, k, d_in, d_out), jnp.float32)
    maps[name] = entry
  params = {"maps": maps}
  if k:
    params["task_code"] = cfg.code_std * jax.random.normal(keys[4], (src.num_classes, k))
  return params


def logical_axes(src: ModelConfig, small: ModelConfig, cfg: ProjectorConfig) -> dict:
  """Logical axis names of the projector's weights (same tree as init)."""
  maps = {}
  for name, (lead, _, _) in _map_dims(src, small).items():
    layers = ("layers",) * len(lead)
    axis = _MAP_IN_AXIS[name]
    entry = {"base": (*layers, axis, None)}
    if cfg.rank and cfg.form == "factored":
      entry["u"] = (*layers, axis, None)
      entry["v"] = (*layers, None, None)
    elif cfg.rank:
      entry["bases"] = (*layers, None, axis, None)
    maps[name] = entry
  axes = {"maps": maps}
  if cfg.rank:
    axes["task_code"] = (None, None)
  return axes


def task_code(projector: dict, task_C: jax.Array) -> jax.Array | None:
  """z_t for a task descriptor, or None for a task-independent projector."""
  return task_C @ projector["task_code"] if "task_code" in projector else None


def map_for_task(entry: dict, z_K: jax.Array | None) -> jax.Array:
  """A(t) of one map (possibly with leading layer dims)."""
  a = entry["base"]
  if z_K is None:
    return a
  if "u" in entry:
    return a + jnp.einsum("...ik,k,...ok->...io", entry["u"], z_K, entry["v"])
  return a + jnp.einsum("k,...kio->...io", z_K, entry["bases"])


def project(source: dict, projector: dict, task_C: jax.Array) -> dict:
  """Small-model weights for one task, from source and projector weights.

  ``task_C`` is the task descriptor (weights over classes). Pure and jittable; under
  ``vmap`` over tasks the task-independent core is still computed once. To emit several
  specialists use ``project_tasks``, or keep a ``projection_core``.
  """
  if not _has_bases(projector):
    return jax.tree.map(lambda x: x[0], project_tasks(source, projector, task_C[None]))
  z_K = task_code(projector, task_C)
  fixed = {"maps": {name: {"base": map_for_task(e, z_K)} for name, e in projector["maps"].items()}}
  small = project_from_core(projection_core(source, fixed), fixed, task_C[None])
  return jax.tree.map(lambda x: x[0], small)


def project_tasks(source: dict, projector: dict, tasks_MxC: jax.Array) -> dict:
  """Small-model weights for M tasks at once, each leaf with a leading task axis.

  With factored maps A(t) = [A0 | U] E(t), E(t) = [I; diag(z_t) V^T], so every
  A_in(t)^T W A_out(t) = E_in(t)^T ([A0 | U]_in^T W [A0 | U]_out) E_out(t): the
  expensive core is computed once for all tasks and each task only pays for
  rank-k corrections. Full bases have no such core and are projected task by task.
  """
  if _has_bases(projector):
    return jax.vmap(functools.partial(project, source, projector))(tasks_MxC)
  return project_from_core(projection_core(source, projector), projector, tasks_MxC)


def _has_bases(projector: dict) -> bool:
  """Whether the task part is full bases (no task-independent core)."""
  return any("bases" in entry for entry in projector["maps"].values())


def _per_layer(maps: dict) -> dict:
  return {name: maps[name] for name in ("attn_qk", "attn_vo", "mlp")}


# The maps on the left and right of each layer weight (A_left^T W A_right) ...
_SANDWICHES = {
  "wq": ("residual", "attn_qk"),
  "wk": ("residual", "attn_qk"),
  "wv": ("residual", "attn_vo"),
  "wo": ("attn_vo", "residual"),
  "w1": ("residual", "mlp"),
  "w2": ("mlp", "residual"),
}
# ... and of each layer vector (x A).
_ROWS = {
  "b1": "mlp",
  "b2": "residual",
  **{f"ln{i}_{p}": "residual" for i in (1, 2) for p in ("scale", "bias")},
}


def projection_core(source: dict, projector: dict) -> dict:
  """The task-independent part of the projection: every weight against [A0 | U].

  Computed once (per step in training; once per checkpoint when emitting), it leaves
  each task's specialist only rank-k corrections (``project_from_core``). Factored or
  task-independent maps only: full bases have no shared core.
  """
  if _has_bases(projector):
    raise ValueError("full-bases projectors have no task-independent core; use project_tasks")
  maps = projector["maps"]
  res_IxT = _columns(maps["residual"])
  entries = {"residual": maps["residual"], **_per_layer(maps)}
  blocks = source["blocks"]
  core = {name: _core(entries[l], blocks[name], entries[r]) for name, (l, r) in _SANDWICHES.items()}
  core |= {name: _times_columns(blocks[name][:, None], entries[r]) for name, r in _ROWS.items()}
  return {
    "token_embed": source["token_embed"] @ res_IxT,
    "pos_embed": source["pos_embed"] @ res_IxT,
    "start_embed": source["start_embed"] @ res_IxT,
    "blocks": core,
    "final_ln_scale": source["final_ln_scale"][None] @ res_IxT,
    "final_ln_bias": source["final_ln_bias"][None] @ res_IxT,
    "unembed": res_IxT.T @ source["unembed"],
    "unembed_bias": source["unembed_bias"],
  }


def project_from_core(core: dict, projector: dict, tasks_MxC: jax.Array) -> dict:
  """Small-model weights for M tasks (leading task axis) from a ``projection_core``."""
  maps = projector["maps"]
  res = maps["residual"]
  z_MxK = task_code(projector, tasks_MxC)
  m = tasks_MxC.shape[0]

  def layer(c: dict, per_layer: dict) -> dict:
    entries = {"residual": res, **per_layer}
    out = {
      name: _left(_right(_tasks(c[name], m), entries[r], z_MxK), entries[l], z_MxK)
      for name, (l, r) in _SANDWICHES.items()
    }
    rows = {name: _rows_from_core(c[name], entries[r], z_MxK, m)[:, 0] for name, r in _ROWS.items()}
    return out | rows

  rows = functools.partial(_rows_from_core, entry=res, z_MxK=z_MxK, m=m)
  return {
    "token_embed": rows(core["token_embed"]),
    "pos_embed": rows(core["pos_embed"]),
    "start_embed": _right((tasks_MxC @ core["start_embed"])[:, None], res, z_MxK),
    "blocks": jax.vmap(layer, out_axes=1)(core["blocks"], _per_layer(maps)),
    "final_ln_scale": rows(core["final_ln_scale"])[:, 0],
    "final_ln_bias": rows(core["final_ln_bias"])[:, 0],
    "unembed": _left(_tasks(core["unembed"], m), res, z_MxK),
    "unembed_bias": _tasks(core["unembed_bias"], m),
  }


def _columns(entry: dict) -> jax.Array:
  """[A0 | U] (in, out + k): the map's columns shared by every task."""
  return jnp.concatenate([entry["base"], entry["u"]], -1) if "u" in entry else entry["base"]


def _times_columns(x_LxNxI: jax.Array, entry: dict) -> jax.Array:
  """x [A0 | U] (layers, n, out + k), multiplying A0 and U apart: a wide map is never
  concatenated (for the MLP map that copy would cost as much as a product)."""
  parts = [x_LxNxI @ entry["base"]] + ([x_LxNxI @ entry["u"]] if "u" in entry else [])
  return jnp.concatenate(parts, -1)


def _rows_from_core(x_NxT: jax.Array, entry: dict, z_MxK: jax.Array | None, m: int) -> jax.Array:
  """x A(t) for every task (M, N, out), from x [A0 | U]."""
  return _right(_tasks(x_NxT, m), entry, z_MxK)


def _tasks(x: jax.Array, m: int) -> jax.Array:
  return jnp.broadcast_to(x, (m, *x.shape))


def _right(x_MxAxTp: jax.Array, entry: dict, z_MxK: jax.Array | None) -> jax.Array:
  """x E(t) for each task m: from x [A0 | U] to x A(t) = x A0 + ((x U) * z_t) V^T."""
  if z_MxK is None or "u" not in entry:
    return x_MxAxTp
  t = entry["v"].shape[0]
  tail = jnp.einsum("mak,mk,tk->mat", x_MxAxTp[..., t:], z_MxK, entry["v"])
  return x_MxAxTp[..., :t] + tail


def _left(y_MxSpxT: jax.Array, entry: dict, z_MxK: jax.Array | None) -> jax.Array:
  """E(t)^T y for each task m: from [A0 | U]^T y to A(t)^T y."""
  if z_MxK is None or "u" not in entry:
    return y_MxSpxT
  s = entry["v"].shape[0]
  return y_MxSpxT[:, :s] + jnp.einsum("sk,mk,mkt->mst", entry["v"], z_MxK, y_MxSpxT[:, s:])


def _core(left: dict, w_LxIxO: jax.Array, right: dict) -> jax.Array:
  """[A0 | U]_left^T W [A0 | U]_right for every layer, in the cheaper order.

  Every product is one dot batched over layers that reads the source weight in its
  stored layout: a map shared by all layers is broadcast over them first (unbatched,
  XLA:CPU transposes the weight instead), and the second map multiplies the small
  intermediate part by part. ``project`` at the benchmark sizes: 15.4 -> 12.5 ms on
  one core against a vmap over layers of 2-D products (benchmarks/README.md).
  """
  layers, i, o = w_LxIxO.shape
  s = left["base"].shape[-1] + _rank(left)
  t = right["base"].shape[-1] + _rank(right)
  if s * i * o + s * o * t <= i * o * t + s * i * t:
    left_LxIxS = jnp.broadcast_to(_columns(left), (layers, i, s))
    return _times_columns(jnp.einsum("lis,lio->lso", left_LxIxS, w_LxIxO), right)
  w_LxIxT = w_LxIxO @ _columns(right)
  core_LxTxS = _times_columns(jnp.swapaxes(w_LxIxT, -1, -2), left)
  return jnp.swapaxes(core_LxTxS, -1, -2)


def _rank(entry: dict) -> int:
  return entry["u"].shape[-1] if "u" in entry else 0


def match_selection_rms(
  small: dict, source: dict, src: ModelConfig, small_cfg: ModelConfig
) -> dict:
  """``small`` (any leading task axes) with each block matrix rescaled, per layer, to the RMS
  of the source sub-matrix its maps start from (``ProjectorConfig.match_rms``).

  A projected entry sums many source entries through the maps, so once Adam aligns the maps
  with the source's updates the specialists' matrices grow far faster than a small model's
  trained directly (on digits' widths, MLP weights 24x the universal model's after 25 steps
  at lr 2e-2, and the residual stream ~1000x its embeddings: the λ = 0 stall). Rescaled, the
  maps choose directions and the source's selected entries, which move by about the rate
  per step like a small model's, set the size. At initialisation it is the identity.
  """
  selected = _selected_matrices(source["blocks"], selection_indices(src, small_cfg))
  blocks = dict(small["blocks"])
  for name, sel_LxIxO in selected.items():
    w = blocks[name]
    target = _rms(sel_LxIxO).reshape((1,) * (w.ndim - 3) + (-1, 1, 1))
    blocks[name] = w * (target / _rms(w))
  return {**small, "blocks": blocks}


def _rms(w: jax.Array) -> jax.Array:
  """Root mean square over the last two axes, kept."""
  return jnp.sqrt(jnp.mean(jnp.square(w), axis=(-2, -1), keepdims=True) + 1e-12)


def _selected_matrices(blocks: dict, idx: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """The source's block matrices indexed down to the selection (layers, in, out)."""
  r, qk, f = idx["residual"], idx["attn_qk"], idx["mlp"]
  return {
    "wq": blocks["wq"][:, r][:, :, qk],
    "wk": blocks["wk"][:, r][:, :, qk],
    "wv": blocks["wv"][:, r][:, :, qk],
    "wo": blocks["wo"][:, qk][:, :, r],
    "w1": blocks["w1"][:, r][:, :, f],
    "w2": blocks["w2"][:, f][:, :, r],
  }


def select_subnetwork(
  source: dict, src: ModelConfig, small: ModelConfig, task_C: jax.Array
) -> dict:
  """The fixed weight-selection specialist for a task, by indexing (no maps).

  This is what ``project`` computes with an untrained projector, and the
  weight-selection baseline when applied to a trained source.
  """
  idx = selection_indices(src, small)
  r, f = idx["residual"], idx["mlp"]
  b = source["blocks"]
  blocks = {**_selected_matrices(b, idx), "b1": b["b1"][:, f]}
  for name in ("ln1_scale", "ln1_bias", "ln2_scale", "ln2_bias", "b2"):
    blocks[name] = b[name][:, r]
  return {
    "token_embed": source["token_embed"][:, r],
    "pos_embed": source["pos_embed"][:, r],
    "start_embed": (task_C @ source["start_embed"])[None, r],
    "blocks": blocks,
    "final_ln_scale": source["final_ln_scale"][r],
    "final_ln_bias": source["final_ln_bias"][r],
    "unembed": source["unembed"][r],
    "unembed_bias": source["unembed_bias"],
  }
