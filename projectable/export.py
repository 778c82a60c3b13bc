"""One-shot export of specialists from a training workdir (``launch/export.py``).

``export(workdir, tasks, out)`` restores the run's best-on-validation weights
(or the train state checkpointed at ``step``), emits the chosen tasks'
specialists in one jitted, vmapped call (``artifacts.emit_specialists``), scores
each on its task's test images and writes ``out/<task>/`` with
``specialist.save_specialist`` (Orbax weights + ``config.json``). The ``tflite``
format also writes ``model.tflite`` and ``saved_model/`` there
(``projectable/tflite.py``). Nothing is overwritten unless asked.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import ml_collections

from projectable import artifacts, modes, tflite, train
from projectable.data import TaskData

FORMATS = ("orbax", "tflite")


class Run(NamedTuple):
  """A training run restored from its workdir."""

  config: ml_collections.ConfigDict
  method: modes.Method
  params: dict
  data: TaskData
  step: int  # The training step of the restored weights.
  weights: str  # 'best' (best on validation) or 'checkpoint' (the train state at ``step``).


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config from ``workdir/config.json``."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"no workdir at {workdir}")
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{workdir} has no config.json; is it a workdir of launch/train.py?")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def _saved_steps(workdir: str, kind: str) -> list[int]:
  """Steps of the finished checkpoints under ``workdir/<kind>/`` ('checkpoints' or 'best')."""
  root = os.path.join(workdir, kind)
  if not os.path.isdir(root):
    return []
  return sorted(
    int(n) for n in os.listdir(root) if n.isdigit() and os.path.isdir(os.path.join(root, n))
  )


def load_run(workdir: str, step: int | None = None) -> Run:
  """The run in ``workdir``: its best weights, or the train state saved at ``step``."""
  workdir = os.path.abspath(workdir)
  config = read_config(workdir)
  if step is None:
    best = _saved_steps(workdir, "best")
    if not best:
      raise FileNotFoundError(
        f"{workdir} has no best-on-validation checkpoint (best/<step>/); "
        "has its training reached an evaluation?"
      )
    chosen, weights = best[-1], "best"
  else:
    saved = _saved_steps(workdir, "checkpoints")
    if step not in saved:
      raise FileNotFoundError(
        f"{workdir}/checkpoints has no step {step}; saved steps: {saved or 'none'}"
      )
    chosen, weights = step, "checkpoint"
  method, params, data = train.restore_params(config, workdir, step)
  return Run(config, method, params, data, chosen, weights)


def resolve_tasks(spec: str, task_names: tuple[str, ...]) -> list[int]:
  """Task indices from ``'all'`` or comma-separated task names or indices (names first)."""
  if spec.strip() == "all":
    return list(range(len(task_names)))
  ids: list[int] = []
  for item in filter(None, (s.strip() for s in spec.split(","))):
    if item in task_names:
      t = task_names.index(item)
    elif item.isdigit() and int(item) < len(task_names):
      t = int(item)
    else:
      raise ValueError(
        f"unknown task {item!r}; valid tasks: {', '.join(task_names)} (by name, "
        f"or by index 0..{len(task_names) - 1}), or 'all'"
      )
    if t not in ids:
      ids.append(t)
  if not ids:
    raise ValueError(f"no task given in {spec!r}; name tasks, give indices, or 'all'")
  return ids


def _check_free(paths: list[str], overwrite: bool) -> None:
  taken = [p for p in paths if os.path.exists(p) and (not os.path.isdir(p) or os.listdir(p))]
  if taken and not overwrite:
    raise FileExistsError(
      f"not overwriting {', '.join(taken)}; pass --overwrite "
      "(overwrite=True) to replace the specialists there"
    )


def export(
  workdir: str,
  out: str,
  tasks: str = "all",
  step: int | None = None,
  overwrite: bool = False,
  fmt: str = "orbax",
) -> dict:
  """Exports the specialists of ``tasks`` from ``workdir`` to ``out/<task>/``.

  Returns a summary: source step and weights, tasks, directories, the time of
  one emission call of all tasks and of its compilation, and each specialist's
  test bits/dim as measured at export.
  """
  if fmt not in FORMATS:
    raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
  config = read_config(os.path.abspath(workdir))
  if modes.METHODS[config.mode].specialist is modes.Method.specialist:  # Kept the default.
    raise ValueError(
      f"mode {config.mode!r} has no specialists to export (only 'projectable' "
      "and 'specialists' do); sample it with launch/sample.py --workdir"
    )
  run = load_run(workdir, step)
  task_ids = resolve_tasks(tasks, run.data.task_names)
  names = [run.data.task_names[t] for t in task_ids]
  _check_free([os.path.join(out, name) for name in names], overwrite)
  emitted = artifacts.emit_specialists(run.data, run.method, run.params, task_ids)
  paths = artifacts.save_specialists(
    emitted, run.data, run.method, run.step, out, overwrite, run.weights
  )
  if fmt == "tflite":
    for i, path in enumerate(paths):
      tflite.convert(emitted.cfg, emitted.weights_of(i), path)
  return {
    "step": run.step,
    "weights": run.weights,
    "tasks": names,
    "paths": paths,
    "emit_seconds": emitted.seconds,
    "compile_seconds": emitted.compile_seconds,
    "test_bits_per_dim": emitted.test_bits_per_dim,
  }
