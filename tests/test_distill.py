"""Distillation from the source's predictions: loss, teacher, validation, resume."""

import logging
import os
import shutil

import jax
import numpy as np
import pytest

from projectable import data as data_lib
from projectable.core import losses, model
from projectable.data import pipeline
from projectable.experiments.run import train_and_evaluate
from projectable.training import sharding, validation, warmstart
from projectable.training.modes import make_method
from projectable.training.restore import restore_params
from projectable.training.trainer import Trainer


@pytest.fixture(scope="module")
def digits_data():
  from configs import digits

  return data_lib.load(digits.get_config("tiny").data)


@pytest.fixture
def mesh(tiny_config):
  """The tiny config's one-device mesh, as the context of losses computed outside a trainer."""
  mesh = sharding.make_mesh(tiny_config.mesh)
  with jax.set_mesh(mesh):
    yield mesh


def _batch(config, data, step=0):
  batcher = pipeline.TaskBatch(
    data, config.train.batch_tasks, config.train.examples_per_task, config.seed
  )
  return jax.tree.map(jax.numpy.asarray, batcher(step))


def _distilled(config, mode, weight):
  config = config.copy_and_resolve_references()
  config.mode, config.distill.weight = mode, weight
  if mode in ("universal", "specialists") and weight > 0:
    config.distill.teacher_workdir = "unused: the teacher is set in the params"
  return config


@pytest.mark.parametrize("mode", ["universal", "specialists", "projectable"])
def test_loss_mixes_the_plain_nll_and_the_kl_by_alpha(tiny_config, digits_data, mesh, mode):
  key = jax.random.key(3)
  batch = _batch(tiny_config, digits_data)
  plain = make_method(_distilled(tiny_config, mode, 0.0), digits_data)
  params = plain.init(jax.random.key(0))
  assert "teacher" not in params
  plain_loss, plain_metrics = plain.loss(params, batch, key)
  assert "distill_kl" not in plain_metrics

  distilled = make_method(_distilled(tiny_config, mode, 0.3), digits_data)
  params_d = distilled.init(jax.random.key(0))
  student = {k: v for k, v in params_d.items() if k != "teacher"}
  jax.tree.map(np.testing.assert_array_equal, params, student)
  loss, metrics = distilled.loss(params_d, batch, key)
  # Same weights, same dropout: the NLL term is bitwise the plain mode's.
  assert metrics["nll"] == plain_metrics["nll"]
  assert metrics["distill_kl"] > 1e-3  # A fresh teacher disagrees with the student.
  expected = 0.7 * metrics["nll"] + 0.3 * metrics["distill_kl"]
  if mode == "projectable":
    expected += tiny_config.lambda_source * metrics["source_nll"]
    assert metrics["source_nll"] == plain_metrics["source_nll"]
  else:
    assert plain_loss == plain_metrics["nll"]
  np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_kl_is_zero_for_a_student_equal_to_its_teacher(tiny_config, digits_data, mesh):
  """A universal student of the source's shape, holding the teacher's weights, without dropout."""
  tiny_config.small.update(tiny_config.model.to_dict())
  tiny_config.small.dropout = 0.0
  method = make_method(_distilled(tiny_config, "universal", 1.0), digits_data)
  params = method.init(jax.random.key(0))
  batch = _batch(tiny_config, digits_data)
  same = {"small": params["small"], "teacher": params["small"]}
  loss, metrics = method.loss(same, batch, jax.random.key(1))
  assert metrics["distill_kl"] == 0.0 and loss == 0.0
  _, metrics = method.loss(params, batch, jax.random.key(1))
  assert metrics["distill_kl"] > 1e-3


def test_token_kl_is_the_kl_of_the_softmaxes():
  rng = np.random.default_rng(0)
  teacher, student = rng.normal(size=(2, 3, 5, 17)).astype(np.float32)
  p = np.exp(teacher) / np.exp(teacher).sum(-1, keepdims=True)
  q = np.exp(student) / np.exp(student).sum(-1, keepdims=True)
  expected = (p * np.log(p / q)).sum(-1)
  np.testing.assert_allclose(losses.token_kl(teacher, student), expected, rtol=1e-4, atol=1e-6)
  assert np.all(expected > 0)


def test_projectable_reuses_the_source_forward(tiny_config, digits_data, mesh):
  """Without dropout, KL on the source's own training logits (source_examples_per_task=-1)
  equals KL on a separate stop-gradient forward (all n images for the source): same loss,
  same gradients, so no gradient flows into the source through the teacher's side."""
  tiny_config.model.dropout = 0.0
  reuse = _distilled(tiny_config, "projectable", 0.5)
  separate = reuse.copy_and_resolve_references()
  separate.source_examples_per_task = tiny_config.train.examples_per_task
  results = []
  for config in (reuse, separate):
    method = make_method(config, digits_data)
    params = jax.jit(method.init)(jax.random.key(0))
    grad_fn = jax.jit(jax.value_and_grad(method.loss, has_aux=True))  # One program, not ~450.
    results.append(grad_fn(params, _batch(config, digits_data), jax.random.key(1)))
  assert make_method(reuse, digits_data).reuses_source_forward
  assert not make_method(separate, digits_data).reuses_source_forward
  ((loss_a, metrics_a), grads_a), ((loss_b, metrics_b), grads_b) = results
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
  np.testing.assert_allclose(metrics_a["distill_kl"], metrics_b["distill_kl"], rtol=1e-6)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), grads_a, grads_b
  )


@pytest.mark.parametrize("mode", ["universal", "specialists"])
def test_teacher_stays_fixed_while_the_student_trains(tiny_config, digits_data, mesh, mode):
  config = _distilled(tiny_config, mode, 0.5)
  method = make_method(config, digits_data)
  trainer = Trainer(method, mesh)
  state = trainer.init_state(jax.random.key(0))
  before = jax.device_get(state["params"])
  for step in range(2):
    state, metrics = trainer.train_step(state, _batch(config, digits_data, step))
  after = jax.device_get(state["params"])
  assert np.isfinite(float(metrics["distill_kl"]))
  jax.tree.map(np.testing.assert_array_equal, before["teacher"], after["teacher"])
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), before["small"], after["small"])
  assert all(jax.tree.leaves(moved)), moved
  # The teacher is not part of the small model's size.
  assert method.num_params(after) == make_method(
    _distilled(config, mode, 0.0), digits_data
  ).num_params({"small": after["small"]})


def test_distilled_universal_run_resumes_bitwise_without_its_teacher_dir(
  tiny_config, source_workdir, tmp_path
):
  config = _distilled(tiny_config, "universal", 0.5)
  config.distill.teacher_workdir = source_workdir
  config.train.eval_every = 100  # Evaluate at the end only.
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  metrics = train_and_evaluate(config, straight)
  _, params, data = restore_params(config, straight, step=6)
  teacher = warmstart.load_teacher(config, data)
  jax.tree.map(np.testing.assert_array_equal, params["teacher"], teacher)
  assert metrics["num_params"]["small"] == model.num_params(params["small"])
  # Simulate a crash after the step-3 checkpoint; the teacher's workdir is gone meanwhile.
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "6"))
  shutil.rmtree(os.path.join(resumed, "best"))
  os.rename(source_workdir, source_workdir + "-away")
  try:
    again = train_and_evaluate(config, resumed)
  finally:
    os.rename(source_workdir + "-away", source_workdir)
  _, params_resumed, _ = restore_params(config, resumed, step=6)
  jax.tree.map(np.testing.assert_array_equal, params, params_resumed)
  assert again["bits_per_dim"] == metrics["bits_per_dim"]


BAD_DISTILL = [
  ("universal", 1.5, "/teacher", "config.distill.weight"),
  ("specialists", -0.1, "/teacher", "config.distill.weight"),
  ("universal", 0.5, "", "config.distill.teacher_workdir"),
  ("specialists", 0.5, "", "config.distill.teacher_workdir"),
  ("universal", 0.0, "/teacher", "config.distill.teacher_workdir"),
  ("projectable", 0.5, "/teacher", "config.distill.teacher_workdir"),
  ("source", 0.5, "", "config.distill.weight"),
]


@pytest.mark.parametrize("mode,weight,teacher,message", BAD_DISTILL)
def test_bad_distill_config_raises_naming_the_field(tiny_config, mode, weight, teacher, message):
  tiny_config.mode, tiny_config.distill.weight = mode, weight
  tiny_config.distill.teacher_workdir = teacher
  with pytest.raises(ValueError, match=message.replace(".", r"\.")):
    validation.validate(tiny_config)


@pytest.mark.parametrize(
  "mode,weight,teacher",
  [
    ("universal", 0.5, "/t"),
    ("specialists", 1.0, "/t"),
    ("projectable", 0.5, ""),
    ("source", 0.0, ""),
  ],
)
def test_good_distill_configs_validate_and_the_same_with_a_bad_weight_does_not(
  tiny_config, mode, weight, teacher
):
  tiny_config.mode, tiny_config.distill.weight = mode, weight
  tiny_config.distill.teacher_workdir = teacher
  validation.validate(tiny_config)
  tiny_config.distill.weight = 1.5
  with pytest.raises(ValueError, match=r"config\.distill\.weight=1\.5"):
    validation.validate(tiny_config)


def test_missing_teacher_workdir_names_the_field(tiny_config, digits_data, tmp_path):
  tiny_config.mode, tiny_config.distill.weight = "universal", 0.5
  tiny_config.distill.teacher_workdir = str(tmp_path / "nothing")
  with pytest.raises(FileNotFoundError, match=r"config\.distill\.teacher_workdir=.*mode=source"):
    warmstart.load_teacher(tiny_config, digits_data)


@pytest.mark.parametrize(
  "lambda_source,frozen,warns", [(0.0, False, True), (1.0, False, False), (0.0, True, False)]
)
def test_distilling_from_an_unanchored_source_warns(
  tiny_config, caplog, lambda_source, frozen, warns
):
  tiny_config.mode, tiny_config.distill.weight = "projectable", 0.5
  tiny_config.lambda_source, tiny_config.train.freeze_source = lambda_source, frozen
  with caplog.at_level(logging.WARNING):
    validation.validate(tiny_config)
  assert ("own predictions drift" in caplog.text) == warns
