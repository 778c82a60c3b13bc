"""Train steps of every mode: what changes, golden values, sharding rules (meshes train alike:
test_multidevice)."""

import jax
import numpy as np
import pytest

from projectable import data as data_lib
from projectable.data import pipeline
from projectable.experiments import memory
from projectable.training import sharding
from projectable.training import trainer as trainer_lib
from projectable.training.modes import make_method


def _trainer(config):
  """The mesh, a trainer and the batcher of ``config``."""
  data = data_lib.load(config.data)
  mesh = sharding.make_mesh(config.mesh)
  with jax.set_mesh(mesh):
    trainer = trainer_lib.trainer_for(make_method(config, data), mesh)
  train = config.train
  return (
    mesh,
    trainer,
    pipeline.TaskBatch(data, train.batch_tasks, train.examples_per_task, config.seed),
  )


def test_an_equal_program_reuses_the_trainers_functions_and_a_different_one_does_not(
  tiny_config, load_digits
):
  mesh = sharding.make_mesh(tiny_config.mesh)
  with jax.set_mesh(mesh):
    first = trainer_lib.trainer_for(make_method(tiny_config, load_digits()), mesh)
    # A fresh load of the same data, a fresh method: the same jitted step.
    again = trainer_lib.trainer_for(make_method(tiny_config, data_lib.load(tiny_config.data)), mesh)
    assert again.jitted_train_step is first.jitted_train_step
    # Other step inputs: the same jitted functions, with this run's inputs and settings.
    tiny_config.train.learning_rate *= 2
    tiny_config.seed += 1
    faster = make_method(tiny_config, load_digits())
    view = trainer_lib.trainer_for(faster, mesh)
    assert view.jitted_train_step is first.jitted_train_step and view.method is faster
    assert view.step_inputs["learning_rate"] == 2 * first.step_inputs["learning_rate"]
    assert view.step_inputs["seed"] == first.step_inputs["seed"] + 1
    assert float(view.schedule(10**6)) == 0.0 and view.step.seed == tiny_config.seed
    # A program that differs: another split, a replaced loss, other dropouts.
    other_split = trainer_lib.trainer_for(make_method(tiny_config, load_digits(1)), mesh)
    replaced = make_method(tiny_config, load_digits())
    replaced.loss = lambda params, batch, key: (0.0, {})
    others = [other_split, trainer_lib.trainer_for(replaced, mesh)]
    for dropout in (0.2, 0.3):
      tiny_config.small.dropout = tiny_config.model.dropout = dropout
      others.append(trainer_lib.trainer_for(make_method(tiny_config, load_digits()), mesh))
    steps = {id(t.jitted_train_step) for t in others}
    assert id(first.jitted_train_step) not in steps and len(steps) == len(others)
    # Only the last few programs are kept: the first is built anew.
    rebuilt = trainer_lib.trainer_for(faster, mesh)
    assert rebuilt.jitted_train_step is not first.jitted_train_step


def test_schedule_and_seed_are_inputs_of_one_compiled_step(tiny_config):
  """Runs that differ only in learning rate, warmup, length or seed lower to the same HLO (the
  compilation cache serves them, also across processes), and each step follows its own inputs.
  Built apart, not through trainer_for, which would share one jitted step outright."""
  tiny_config.mode = "universal"
  mesh, _, batcher = _trainer(tiny_config)
  data = data_lib.load(tiny_config.data)
  with jax.set_mesh(mesh):
    first = trainer_lib.Trainer(make_method(tiny_config, data), mesh)
    train = tiny_config.train
    train.learning_rate, train.warmup_steps, train.num_steps = 3e-3, 3, 40
    tiny_config.seed += 1
    second = trainer_lib.Trainer(make_method(tiny_config, data), mesh)
    batch = pipeline.place(batcher(0), first.batch_shardings)
    texts = [t.lower_train_step(t.abstract_state, batch).as_text() for t in (first, second)]
    assert texts[0] == texts[1]
    for trainer in (first, second):
      state = trainer.init_state(jax.random.key(0))
      bias = np.asarray(state["params"]["small"]["unembed_bias"])
      state, _ = trainer.train_step(state, batch)
      # Adam's first update is the step-0 rate times the gradient's sign (no decay on vectors).
      opt = trainer.step.optimizer
      step0_rate = opt.learning_rate / (opt.warmup_steps + 1)
      moved = np.abs(np.asarray(state["params"]["small"]["unembed_bias"]) - bias).max()
      np.testing.assert_allclose(moved, step0_rate, rtol=1e-3)


def _run_steps(config, num_steps):
  mesh, trainer, batcher = _trainer(config)
  with jax.set_mesh(mesh):
    state = trainer.init_state(jax.random.key(config.seed))
    before = jax.device_get(state["params"])
    losses = []
    for step in range(num_steps):
      state, metrics = trainer.train_step(
        state, pipeline.place(batcher(step), trainer.batch_shardings)
      )
      losses.append(float(metrics["loss"]))
    return before, jax.device_get(state["params"]), losses


def _changed(before, after):
  return jax.tree.map(lambda a, b: bool(np.any(a != b)), before, after)


@pytest.mark.parametrize("mode", ["projectable", "universal", "specialists", "source"])
def test_one_step_is_finite_and_moves_every_trained_weight(tiny_config, mode):
  tiny_config.mode = mode
  before, after, losses = _run_steps(tiny_config, 1)
  assert np.isfinite(losses[0])
  changed = _changed(before, after)
  if mode == "projectable":
    # The low-rank factor U gets no gradient while V starts at zero; every other weight moves.
    changed["projector"]["maps"] = jax.tree.map(lambda c: True, changed["projector"]["maps"])
    assert all(changed["projector"]["maps"]["mlp"].values())
  assert all(jax.tree.leaves(changed)), changed


def test_frozen_source_stays_frozen_and_projector_trains(tiny_config):
  tiny_config.train.freeze_source = True
  before, after, _ = _run_steps(tiny_config, 2)
  jax.tree.map(np.testing.assert_array_equal, before["source"], after["source"])
  assert any(jax.tree.leaves(_changed(before["projector"], after["projector"])))


def test_projector_lr_scale_scales_only_the_projectors_updates(tiny_config):
  tiny_config.train.projector_lr_scale = 1.0
  base, after, _ = _run_steps(tiny_config, 1)
  tiny_config.train.projector_lr_scale = 0.25
  base_scaled, scaled, _ = _run_steps(tiny_config, 1)
  delta = lambda a, b: jax.tree.map(lambda x, y: np.asarray(y, np.float64) - x, a, b)
  step, step_scaled = delta(base, after), delta(base_scaled, scaled)
  # Same start and gradients: the source moves alike, each projector weight a quarter as far
  # (up to float32 rounding of the stored weights).
  jax.tree.map(np.testing.assert_array_equal, base, base_scaled)
  jax.tree.map(np.testing.assert_array_equal, step["source"], step_scaled["source"])
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(0.25 * a, b, rtol=1e-4, atol=2e-7),
    step["projector"],
    step_scaled["projector"],
  )
  assert np.abs(step_scaled["projector"]["maps"]["mlp"]["base"]).max() > 0


def test_lambda0_at_the_universal_models_rate_stalls_unless_projections_match_rms(tiny_config):
  """The stall of issue 29 at tiny size with digits' source width: at λ = 0 and lr 2e-2 (the
  universal model's best rate here) the projected MLP weights outgrow a small model's ~24x
  and training plateaus; rescaled to their selection's RMS it trains like universal."""
  tiny_config.model.update(d=96, heads=4, mlp_dim=384)
  tiny_config.lambda_source = 0.0
  tiny_config.train.update(num_steps=60, warmup_steps=10, learning_rate=2e-2)

  def late_loss(match_rms: bool) -> float:
    tiny_config.mode, tiny_config.projector.match_rms = "projectable", match_rms
    return float(np.mean(_run_steps(tiny_config, 60)[2][-20:]))

  # Measured (nats per pixel, steps 40-59): 1.875 unscaled, 1.586 matched, and 1.607 for the
  # universal model at this rate (at 150 steps: 1.854, 1.509 and 1.562; the universal run is
  # left out to keep the suite short). The bound sits halfway between the two projections.
  assert late_loss(match_rms=False) > 1.73 > late_loss(match_rms=True)


def test_scales_about_one_route_every_projection_of_the_mode(tiny_config):
  tiny_config.projector.scales_about_one = True
  data = data_lib.load(tiny_config.data)
  method = make_method(tiny_config, data)
  params = method.init(jax.random.key(0))
  base = params["projector"]["maps"]["residual"]["base"]
  params["projector"]["maps"]["residual"]["base"] = base + 0.01  # Mixes every coordinate.
  task_C = jax.numpy.asarray(data.task_descriptors()[0])
  small = method.specialist(params, 0, task_C)
  np.testing.assert_allclose(small["final_ln_scale"], 1.0, rtol=1e-6)
  np.testing.assert_allclose(small["blocks"]["ln1_scale"], 1.0, rtol=1e-6)
  tiny_config.projector.scales_about_one = False
  plain = make_method(tiny_config, data).specialist(params, 0, task_C)
  assert np.all(np.asarray(plain["final_ln_scale"]) > 1.01)


def test_projectable_loss_is_projected_plus_lambda_source(tiny_config):
  tiny_config.lambda_source = 0.0
  _, _, without = _run_steps(tiny_config, 1)
  tiny_config.lambda_source = 1.0
  _, _, with_source = _run_steps(tiny_config, 1)
  # The source NLL of a fresh model is about log(17) nats per pixel.
  np.testing.assert_allclose(with_source[0] - without[0], np.log(17), rtol=0.05)


@pytest.mark.parametrize(
  ("lambda_source", "freeze", "scored"),
  [(1.0, False, {"main", "source"}), (0.0, False, {"main"}), (1.0, True, {"main"})],
)
def test_projectable_scores_the_source_only_where_it_learns_its_own_nll(
  tiny_config, lambda_source, freeze, scored
):
  tiny_config.lambda_source, tiny_config.train.freeze_source = lambda_source, freeze
  data = data_lib.load(tiny_config.data)
  mesh = sharding.make_mesh(tiny_config.mesh)
  with jax.set_mesh(mesh):
    trainer = trainer_lib.trainer_for(make_method(tiny_config, data), mesh)
    val = trainer.evaluate(trainer.init_state(jax.random.key(0))["params"], data, data.val)
  assert set(val) == scored
  assert all(np.isfinite(v["mean"]) and len(v["per_task"]) == 10 for v in val.values())


def test_golden_first_steps(tiny_config):
  _, _, losses = _run_steps(tiny_config, 2)
  np.testing.assert_allclose(losses, GOLDEN_PROJECTABLE_LOSSES, rtol=1e-5)


# Recorded from this code on CPU (jax 0.10.2), batches from pipeline.TaskBatch (the training
# input path); a change means the math or the data order changed.
GOLDEN_PROJECTABLE_LOSSES = [5.675511837005615, 5.633330821990967]


@pytest.mark.parametrize("mode", ["projectable", "universal"])
def test_unrolled_and_scanned_layers_train_alike(tiny_config, mode):
  """``train.unroll_layers`` changes how the layer loop compiles, not what a step computes."""
  tiny_config.mode, tiny_config.train.unroll_layers = mode, True
  _, unrolled, losses_unrolled = _run_steps(tiny_config, 3)
  tiny_config.train.unroll_layers = False
  _, scanned, losses_scanned = _run_steps(tiny_config, 3)
  np.testing.assert_allclose(losses_unrolled, losses_scanned, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), unrolled, scanned)


def test_bfloat16_products_train_near_float32_with_float32_weights(tiny_config):
  """``train.compute_dtype='bfloat16'`` changes the products' rounding, not the math, and
  keeps every weight in float32."""
  _, _, losses_f32 = _run_steps(tiny_config, 3)
  tiny_config.train.compute_dtype = "bfloat16"
  _, bf16, losses_bf16 = _run_steps(tiny_config, 3)
  assert {x.dtype for x in jax.tree.leaves(bf16)} == {np.dtype(np.float32)}
  np.testing.assert_allclose(losses_bf16, losses_f32, rtol=1e-2)
  assert losses_bf16 != losses_f32  # The products really ran in bfloat16.


def test_attention_implementations_train_alike(tiny_config):
  """``train.attention='xla'`` (``jax.nn.dot_product_attention``, the call cuDNN's kernel
  takes on GPUs) computes the einsum attention's steps, in source and small models."""
  _, einsum, losses_einsum = _run_steps(tiny_config, 3)
  tiny_config.train.attention = "xla"
  _, xla, losses_xla = _run_steps(tiny_config, 3)
  np.testing.assert_allclose(losses_xla, losses_einsum, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), xla, einsum)
  assert losses_xla[2] < losses_xla[0]  # Both train, not only agree.


def _step_temp_bytes(config) -> int:
  """Temporary bytes of the compiled train step (XLA's buffer assignment)."""
  mesh, trainer, batcher = _trainer(config)
  with jax.set_mesh(mesh):
    batch = pipeline.place(batcher(0), trainer.batch_shardings)
    compiled = trainer.lower_train_step(trainer.abstract_state, batch).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_remat_trains_alike_holding_less_memory(tiny_config):
  """``train.remat`` recomputes each block in the backward pass: the same steps, fewer bytes
  held by the step, and plan.py counts fewer activation bytes."""
  tiny_config.mode, tiny_config.train.unroll_layers = "source", False
  data = data_lib.load(tiny_config.data)
  runs, temp, planned = {}, {}, {}
  for remat in (False, True):
    tiny_config.train.remat = remat
    runs[remat] = _run_steps(tiny_config, 2)[1:]
    temp[remat] = _step_temp_bytes(tiny_config)
    planned[remat] = memory.memory_plan(tiny_config, data, sharding.make_mesh("data:1,model:1"))[
      "activation_bytes"
    ]
  np.testing.assert_allclose(runs[True][1], runs[False][1], rtol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), runs[True][0], runs[False][0]
  )
  assert temp[True] < temp[False], temp
  assert planned[True] < planned[False], planned


def test_source_weights_are_sharded_by_the_rules(tiny_config):
  tiny_config.mesh = "data:2,model:2"
  data = data_lib.load(tiny_config.data)
  mesh = sharding.make_mesh(tiny_config.mesh)
  with jax.set_mesh(mesh):
    trainer = trainer_lib.trainer_for(make_method(tiny_config, data), mesh)
    state = trainer.init_state(jax.random.key(0))
  w1 = state["params"]["source"]["blocks"]["w1"]
  assert w1.sharding.spec == jax.sharding.PartitionSpec(None, None, "model")
  base = state["params"]["projector"]["maps"]["mlp"]["base"]
  assert base.sharding.spec == jax.sharding.PartitionSpec(None, "model", None)
