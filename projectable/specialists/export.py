"""One-shot export of specialists from a training workdir (``launch/export.py``), and scoring.

``export(workdir, tasks, out)`` restores the run's best-on-validation weights
(or the train state checkpointed at ``step``), emits the chosen tasks'
specialists in one jitted, vmapped call (``emission.emit_specialists``), scores
each on its task's test images and writes ``out/<task>/`` with
``specialist.save_specialist`` (Orbax weights + ``config.json``). The ``tflite``
format also writes ``model.tflite`` (signatures ``serving_default``, ``logits``
and the KV-cached ``decode``) and ``saved_model/`` there (``specialists/tflite.py``).
Nothing is overwritten unless asked.

A projectable run also emits specialists of class sets that were never training
tasks (``tasks='pair38:3,8'``): the set becomes a task of the run's data, so its
descriptor, test images and metadata are those a training task of the same
classes would have. ``evaluate_specialist`` scores any exported specialist on
the test images of any class set (``launch/evaluate.py``).
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import ml_collections

from projectable import data as data_lib
from projectable.data import TaskData
from projectable.specialists import emission, tflite
from projectable.specialists.artifact import load_specialist
from projectable.training import modes, restore, workdir_lock

FORMATS = ("orbax", "tflite")


def resolve_tasks(spec: str, task_names: tuple[str, ...]) -> list[int]:
  """Task indices from comma-separated task names, indices or ``'all'`` (names first)."""
  ids: list[int] = []
  for item in filter(None, (s.strip() for s in spec.split(","))):
    if item == "all":
      found = range(len(task_names))
    elif item in task_names:
      found = [task_names.index(item)]
    elif item.isdigit() and int(item) < len(task_names):
      found = [int(item)]
    else:
      raise ValueError(
        f"unknown task {item!r}; valid tasks: {', '.join(task_names)} (by name, "
        f"or by index 0..{len(task_names) - 1}), or 'all'"
      )
    ids += [t for t in found if t not in ids]
  if not ids:
    raise ValueError(f"no task given in {spec!r}; name tasks, give indices, or 'all'")
  return ids


def select_tasks(spec: str, data: TaskData) -> tuple[TaskData, list[int]]:
  """``data`` with ``spec``'s new class sets appended as tasks, and the chosen task indices.

  ``spec`` is ';'-separated items: training tasks (``'all'``, or comma-separated
  names or indices) or a class set ``'name:class,class,...'`` (the syntax of
  ``config.data.tasks``), which need not be a training task. A class set's
  descriptor is the one a training task of the same classes gets: equal weights
  summing to one (``TaskData.task_descriptors``).
  """
  known, sets = [], []
  for item in filter(None, (s.strip() for s in spec.split(";"))):
    (sets if ":" in item else known).append(item)
  try:
    ids = resolve_tasks(",".join(known), data.task_names) if known or not sets else []
  except ValueError as e:
    raise ValueError(f"{e}, or a class set 'name:class,class,...' (e.g. 'pair38:3,8')") from None
  if not sets:
    return data, ids
  names, classes = data_lib.parse_tasks(";".join(sets), data.class_names, field="--tasks")
  taken = [n for n in names if n in data.task_names]
  if taken:
    raise ValueError(
      f"--tasks: class set name(s) {taken} already name training tasks; choose other names"
    )
  first = data.num_tasks
  data = dataclasses.replace(
    data, task_names=data.task_names + names, task_classes=data.task_classes + classes
  )
  for name, pool in zip(names, data.task_indices(data.test)[first:], strict=True):
    if not len(pool):
      raise ValueError(f"--tasks: class set {name!r} has no test images to score it on")
  return data, ids + list(range(first, data.num_tasks))


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
  """Exports the specialists of ``tasks`` (``select_tasks``) from ``workdir`` to ``out/<task>/``.

  Returns a summary: source step and weights, tasks, directories, the time of
  one emission call of all tasks and of its compilation, and each specialist's
  test bits/dim as measured at export.
  """
  if fmt not in FORMATS:
    raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
  if fmt == "tflite":
    tflite.require()  # Before the emission: a core install lacks TensorFlow and LiteRT.
  config = restore.read_config(os.path.abspath(workdir))
  if not modes.MODES[config.mode].has_specialists:
    raise ValueError(
      f"mode {config.mode!r} has no specialists to export (only 'projectable' "
      "and 'specialists' do); sample it with launch/sample.py --workdir"
    )
  if ":" in tasks and not modes.MODES[config.mode].emits_any_class_set:
    raise ValueError(
      f"--tasks={tasks!r} names a class set, which only a projectable run can emit; "
      f"mode {config.mode!r} has one model per training task"
    )
  inside = os.path.commonpath([os.path.abspath(out), os.path.abspath(workdir)])
  # Writing into the workdir makes export one of its writers (as training's own export/).
  with workdir_lock.WorkdirLock(workdir, "export", enabled=inside == os.path.abspath(workdir)):
    run = restore.load_run(workdir, step)
    data, task_ids = select_tasks(tasks, run.data)
    names = [data.task_names[t] for t in task_ids]
    _check_free([os.path.join(out, name) for name in names], overwrite)
    emitted = emission.emit_specialists(data, run.method, run.params, task_ids)
    paths = emission.save_specialists(
      emitted, data, run.method, run.step, out, overwrite, run.weights
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


def evaluate_specialist(
  path: str, config: ml_collections.ConfigDict, classes: str | None = None
) -> dict:
  """Test bits/dim of the specialist at ``path`` on the test images of a class set.

  ``config`` gives the data (use its training run's, so that the test split is the
  one it never trained on) and ``train.eval_chunk``; ``classes`` ('3,8', indices
  or names) defaults to the specialist's own. Scored by the code that scores
  specialists at export, on the set and on each of its classes.
  """
  specialist, meta = load_specialist(path)
  data = data_lib.load(config.data)
  made_for = {k: meta.get(k) for k in ("dataset", "levels", "image_shape")}
  have = {"dataset": data.name, "levels": data.levels, "image_shape": list(data.image_shape)}
  if made_for != have:
    raise ValueError(
      f"the specialist at {path} was made for data {made_for}, but the config's data is "
      f"{have}; pass the config of its training run"
    )
  if classes is None and "task_classes" not in meta:
    raise ValueError(f"{path}/config.json records no task_classes; pass --classes")
  chosen = data_lib.parse_classes(
    meta["task_classes"] if classes is None else classes, data.class_names, "--classes"
  )
  sets = (chosen, *((c,) for c in chosen))
  scored = dataclasses.replace(
    data, task_names=("set", *(str(c) for c in chosen)), task_classes=sets
  )
  counts = [len(pool) for pool in scored.task_indices(data.test)]
  empty = [c for c, n in zip(chosen, counts[1:], strict=True) if not n]
  if empty:
    raise ValueError(f"--classes: the test split has no image of class(es) {empty}")
  weights_T = jax.tree.map(lambda w: jnp.stack([w] * len(sets)), specialist.params)
  bpd = emission.task_test_bits_per_dim(
    scored, specialist.cfg, weights_T, range(len(sets)), config.train.eval_chunk
  )
  if not all(math.isfinite(v) for v in bpd.values()):
    raise FloatingPointError(
      f"the specialist at {path} scores non-finite bits/dim {bpd}: its weights are not usable"
    )
  return {
    "specialist": os.path.abspath(path),
    "task": meta.get("task"),
    "task_classes": meta.get("task_classes"),
    "dataset": data.name,
    "split": "test",
    "classes": list(chosen),
    "class_names": [data.class_names[c] for c in chosen],
    "num_images": counts[0],
    "bits_per_dim": bpd["set"],
    "per_class": {
      data.class_names[c]: {"bits_per_dim": bpd[str(c)], "num_images": n}
      for c, n in zip(chosen, counts[1:], strict=True)
    },
  }
