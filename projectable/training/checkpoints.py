"""Orbax checkpoints of the train state and of the best-on-validation weights.

``DIR/checkpoints/<step>/``: the full train state (item ``state``: step, params,
optimizer state), the grain iterator (``data``) and a checksum of the state
(``fingerprint``), the last ``keep`` steps, each written atomically: a write cut
short (SIGKILL) leaves a temporary directory that is never read, so the previous
step stays the latest. A step that fails to restore, or whose state no longer
matches its checksum, raises ``DamagedCheckpointError`` naming it; ``rewind``
moves newer steps aside to ``DIR/checkpoints_set_aside/`` (never deleted).
``DIR/best/<step>/{params,metrics}``: the weights of the step with the lowest
validation bits/dim and its metrics (JSON), kept once. Restores always target
abstract arrays carrying the current mesh's shardings, so a checkpoint written
under one mesh loads under another.
"""

from __future__ import annotations

import glob
import logging as pylogging
import os
from typing import Any

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from projectable.core import digests
from projectable.core.digests import DamagedCheckpointError
from projectable.training import workdir_guard

SET_ASIDE = "checkpoints_set_aside"
BEST_SET_ASIDE = "best_set_aside"
_UNSIGNED = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (e.g. a full disk); the steps already saved are intact."""


class _RepeatedWriteFailures(pylogging.Filter):
  """Drops asyncio's reports of a failed save's other writes: each repeats the error raised."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    message = record.getMessage()
    return not ("exception was never retrieved" in message or "Event loop is closed" in message)


def _first_line(e: Exception) -> str:
  return str(e).strip().partition("\n")[0]


def _check_writable(directory: str) -> None:
  """Raises at once, naming ``directory``, if a checkpoint could not be written there (rather
  than after a step's compute, from inside an asynchronous save)."""
  # One name per process: processes of a multi-host run probe the same directory at once.
  probe = os.path.join(directory, f".write_probe.{jax.process_index()}.{os.getpid()}")
  try:
    os.makedirs(directory, exist_ok=True)
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise PermissionError(
      f"{directory} is not a writable directory ({e}); fix it or pass another --workdir"
    ) from e


def _on_host(tree: Any) -> Any:
  """``tree``'s arrays as host numpy, gathered from every process where sharded across them."""
  if all(getattr(x, "is_fully_addressable", True) for x in jax.tree.leaves(tree)):
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


@jax.jit
def _leaf_checksums(tree: Any) -> list[jax.Array]:
  def checksum(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.uint8) if x.dtype == jnp.bool_ else x
    bits = jax.lax.bitcast_convert_type(x, _UNSIGNED[x.dtype.itemsize])
    return bits.astype(jnp.uint32).sum(dtype=jnp.uint32)  # Wraps: exact under any sharding.

  return [checksum(x) for x in jax.tree.leaves(tree)]


def fingerprint(tree: Any) -> list[int]:
  """Per-leaf sums of the raw bits mod 2**32: changing any one word changes them."""
  return [int(c) for c in jax.device_get(_leaf_checksums(tree))]


class Checkpoints:
  """The workdir's two checkpoint managers.

  ``clean=True`` (the training process) removes, with a warning, the temporary
  directories of writes that a killed run left unfinished; readers leave them,
  as they may belong to a run still writing.
  """

  def __init__(self, workdir: str, keep: int, clean: bool = False):
    self.workdir = os.path.abspath(workdir)

    def manager(name: str, max_to_keep: int) -> ocp.CheckpointManager:
      directory = os.path.join(self.workdir, name)
      if clean:
        _check_writable(directory)
        for tmp in glob.glob(os.path.join(directory, "*.orbax-checkpoint-tmp*")):
          logging.warning("Removing %s: a checkpoint write that a killed run left unfinished", tmp)
      options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=clean
      )
      return ocp.CheckpointManager(directory, options=options)

    self.state = manager("checkpoints", keep)
    self.best = manager("best", 1)

  def reached_preemption(self, step: int) -> bool:
    """Whether JAX's preemption service (multi-process runs) asks every host to save and
    stop at ``step``; always False in a single process."""
    return self.state.reached_preemption(step)

  def latest_step(self) -> int | None:
    return self.state.latest_step()

  def save_state(self, step: int, state: Any, data_iter: Any = None) -> None:
    """Saves the train state, its fingerprint and, if given, the grain iterator's state."""
    # So a complete state step implies complete best saves of that step and earlier ones.
    self._finish(self.best)
    items = {
      "state": ocp.args.StandardSave(state),
      "fingerprint": ocp.args.JsonSave(fingerprint(state)),
    }
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    self._write(self.state, step, ocp.args.Composite(**items))

  def _write(self, manager: ocp.CheckpointManager, step: int, args: ocp.args.Composite) -> None:
    """Starts an asynchronous save, first raising an earlier save's failure if one failed."""
    try:
      manager.check_for_errors()
      manager.save(step, args=args)
    except Exception as e:
      raise self._write_failed(manager, e) from e

  def _write_failed(self, manager: ocp.CheckpointManager, e: Exception) -> CheckpointWriteError:
    """The one error a failed write raises; the failed save's other writes stay out of the log."""
    pylogging.getLogger("asyncio").addFilter(_RepeatedWriteFailures())
    saved = manager.all_steps()
    kept = f"steps {saved} are intact" if saved else "no earlier step was saved"
    return CheckpointWriteError(
      f"could not write a checkpoint in {manager.directory} ({type(e).__name__}: "
      f"{_first_line(e)[:400]}); {kept}. Free space or fix the directory, then rerun the same "
      "command to resume."
    )

  def restore_state(
    self, abstract_state: Any, step: int | None = None, data_iter: Any = None
  ) -> Any:
    """The train state; also restores ``data_iter`` in place where the step saved one."""
    step = self.state.latest_step() if step is None else step
    try:
      saved_items = self.state.item_metadata(step)
      items = {"state": ocp.args.StandardRestore(abstract_state)}
      if "fingerprint" in saved_items:
        items["fingerprint"] = ocp.args.JsonRestore()
      if data_iter is not None and "data" in saved_items:
        items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
      restored = self.state.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:
      raise self._damaged(step, f"{type(e).__name__}: {_first_line(e)}") from e
    if "fingerprint" in items and fingerprint(restored.state) != restored.fingerprint:
      raise self._damaged(step, "its arrays differ from the checksum saved with them")
    return restored.state

  def _damaged(self, step: int, reason: str) -> DamagedCheckpointError:
    others = sorted(s for s in self.state.all_steps() if s != step)
    path = os.path.join(self.state.directory, str(step))
    if others:
      advice = (
        f"Other available steps: {others}. Rerun with --config.restore_step={others[-1]} (or "
        f"another of them) to resume from it; newer steps are moved to "
        f"{os.path.join(self.workdir, SET_ASIDE)}, nothing is deleted."
      )
    else:
      advice = "No other step is available; rerun with --fresh to start over in a new workdir."
    return DamagedCheckpointError(
      f"checkpoint step {step} at {path} is damaged or incomplete ({reason}). {advice}"
    )

  def rewind(self, step: int) -> None:
    """Makes ``step`` the latest: newer steps move to ``DIR/checkpoints_set_aside/<step>``
    (the run's ``best/`` steps after it follow when it starts: ``set_aside_best_after``)."""
    steps = sorted(self.state.all_steps())
    if step not in steps:
      raise ValueError(
        f"config.restore_step={step}: {self.state.directory} has no checkpoint of that step; "
        f"available steps: {steps or 'none'}"
      )
    newer = [s for s in steps if s > step]
    self._move_aside(self.state, newer, SET_ASIDE, f"config.restore_step={step}")

  def set_aside_best_after(self, step: int) -> None:
    """Moves ``best/`` steps newer than ``step``, the state a run starts from, to
    ``DIR/best_set_aside/``: they come from a trajectory this run does not follow (a rewind,
    or a kill between a best save and its state save), and must not stand for its results."""
    newer = [s for s in self.best.all_steps() if s > step]
    if newer:
      self._move_aside(self.best, newer, BEST_SET_ASIDE, f"resuming from step {step}")

  def _move_aside(
    self, manager: ocp.CheckpointManager, steps: list[int], into: str, why: str
  ) -> None:
    """Moves ``manager``'s ``steps`` to ``DIR/<into>/<step>`` (``-N`` if taken); never deletes."""
    if jax.process_index() == 0:
      for step in steps:
        target = workdir_guard.first_free(os.path.join(self.workdir, into, str(step)))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.rename(os.path.join(manager.directory, str(step)), target)
        logging.warning(
          "%s: moved %s step %d aside to %s (kept)", why, manager.directory, step, target
        )
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"projectable.checkpoints.move_aside.{into}")
    manager.reload()

  def save_best(self, step: int, params: Any, metrics: dict) -> None:
    """Saves the best weights, their metrics and a SHA-256 per array (checked on restore)."""
    if step in self.best.all_steps():  # set_aside_best_after makes this unreachable.
      raise RuntimeError(
        f"{self.best.directory}/{step} already holds best weights of another trajectory; "
        "refusing to keep them as this run's"
      )
    items = {
      "params": ocp.args.StandardSave(params),
      "metrics": ocp.args.JsonSave(metrics),
      "digests": ocp.args.JsonSave(digests.tree_digests(_on_host(params))),
    }
    self._write(self.best, step, ocp.args.Composite(**items))

  def best_metrics(self) -> dict | None:
    step = self.best.latest_step()
    if step is None:
      return None
    try:
      args = ocp.args.Composite(metrics=ocp.args.JsonRestore())
      return self.best.restore(step, args=args).metrics
    except Exception as e:
      raise self._damaged_best(step, f"its metrics: {type(e).__name__}: {_first_line(e)}") from e

  def restore_best_params(self, abstract_params: Any) -> Any:
    """The best weights, verified against the digests saved with them."""
    step = self.best.latest_step()
    if step is None:
      raise FileNotFoundError(
        f"{self.best.directory} holds no best weights: no evaluation has finished with a "
        "finite validation bits/dim. Train until one does (train.eval_every), or lower "
        "config.train.learning_rate if every evaluation was NaN."
      )
    try:
      items = {"params": ocp.args.StandardRestore(abstract_params)}
      if "digests" in self.best.item_metadata(step):
        items["digests"] = ocp.args.JsonRestore()
      restored = self.best.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:
      raise self._damaged_best(step, f"{type(e).__name__}: {_first_line(e)}") from e
    if "digests" in items:
      bad = digests.mismatched(restored.digests, _on_host(restored.params))
      if bad:
        reason = f"arrays {', '.join(bad[:3])} differ from the SHA-256 saved with them"
        raise self._damaged_best(step, reason)
    return restored.params

  def _damaged_best(self, step: int, reason: str) -> DamagedCheckpointError:
    earlier = sorted(s for s in self.state.all_steps() if s < step)
    path = os.path.join(self.best.directory, str(step))
    if earlier:
      advice = (
        f"Rerun with --config.restore_step={earlier[-1]}: training from that state evaluates "
        f"again, and the damaged best moves to {os.path.join(self.workdir, BEST_SET_ASIDE)}."
      )
    else:
      advice = "No earlier train state is kept; rerun with --fresh to train anew."
    return DamagedCheckpointError(
      f"best weights at {path} are damaged or incomplete ({reason}). {advice}"
    )

  def wait(self) -> None:
    """Waits for the asynchronous saves; raises ``CheckpointWriteError`` if one failed."""
    self._finish(self.state)
    self._finish(self.best)

  def _finish(self, manager: ocp.CheckpointManager) -> None:
    try:
      manager.wait_until_finished()
      manager.check_for_errors()
    except Exception as e:
      raise self._write_failed(manager, e) from e

  def close(self) -> None:
    """Finishes the saves (``CheckpointWriteError`` if one failed) and releases the managers."""
    try:
      self.wait()
    finally:
      for manager in (self.state, self.best):
        try:
          manager.close()
        except Exception:  # A failed save: wait() has raised it already, named.
          logging.debug("closing %s after a failed save", manager.directory, exc_info=True)
