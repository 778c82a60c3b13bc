"""The training loop of every mode: ``train(config, workdir)``.

Resumes from the latest checkpoint in ``workdir`` (or from ``config.restore_step``);
evaluates validation and test bits/dim every ``train.eval_every`` steps, keeps the
best-on-validation weights, and at the end writes ``eval/metrics.json`` and returns
the best weights (``experiments/run.py`` turns them into pictures, specialists and
samples). A non-finite loss or gradient stops the run or, with
``train.nonfinite='skip'``, skips the step.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import ml_collections
from absl import logging
from jax.experimental import multihost_utils

from projectable import data as data_lib
from projectable.data import pipeline
from projectable.training import (
  checkpoints,
  console,
  preemption,
  profiling,
  sharding,
  step_log,
  summaries,
  validation,
  warmstart,
  workdir_guard,
  workdir_lock,
)
from projectable.training.modes import Method, make_method
from projectable.training.trainer import Trainer, trainer_for


def _scalars(prefix: str, evaluation: dict) -> dict[str, float]:
  out = {}
  for name, bpd in evaluation.items():
    out[f"{prefix}/{name}_bits_per_dim"] = bpd["mean"]
    for task, value in bpd["per_task"].items():
      out[f"{prefix}/{name}_bits_per_dim/{task}"] = value
  return out


def write_config(config: ml_collections.ConfigDict, data_fingerprint: dict, workdir: str) -> None:
  """Writes ``workdir/config.json`` (the config and the data's fingerprint) atomically: a
  killed write leaves the old file."""
  if jax.process_index() == 0:
    path = os.path.join(workdir, "config.json")
    record = {**json.loads(config.to_json_best_effort()), workdir_guard.DATA_KEY: data_fingerprint}
    with open(path + ".tmp", "w") as f:
      json.dump(record, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)


def _apply_restore_step(
  config: ml_collections.ConfigDict, ckpts: checkpoints.Checkpoints, saved: dict | None
) -> None:
  """Rewinds to ``config.restore_step`` unless config.json shows an earlier run applied it."""
  step = config.restore_step
  if step < 0:
    return
  if saved is not None and saved.get("restore_step") == step:
    logging.info("config.restore_step=%d was applied by an earlier run; resuming the latest", step)
    return
  ckpts.rewind(step)


class TrainedRun(NamedTuple):
  """A finished run: its best-on-validation weights (on every host) and eval/metrics.json."""

  config: ml_collections.ConfigDict
  data: data_lib.TaskData
  method: Method
  params: dict
  metrics: dict


def train(
  config: ml_collections.ConfigDict,
  workdir: str,
  finish: Callable[[TrainedRun], None] | None = None,
) -> TrainedRun:
  """Trains ``config.mode`` in ``workdir`` (resuming if possible); writes eval/metrics.json.

  The config and data are checked before the workdir is touched; from then on the run holds
  the workdir's lock, until ``finish`` (the run's remaining artifacts) has returned.
  """
  validation.validate(config)
  validation.check_backend(config)
  logging.info("loading %s and building the %s model ...", config.data.name, config.mode)
  data = data_lib.load(config.data)
  pipeline.check_batch_tasks(config.train.batch_tasks, data)
  with workdir_lock.WorkdirLock(workdir, "training", enabled=jax.process_index() == 0):
    metrics, method, params = _train_in(config, data, workdir)
    run = TrainedRun(config, data, method, params, metrics)
    if finish is not None:
      finish(run)
  return run


def _train_in(config, data, workdir: str) -> tuple[dict, Method, dict]:
  """Trains in ``workdir``, which this run holds: (metrics, the mode, best weights)."""
  workdir_guard.check_compatible(config, workdir)
  workdir_guard.check_same_data(data.fingerprint(), workdir)
  saved = workdir_guard.saved_config(workdir)
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh(config.mesh)
  with jax.set_mesh(mesh):
    method = make_method(config, data)
    trainer = trainer_for(method, mesh)
    ckpts = checkpoints.Checkpoints(workdir, config.train.keep_checkpoints, clean=True)
    try:
      _apply_restore_step(config, ckpts, saved)
      with preemption.StopRequest() as stop:
        state = _train(config, data, trainer, ckpts, workdir, stop)
      if int(state["step"]) < config.train.num_steps:  # SIGTERM or JAX's preemption notice.
        saved = ckpts.latest_step()
        kept = "no step had trained yet" if saved is None else f"step {saved} is saved"
        raise preemption.Preempted(
          f"stopped by SIGTERM at step {int(state['step'])}; {kept} in {workdir}. Rerun the "
          "same command to resume."
        )
      metrics, params = _summarise(config, data, trainer, ckpts, state, workdir)
    finally:
      ckpts.close()
  return metrics, method, params


def _start(config, data, trainer: Trainer, ckpts: checkpoints.Checkpoints, workdir: str):
  """(data iterator, train state): restored from the latest checkpoint, or initialised."""
  train = config.train
  data_iter = pipeline.train_iterator(data, train.batch_tasks, train.examples_per_task, config.seed)
  latest = ckpts.latest_step()
  if latest is None:
    state = warmstart.initial_state(config, data, trainer)
  else:
    logging.info("Resuming from checkpoint at step %d in %s", latest, workdir)
    state = _restore_latest(config, trainer, ckpts, data_iter)
  start = int(state["step"])
  if data_iter.get_state() != {"next_index": start}:  # A checkpoint without data state.
    data_iter.set_state({"next_index": start})
  ckpts.set_aside_best_after(start)  # Best weights describe only the trajectory trained now.
  return data_iter, state


def _restore_latest(config, trainer: Trainer, ckpts: checkpoints.Checkpoints, data_iter):
  """The latest train state; if it is damaged and ``config.restore_step`` (applied by an
  earlier run) names an older step, that step, as the damage's advice says."""
  try:
    return ckpts.restore_state(trainer.abstract_state, data_iter=data_iter)
  except checkpoints.DamagedCheckpointError as e:
    step = config.restore_step
    if not 0 <= step < ckpts.latest_step() or step not in ckpts.state.all_steps():
      raise
    logging.warning("%s\nconfig.restore_step=%d: rewinding to it again", e, step)
    ckpts.rewind(step)
    return ckpts.restore_state(trainer.abstract_state, data_iter=data_iter)


def _train(
  config,
  data,
  trainer: Trainer,
  ckpts: checkpoints.Checkpoints,
  workdir: str,
  stop: preemption.StopRequest,
):
  train = config.train
  data_iter, state = _start(config, data, trainer, ckpts, workdir)
  start = int(state["step"])
  best = ckpts.best_metrics()
  best_val = best["val_bits_per_dim"]["mean"] if best else math.inf
  best_step = best["step"] if best else 0
  writer = summaries.open_writer(workdir)
  if jax.process_index() == 0:
    summaries.write_run_summary(writer, start, config, trainer.method, state["params"])
  _log_start(config, trainer, state, start, workdir)
  samples = summaries.EvalSamples(trainer.method, data, config.seed, config.samples.temperature)
  trace = profiling.StepTrace(
    workdir, start, train.profile_steps if jax.process_index() == 0 else 0
  )
  steps = step_log.StepLog(train, writer, trainer.schedule)
  config_written, compiled_eval = False, False
  started = time.monotonic()
  with trace:  # Stops a trace that the run outlives or an error cuts short.
    for step in range(start + 1, train.num_steps + 1):
      batch = pipeline.place(next(data_iter), trainer.batch_shardings)
      trace.before(step, state)
      if step == start + 1:
        args = (state, batch, trainer.step_inputs)
        jitted = trainer.jitted_train_step
        train_step = preemption.compile_unless_stopped(jitted, args, trainer.mesh, stop)
        if train_step is None:
          logging.warning("SIGTERM while compiling: stopping before step %d", step)
          break
      state, metrics = train_step(state, batch, trainer.step_inputs)
      if step == start + 1:  # Compiled and dispatched: the ETA's pace starts after this step.
        jax.block_until_ready(metrics)
        steps.throughput.mark(step)
        took = console.format_duration(time.monotonic() - started)
        logging.info("compiled the train step and ran step %d in %s", step, took)
      trace.after(step, metrics)
      steps.flush()  # The previous log step, read while this one runs.
      steps.add(step, metrics)
      # Read once: SIGTERM may come at any moment, e.g. after the save.
      stopping = stop.requested or ckpts.reached_preemption(step)
      last = step == train.num_steps or stopping
      evaluating = step % train.eval_every == 0 or step == train.num_steps
      saving = step % train.checkpoint_every == 0 or last
      if step % train.log_every == 0 or saving:
        steps.log(step, metrics, now=saving or evaluating)
      if evaluating:
        if not compiled_eval:
          compiled_eval = True
          logging.info("evaluating step %d (compiling the evaluation and sampling) ...", step)
        best_val, best_step = _evaluate(
          trainer, data, ckpts, writer, samples, state, step, (best_val, best_step)
        )
      if saving:
        if not config_written:  # config.json exists only where a trained step is saved.
          write_config(config, data.fingerprint(), workdir)
          config_written = True
        ckpts.save_state(step, state, data_iter)
      if stopping:
        logging.warning("SIGTERM: saved step %d and stopping", step)
        break
  steps.flush()
  ckpts.wait()
  writer.close()
  return state


def _log_start(config, trainer: Trainer, state: dict, start: int, workdir: str) -> None:
  """The run's sizes and workdir, and the line that precedes compiling the train step."""
  counts = trainer.method.num_params(state["params"])
  sizes = ", ".join(f"{k} {v:,}" for k, v in counts.items() if v is not None)
  train = config.train
  logging.info(
    "%s: %d steps of %d tasks x %d images; parameters: %s",
    config.mode,
    train.num_steps,
    train.batch_tasks,
    train.examples_per_task,
    sizes,
  )
  # One path per line: a long workdir then still fits the console's 200 characters.
  logging.info("workdir %s", workdir)
  logging.info("TensorBoard: tensorboard --logdir %s", workdir)
  if start < train.num_steps:
    logging.info("compiling the train step (step %d/%d next) ...", start + 1, train.num_steps)


def _evaluate(
  trainer: Trainer,
  data,
  ckpts,
  writer,
  samples: summaries.EvalSamples,
  state: dict,
  step: int,
  best: tuple[float, int],
) -> tuple[float, int]:
  """Scores val and test, draws the sample grid, saves the weights as best if val improved;
  (best val so far, its step)."""
  val = trainer.evaluate(state["params"], data, data.val)
  test = trainer.evaluate(state["params"], data, data.test)
  writer.write_scalars(step, {**_scalars("val", val), **_scalars("test", test)})
  writer.write_images(step, {"samples": samples.image(state["params"])})
  if val["main"]["mean"] < best[0]:
    ckpts.save_best(
      step,
      state["params"],
      {
        "step": step,
        "val_bits_per_dim": val["main"],
        "test_bits_per_dim": test["main"],
        "extra_test_bits_per_dim": {k: v for k, v in test.items() if k != "main"},
      },
    )
    best = (val["main"]["mean"], step)
  extra = {k: v["mean"] for k, v in test.items() if k != "main"}
  logging.info(
    "%s",
    console.eval_line(
      step,
      trainer.step.optimizer.num_steps,
      val["main"]["mean"],
      test["main"]["mean"],
      *best,
      data.num_tasks,
      extra,
    ),
  )
  return best


def _summarise(config, data, trainer: Trainer, ckpts, state, workdir: str) -> tuple[dict, dict]:
  """(eval/metrics.json, best weights gathered on every host); writes the json."""
  logging.info("restoring the best weights (step %s) ...", ckpts.best.latest_step())
  params = ckpts.restore_best_params(trainer.abstract_state["params"])  # Raises if none.
  best = ckpts.best_metrics()
  step_flops = trainer.method.step_flops()
  final_step = int(state["step"])
  if best["step"] == final_step:  # The best weights are the final ones: already scored.
    final_test = best["test_bits_per_dim"]
  else:
    final_test = trainer.evaluate(state["params"], data, data.test)["main"]
  metrics = {
    "mode": config.mode,
    "dataset": data.name,
    "step": best["step"],
    "bits_per_dim": best["test_bits_per_dim"],
    "val_bits_per_dim": best["val_bits_per_dim"],
    "final_step": {"step": final_step, "bits_per_dim": final_test},
    "num_params": trainer.method.num_params(params),
    # Compute spent by the whole run (every step was needed to pick the best), and per step.
    "train_flops": final_step * step_flops,
    "train_flops_per_step": step_flops,
  }
  for name, bpd in best["extra_test_bits_per_dim"].items():
    metrics[f"{name}_bits_per_dim"] = bpd
  # Every process gathers the weights to its host, so that process 0 alone can write the
  # artifacts without waiting on collectives the other processes never join.
  params = multihost_utils.process_allgather(params, tiled=True)
  if jax.process_index() == 0:
    os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
    path = os.path.join(workdir, "eval", "metrics.json")
    with open(path, "w") as f:
      json.dump(metrics, f, indent=2)
    logging.info(
      "wrote eval/metrics.json: best step %d, test %.4f bits/dim",
      metrics["step"],
      metrics["bits_per_dim"]["mean"],
    )
  return metrics, params
