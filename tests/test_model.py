"""The Transformer on its own: causality through gradients, and its variants computing one
function (attention kernels, scanned or unrolled layers, remat), with and without jit."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from projectable.core import model
from projectable.core.model import ModelConfig

CFG = ModelConfig(vocab_size=17, seq_len=12, num_classes=3, d=16, heads=2, mlp_dim=32, depth=2)


def _inputs(cfg: ModelConfig, batch: int = 2):
  tokens_BxL = jax.random.randint(jax.random.key(1), (batch, cfg.seq_len), 0, cfg.vocab_size)
  task_BxC = jax.nn.one_hot(jnp.arange(batch) % cfg.num_classes, cfg.num_classes)
  return tokens_BxL, task_BxC


class CausalityTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_logits_at_i_have_gradient_only_from_positions_up_to_i(self):
    params = model.init_params(CFG, jax.random.key(0))
    tokens_BxL, task_BxC = _inputs(CFG)

    def position_sum(p, i):
      return model.apply(CFG, p, tokens_BxL, task_BxC)[:, i].sum()

    grad_fn = self.variant(jax.grad(position_sum), static_argnums=1)
    for i in (0, 5, CFG.seq_len - 1):
      # The positional embedding enters at every position: its gradient row j says whether
      # logits at i depend on position j.
      row_norms = jnp.linalg.norm(grad_fn(params, i)["pos_embed"], axis=-1)
      assert bool(jnp.all(row_norms[i + 1 :] == 0)), (i, row_norms)
      assert bool(jnp.all(row_norms[: i + 1] > 0)), (i, row_norms)

  @chex.variants(with_jit=True, without_jit=True)
  def test_logits_at_i_ignore_the_pixel_at_i_and_later(self):
    params = model.init_params(CFG, jax.random.key(0))
    tokens_BxL, task_BxC = _inputs(CFG)
    apply = self.variant(lambda t: model.apply(CFG, params, t, task_BxC))
    before = apply(tokens_BxL)
    changed = tokens_BxL.at[:, 6:].set((tokens_BxL[:, 6:] + 1) % CFG.vocab_size)
    after = apply(changed)
    np.testing.assert_array_equal(before[:, :7], after[:, :7])  # Logit i predicts pixel i.
    assert not np.allclose(before[:, 7:], after[:, 7:])

  @chex.variants(with_jit=True, without_jit=True)
  def test_the_task_descriptor_reaches_every_position(self):
    params = model.init_params(CFG, jax.random.key(0))
    tokens_BxL, task_BxC = _inputs(CFG)
    grad_fn = self.variant(
      jax.grad(lambda task, i: model.apply(CFG, params, tokens_BxL, task)[:, i].sum()),
      static_argnums=1,
    )
    for i in (0, CFG.seq_len - 1):
      assert float(jnp.abs(grad_fn(task_BxC, i)).sum()) > 0


@pytest.mark.parametrize(
  "variant",
  [
    {"attention": "xla"},
    {"unroll": True},
    {"remat": True},
    {"unroll": True, "attention": "xla"},
  ],
)
def test_variants_compute_the_same_logits_and_gradients(variant):
  other = dataclasses.replace(CFG, **variant)
  params = model.init_params(CFG, jax.random.key(0))
  tokens_BxL, task_BxC = _inputs(CFG)

  def loss(cfg, p):
    return model.token_nll(model.apply(cfg, p, tokens_BxL, task_BxC), tokens_BxL).mean()

  np.testing.assert_allclose(
    model.apply(other, params, tokens_BxL, task_BxC),
    model.apply(CFG, params, tokens_BxL, task_BxC),
    rtol=1e-5,
    atol=1e-5,
  )
  grads, ref = jax.grad(loss, 1)(other, params), jax.grad(loss, 1)(CFG, params)
  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref), strict=True):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)


def test_an_unconditional_model_needs_no_task_and_a_conditional_one_does():
  small = dataclasses.replace(CFG, num_classes=0)
  tokens_BxL, task_BxC = _inputs(CFG)
  logits = model.apply(small, model.init_params(small, jax.random.key(0)), tokens_BxL)
  assert logits.shape == (2, CFG.seq_len, CFG.vocab_size)
  with pytest.raises(ValueError, match="task descriptor"):
    model.apply(CFG, model.init_params(CFG, jax.random.key(0)), tokens_BxL)
  assert task_BxC.shape == (2, CFG.num_classes)


def test_dropout_changes_training_logits_only_with_a_key():
  cfg = dataclasses.replace(CFG, dropout=0.5)
  params = model.init_params(cfg, jax.random.key(0))
  tokens_BxL, task_BxC = _inputs(cfg)
  plain = model.apply(cfg, params, tokens_BxL, task_BxC)
  np.testing.assert_array_equal(plain, model.apply(cfg, params, tokens_BxL, task_BxC))
  dropped = model.apply(cfg, params, tokens_BxL, task_BxC, jax.random.key(3))
  assert not np.allclose(plain, dropped)
