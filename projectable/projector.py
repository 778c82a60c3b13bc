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

import jax
import jax.numpy as jnp
import numpy as np

from projectable.model import ModelConfig

FORMS = ("factored", "full")


@dataclasses.dataclass(frozen=True)
class ProjectorConfig:
  rank: int  # k: rank of the task-dependent part; 0 = task-independent maps.
  form: str = "factored"  # 'factored' (U diag(z) V^T) or 'full' (k full bases).
  code_std: float = 1.0  # Initial scale of the per-class task codes.


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

  ``task_C`` is the task descriptor (weights over classes). Pure and jittable;
  vmap it over tasks to emit several specialists at once.
  """
  z = task_code(projector, task_C)
  a = {name: map_for_task(entry, z) for name, entry in projector["maps"].items()}
  r_DxS = a["residual"]
  qk, vo, m = a["attn_qk"], a["attn_vo"], a["mlp"]
  b = source["blocks"]
  blocks = {
    "wq": jnp.einsum("dr,nda,nas->nrs", r_DxS, b["wq"], qk),
    "wk": jnp.einsum("dr,nda,nas->nrs", r_DxS, b["wk"], qk),
    "wv": jnp.einsum("dr,nda,nas->nrs", r_DxS, b["wv"], vo),
    "wo": jnp.einsum("nas,nad,dr->nsr", vo, b["wo"], r_DxS),
    "w1": jnp.einsum("dr,ndf,nfg->nrg", r_DxS, b["w1"], m),
    "b1": jnp.einsum("nf,nfg->ng", b["b1"], m),
    "w2": jnp.einsum("nfg,nfd,dr->ngr", m, b["w2"], r_DxS),
  }
  for name in ("ln1_scale", "ln1_bias", "ln2_scale", "ln2_bias", "b2"):
    blocks[name] = b[name] @ r_DxS
  start_D = task_C @ source["start_embed"]
  return {
    "token_embed": source["token_embed"] @ r_DxS,
    "pos_embed": source["pos_embed"] @ r_DxS,
    "start_embed": (start_D @ r_DxS)[None],
    "blocks": blocks,
    "final_ln_scale": source["final_ln_scale"] @ r_DxS,
    "final_ln_bias": source["final_ln_bias"] @ r_DxS,
    "unembed": r_DxS.T @ source["unembed"],
    "unembed_bias": source["unembed_bias"],
  }


def select_subnetwork(
  source: dict, src: ModelConfig, small: ModelConfig, task_C: jax.Array
) -> dict:
  """The fixed weight-selection specialist for a task, by indexing (no maps).

  This is what ``project`` computes with an untrained projector, and the
  weight-selection baseline when applied to a trained source.
  """
  idx = selection_indices(src, small)
  r, qk, f = idx["residual"], idx["attn_qk"], idx["mlp"]
  b = source["blocks"]
  blocks = {
    "wq": b["wq"][:, r][:, :, qk],
    "wk": b["wk"][:, r][:, :, qk],
    "wv": b["wv"][:, r][:, :, qk],
    "wo": b["wo"][:, qk][:, :, r],
    "w1": b["w1"][:, r][:, :, f],
    "b1": b["b1"][:, f],
    "w2": b["w2"][:, f][:, :, r],
  }
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
