"""Projector: selection init, tree shapes, task dependence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from projectable.core import model, projector
from projectable.core.model import ModelConfig

SRC = ModelConfig(vocab_size=17, seq_len=64, num_classes=10, d=32, heads=4, mlp_dim=64, depth=2)
SMALL = ModelConfig(vocab_size=17, seq_len=64, num_classes=0, d=16, heads=2, mlp_dim=32, depth=2)


def _source_params():
  params = model.init_params(SRC, jax.random.key(0))
  # Non-trivial LayerNorm and bias values so that their projection is exercised.
  key = jax.random.key(1)
  for name in ("ln1_scale", "ln1_bias", "b1", "b2"):
    key, sub = jax.random.split(key)
    params["blocks"][name] = jax.random.normal(sub, params["blocks"][name].shape)
  return params


@pytest.mark.parametrize("form", projector.FORMS)
def test_init_projection_equals_selected_subnetwork(form):
  source = _source_params()
  proj = projector.init_projector(SRC, SMALL, projector.ProjectorConfig(4, form), jax.random.key(2))
  task = jax.nn.one_hot(3, 10)
  projected = jax.jit(projector.project)(source, proj, task)
  selected = projector.select_subnetwork(source, SRC, SMALL, task)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 17, (5, 64)), jnp.int32)
  logits_projected = model.apply(SMALL, projected, tokens)
  logits_selected = model.apply(SMALL, selected, tokens)
  np.testing.assert_allclose(logits_projected, logits_selected, atol=1e-5)
  # The sub-network is a real selection: its first residual coordinates are the source's.
  np.testing.assert_array_equal(selected["token_embed"], source["token_embed"][:, :16])


@pytest.mark.parametrize("rank,form", [(0, "factored"), (3, "factored"), (3, "full")])
def test_project_gives_exactly_the_small_models_tree(rank, form):
  source = _source_params()
  proj = projector.init_projector(
    SRC, SMALL, projector.ProjectorConfig(rank, form), jax.random.key(2)
  )
  projected = projector.project(source, proj, jax.nn.one_hot(0, 10))
  expected = jax.eval_shape(lambda: model.init_params(SMALL, jax.random.key(0)))
  assert jax.tree.structure(projected) == jax.tree.structure(expected)
  jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), projected, expected)


def _perturbed(proj):
  """A projector whose task-dependent parts are non-zero, as after training."""
  leaves, tree = jax.tree.flatten(proj)
  keys = jax.random.split(jax.random.key(5), len(leaves))
  return jax.tree.unflatten(
    tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=False)]
  )


@pytest.mark.parametrize("rank,form", [(0, "factored"), (2, "factored"), (2, "full")])
def test_task_dependence_only_with_rank(rank, form):
  source = _source_params()
  proj = _perturbed(
    projector.init_projector(SRC, SMALL, projector.ProjectorConfig(rank, form), jax.random.key(2))
  )
  tasks = jax.nn.one_hot(jnp.arange(2), 10)
  # Compare the maps and the shared body (start embeddings always differ by task).
  a, b = (projector.project(source, proj, t)["blocks"]["wq"] for t in tasks)
  if rank == 0:
    np.testing.assert_array_equal(a, b)
  else:
    assert float(jnp.abs(a - b).max()) > 1e-4


def test_factored_projector_is_far_smaller_than_full_bases():
  sizes = {
    form: model.num_params(
      projector.init_projector(SRC, SMALL, projector.ProjectorConfig(8, form), jax.random.key(0))
    )
    for form in projector.FORMS
  }
  assert sizes["factored"] * 4 < sizes["full"]


def _reference_project(source, proj, task_C):
  """A_in(t)^T W A_out(t) with every A(t) built in full (docs/method.md's formulas)."""
  z = projector.task_code(proj, task_C)
  a = {name: projector.map_for_task(entry, z) for name, entry in proj["maps"].items()}
  r, qk, vo, m, b = a["residual"], a["attn_qk"], a["attn_vo"], a["mlp"], source["blocks"]
  sandwich = lambda left, w, right: jnp.einsum("...ia,...ij,...jb->...ab", left, w, right)
  blocks = {
    "wq": sandwich(r, b["wq"], qk),
    "wk": sandwich(r, b["wk"], qk),
    "wv": sandwich(r, b["wv"], vo),
    "wo": sandwich(vo, b["wo"], r),
    "w1": sandwich(r, b["w1"], m),
    "w2": sandwich(m, b["w2"], r),
    "b1": jnp.einsum("nf,nfg->ng", b["b1"], m),
  }
  for name in ("ln1_scale", "ln1_bias", "ln2_scale", "ln2_bias", "b2"):
    blocks[name] = b[name] @ r
  return {
    "token_embed": source["token_embed"] @ r,
    "pos_embed": source["pos_embed"] @ r,
    "start_embed": (task_C @ source["start_embed"] @ r)[None],
    "blocks": blocks,
    "final_ln_scale": source["final_ln_scale"] @ r,
    "final_ln_bias": source["final_ln_bias"] @ r,
    "unembed": r.T @ source["unembed"],
    "unembed_bias": source["unembed_bias"],
  }


@pytest.mark.parametrize("rank,form", [(0, "factored"), (3, "factored"), (3, "full")])
def test_project_tasks_equals_each_task_projected_in_full(rank, form):
  source = _source_params()
  proj = _perturbed(
    projector.init_projector(SRC, SMALL, projector.ProjectorConfig(rank, form), jax.random.key(2))
  )
  tasks_MxC = jnp.stack([jax.nn.one_hot(1, 10), jnp.full(10, 0.1), jax.nn.one_hot(7, 10)])
  together = jax.jit(projector.project_tasks)(source, proj, tasks_MxC)
  # Factored maps: one core, then each task emitted from it on its own.
  core = None
  if form == "factored":
    core = projector.projection_core(source, proj)
  else:
    with pytest.raises(ValueError, match="no task-independent core"):
      projector.projection_core(source, proj)
  for m, task_C in enumerate(tasks_MxC):
    expected = _reference_project(source, proj, task_C)
    emitted = [projector.project(source, proj, task_C), jax.tree.map(lambda t, m=m: t[m], together)]
    if core is not None:
      emitted.append(
        jax.tree.map(lambda t: t[0], projector.project_from_core(core, proj, task_C[None]))
      )
    for small in emitted:
      jax.tree.map(lambda t, e: np.testing.assert_allclose(t, e, atol=2e-5), small, expected)


def test_vmapped_project_shares_the_core_across_tasks():
  """Evaluation vmaps ``project`` over tasks: it must cost what ``project_tasks`` costs."""
  source = _source_params()
  proj = projector.init_projector(SRC, SMALL, projector.ProjectorConfig(3), jax.random.key(2))
  tasks_MxC = jnp.eye(10)

  def flops(fn):
    return jax.jit(fn).lower(source, proj, tasks_MxC).compile().cost_analysis()["flops"]

  vmapped = flops(jax.vmap(projector.project, in_axes=(None, None, 0)))
  assert vmapped <= 1.1 * flops(projector.project_tasks)


def _about_one(source, proj, task):
  shifted = projector.shift_scales(source, -1.0)
  return projector.shift_scales(projector.project(shifted, proj, task), 1.0)


def test_scales_about_one_are_the_selection_and_ignore_the_maps_column_sums():
  source, task = _source_params(), jax.nn.one_hot(3, 10)
  proj = projector.init_projector(SRC, SMALL, projector.ProjectorConfig(4), jax.random.key(2))
  # While the maps select coordinates, both projections are the selected sub-network.
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
    projector.project(source, proj, task),
    _about_one(source, proj, task),
  )
  # Every unselected row of the residual map one small step up, as Adam moves them together.
  fresh = model.init_params(SRC, jax.random.key(0))  # LayerNorm scales at 1.
  base = proj["maps"]["residual"]["base"]
  proj["maps"]["residual"]["base"] = base.at[SMALL.d :].add(0.01)
  plain = projector.project(fresh, proj, task)
  about_one = _about_one(fresh, proj, task)
  extra = 0.01 * (SRC.d - SMALL.d)
  np.testing.assert_allclose(plain["blocks"]["ln2_scale"], 1 + extra, rtol=1e-5)
  np.testing.assert_allclose(plain["final_ln_scale"], 1 + extra, rtol=1e-5)
  np.testing.assert_allclose(about_one["blocks"]["ln2_scale"], 1.0, rtol=1e-6)
  np.testing.assert_allclose(about_one["final_ln_scale"], 1.0, rtol=1e-6)
  # Everything else is projected alike.
  np.testing.assert_allclose(about_one["blocks"]["w1"], plain["blocks"]["w1"], rtol=1e-6)


def test_match_rms_is_the_identity_at_init_and_sets_each_layers_size_after_mixing():
  source = _source_params()
  proj = projector.init_projector(SRC, SMALL, projector.ProjectorConfig(3), jax.random.key(2))
  tasks = jnp.eye(10)[:4]
  matched = lambda p: projector.match_selection_rms(
    projector.project_tasks(source, p, tasks), source, SRC, SMALL
  )
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
    matched(proj),
    projector.project_tasks(source, proj, tasks),
  )
  # Mixed maps (every source coordinate in every small one) change the projected sizes ...
  mixed = _perturbed(proj)
  plain, scaled = projector.project_tasks(source, mixed, tasks), matched(mixed)
  selected = projector.select_subnetwork(source, SRC, SMALL, tasks[0])["blocks"]
  rms = lambda w: np.sqrt(np.mean(np.square(np.asarray(w)), axis=(-2, -1)))
  for name in ("wq", "wk", "wv", "wo", "w1", "w2"):
    assert np.all(np.abs(rms(plain["blocks"][name]) / rms(selected[name]) - 1) > 0.1), name
    # ... rescaled, each task's layer has its selection's RMS and the mixed direction.
    want_MxL = np.broadcast_to(rms(selected[name]), (4, SRC.depth))
    np.testing.assert_allclose(rms(scaled["blocks"][name]), want_MxL, rtol=1e-5)
    ratio = np.asarray(scaled["blocks"][name]) / np.asarray(plain["blocks"][name])
    np.testing.assert_allclose(ratio, ratio[..., :1, :1] * np.ones_like(ratio), rtol=1e-4)
  # Everything but the block matrices is left as projected.
  np.testing.assert_array_equal(scaled["token_embed"], plain["token_embed"])
  np.testing.assert_array_equal(scaled["blocks"]["b1"], plain["blocks"]["b1"])
