"""Projector: selection init, tree shapes, task dependence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from projectable import model, projector
from projectable.model import ModelConfig

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
