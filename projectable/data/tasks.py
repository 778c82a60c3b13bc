"""Tasks as class sets: ``config.data.tasks`` and ``--tasks``/``--classes`` parsing."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np


def _slug(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()


def parse_tasks(
  spec: str | Mapping[str, Sequence[int | str]],
  class_names: Sequence[str],
  field: str = "config.data.tasks",
) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]:
  """Task names and class sets from ``config.data.tasks`` (``field`` names it in errors).

  ``''``: one task per class, named after it (lower case, runs of other
  characters as '_'). Otherwise ``'name:class,class,...;name:...'`` (or a dict
  name -> classes), a class given by index or by name; a task's data is the
  union of its classes. Task names are used as file names.
  """
  if not spec:
    names = [_slug(n) or f"class{c}" for c, n in enumerate(class_names)]
    if len(set(names)) < len(names):
      names = [f"class{c}" for c in range(len(class_names))]
    return tuple(names), tuple((c,) for c in range(len(class_names)))
  if isinstance(spec, str):
    items = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
      name, sep, members = part.partition(":")
      if not sep:
        raise ValueError(f"{field}: {part!r} is not of the form 'name:class,class,...'")
      items.append((name.strip(), [m.strip() for m in members.split(",") if m.strip()]))
  else:
    items = [(str(name), list(members)) for name, members in spec.items()]
  names, classes = [], []
  for name, members in items:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in names:
      raise ValueError(
        f"{field}: task name {name!r} is empty, repeated or not "
        "made of letters, digits, '_', '.', '-' (it names files)"
      )
    if not members:
      raise ValueError(f"{field}: task {name!r} is empty; give it at least one class")
    names.append(name)
    classes.append(parse_classes(members, class_names, field, name))
  return tuple(names), tuple(classes)


def parse_classes(
  members: str | Sequence[int | str],
  class_names: Sequence[str],
  field: str,
  task: str | None = None,
) -> tuple[int, ...]:
  """Sorted distinct class indices of ``members`` ('3,8' or a list; indices or class names).

  Errors name ``field`` (and ``task``), the bad value and the valid classes.
  """
  if isinstance(members, str):
    members = [m.strip() for m in members.split(",") if m.strip()]
  if not members:
    raise ValueError(f"{field}: no class given; give class indices or names")
  owner = f" of task {task!r}" if task else ""
  indices = set()
  for member in members:
    if isinstance(member, (int, np.integer)) or str(member).lstrip("-").isdigit():
      c = int(member)
    elif member in class_names:
      c = list(class_names).index(member)
    else:
      raise ValueError(
        f"{field}: class {member!r}{owner} is neither an index nor one of the "
        f"class names {tuple(class_names)}"
      )
    if not 0 <= c < len(class_names):
      raise ValueError(
        f"{field}: class {c}{owner} is outside the dataset's classes 0..{len(class_names) - 1}"
      )
    indices.add(c)
  return tuple(sorted(indices))
