"""The four training modes: what is trained, its loss, how a task is scored, what a step costs.

Every mode works on a plain-dict parameter tree and a task-grouped batch
``{"tokens": (M, N, L), "task_id": (M,), "task": (M, C)}``: ``source`` (the large
conditional model), ``universal`` (the small conditional model), ``specialists`` (one
small unconditional model per task) and ``projectable`` (source + projectors). Each
mode class owns its differences; code elsewhere asks its methods and properties.
"""

from __future__ import annotations

import ml_collections

from projectable.data.records import TaskData
from projectable.training.modes.base import Method, Sampler, small_axes
from projectable.training.modes.projectable import ProjectableMethod
from projectable.training.modes.small import SmallMethod, SpecialistsMethod, UniversalMethod
from projectable.training.modes.source import SourceMethod
from projectable.training.typed_config import (
  StepConfig,
  projector_config,
  small_config,
  source_config,
)

MODES: dict[str, type[Method]] = {
  m.name: m for m in (ProjectableMethod, UniversalMethod, SpecialistsMethod, SourceMethod)
}


def make_method(config: ml_collections.ConfigDict, data: TaskData) -> Method:
  """The mode ``config.mode`` on ``data``: the config read once into typed settings."""
  step, src = StepConfig.from_config(config), source_config(config, data)
  if config.mode == "source":
    return SourceMethod(step, data, src)
  if config.mode == "projectable":
    small = small_config(config, data, conditional=False)
    return ProjectableMethod(step, data, src, small, projector_config(config))
  small = small_config(config, data, conditional=config.mode == "universal")
  return MODES[config.mode](step, data, src, small)


__all__ = [
  "MODES",
  "Method",
  "ProjectableMethod",
  "Sampler",
  "SmallMethod",
  "SourceMethod",
  "SpecialistsMethod",
  "UniversalMethod",
  "make_method",
  "small_axes",
]
