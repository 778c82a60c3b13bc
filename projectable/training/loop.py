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
from clu import metric_writers, periodic_actions
from jax.experimental import multihost_utils

from projectable import data as data_lib
from projectable.core.metrics import LN2
from projectable.data import pipeline
from projectable.training import (
  checkpoints,
  preemption,
  profiling,
  sharding,
  validation,
  warmstart,
  workdir_guard,
  workdir_lock,
)
from projectable.training.modes import Method, make_method
from projectable.training.trainer import Trainer


def _scalars(prefix: str, evaluation: dict) -> dict[str, float]:
  out = {}
  for name, bpd in evaluation.items():
    out[f"{prefix}/{name}_bits_per_dim"] = bpd["mean"]
    for task, value in bpd["per_task"].items():
      out[f"{prefix}/{name}_bits_per_dim/{task}"] = value
  return out


def _check_finite(step: int, metrics: dict) -> None:
  for name, value in metrics.items():
    if not math.isfinite(value):
      raise FloatingPointError(
        f"non-finite {name}={value} at step {step}; no checkpoint of this state was written. "
        "Lower config.train.learning_rate or raise config.train.grad_clip's strictness, then "
        "rerun to resume from the last good checkpoint (or set config.train.nonfinite='skip')."
      )


class _SkipCounter:
  """Steps skipped under ``train.nonfinite='skip'``, read at log steps (no per-step sync)."""

  def __init__(self, limit: int):
    self.limit = limit
    self.consecutive = 0
    self.pending: list[tuple[int, dict]] = []

  def add(self, step: int, metrics: dict) -> None:
    self.pending.append((step, metrics))

  def check(self) -> int:
    """Skipped steps since the last check; raises once ``limit`` steps in a row were skipped."""
    skipped = 0
    for step, metrics in jax.device_get(self.pending):
      self.consecutive = self.consecutive + 1 if metrics["skipped"] else 0
      skipped += bool(metrics["skipped"])
      if self.consecutive >= self.limit:
        bad = ", ".join(f"{k}={v}" for k, v in metrics.items() if not math.isfinite(v))
        raise FloatingPointError(
          f"{self.consecutive} consecutive steps up to step {step} had a non-finite loss or "
          f"gradient and were skipped (last: {bad}); config.train.max_skipped_steps="
          f"{self.limit}. Weights and optimizer state are those before the skips, as is every "
          "checkpoint. Lower config.train.learning_rate, then rerun to resume."
        )
    self.pending = []
    return skipped


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


class _StepLog:
  """Train scalars of log steps to the metric writer (and the non-finite policy's checks)."""

  def __init__(self, config: ml_collections.ConfigDict, writer, start: int):
    train = config.train
    self.writer = writer
    self.skips = _SkipCounter(train.max_skipped_steps) if train.nonfinite == "skip" else None
    self.t0, self.last_log = time.time(), start

  def add(self, step: int, metrics: dict) -> None:
    if self.skips is not None:
      self.skips.add(step, metrics)

  def write(self, step: int, metrics: dict) -> None:
    scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if self.skips is not None:  # Skipped steps left the state finite; a long run of them stops.
      del scalars["skipped"]  # This step's flag; the count since the last log replaces it.
      scalars["skipped_steps"] = self.skips.check()
    else:
      _check_finite(step, scalars)
    scalars["train/bits_per_dim"] = scalars["nll"] / LN2
    scalars["steps_per_s"] = (step - self.last_log) / max(time.time() - self.t0, 1e-9)
    self.t0, self.last_log = time.time(), step
    self.writer.write_scalars(step, scalars)


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
    trainer = Trainer(method, mesh)
    ckpts = checkpoints.Checkpoints(workdir, config.train.keep_checkpoints, clean=True)
    try:
      _apply_restore_step(config, ckpts, saved)
      with preemption.StopRequest() as stop:
        state = _train(config, data, trainer, ckpts, workdir, stop)
      if int(state["step"]) < config.train.num_steps:  # SIGTERM or JAX's preemption notice.
        raise preemption.Preempted(
          f"stopped by SIGTERM at step {int(state['step'])}; its checkpoint is saved in "
          f"{workdir}. Rerun the same command to resume."
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
  writer = metric_writers.create_default_writer(
    workdir, just_logging=jax.process_index() > 0, asynchronous=False
  )
  report = periodic_actions.ReportProgress(num_train_steps=train.num_steps, writer=writer)
  trace = profiling.StepTrace(
    workdir, start, train.profile_steps if jax.process_index() == 0 else 0
  )
  step_log = _StepLog(config, writer, start)
  config_written = False
  with trace:  # Stops a trace that the run outlives or an error cuts short.
    for step in range(start + 1, train.num_steps + 1):
      batch = pipeline.place(next(data_iter), trainer.batch_shardings)
      trace.before(step, state)
      state, metrics = trainer.train_step(state, batch)
      trace.after(step, metrics)
      report(step, time.time())
      step_log.add(step, metrics)
      # Read once: SIGTERM may come at any moment, e.g. after the save.
      stopping = stop.requested or ckpts.reached_preemption(step)
      last = step == train.num_steps or stopping
      if step % train.log_every == 0 or last or step % train.checkpoint_every == 0:
        step_log.write(step, metrics)
      if step % train.eval_every == 0 or step == train.num_steps:
        best_val = _evaluate(trainer, data, ckpts, writer, state, step, best_val)
      if step % train.checkpoint_every == 0 or last:
        if not config_written:  # config.json exists only where a trained step is saved.
          write_config(config, data.fingerprint(), workdir)
          config_written = True
        ckpts.save_state(step, state, data_iter)
      if stopping:
        logging.warning("SIGTERM: saved step %d and stopping", step)
        break
  ckpts.wait()
  writer.flush()
  return state


def _evaluate(trainer: Trainer, data, ckpts, writer, state: dict, step: int, best_val: float):
  """Scores val and test, saves the weights as best if val improved; the best val so far."""
  val = trainer.evaluate(state["params"], data, data.val)
  test = trainer.evaluate(state["params"], data, data.test)
  writer.write_scalars(step, {**_scalars("val", val), **_scalars("test", test)})
  logging.info(
    "step %d: val %.4f test %.4f bits/dim", step, val["main"]["mean"], test["main"]["mean"]
  )
  if val["main"]["mean"] >= best_val:
    return best_val
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
  return val["main"]["mean"]


def _summarise(config, data, trainer: Trainer, ckpts, state, workdir: str) -> tuple[dict, dict]:
  """(eval/metrics.json, best weights gathered on every host); writes the json."""
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
    with open(os.path.join(workdir, "eval", "metrics.json"), "w") as f:
      json.dump(metrics, f, indent=2)
  return metrics, params
