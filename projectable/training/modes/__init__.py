"""The four training modes: what is trained, its loss, how a task is scored, what a step costs.

Every mode works on a plain-dict parameter tree and a task-grouped batch
``{"tokens": (M, N, L), "task_id": (M,), "task": (M, C)}``: ``source`` (the large
conditional model), ``universal`` (the small conditional model), ``specialists`` (one
small unconditional model per task) and ``projectable`` (source + projectors). Each
mode class owns its differences; code elsewhere asks its methods and properties.
"""

from __future__ import annotations

import jax
import ml_collections

from projectable.data.records import TaskData
from projectable.training.modes.base import Method, Sampler, small_axes
from projectable.training.modes.projectable import ProjectableMethod
from projectable.training.modes.small import SmallMethod, SpecialistsMethod, UniversalMethod
from projectable.training.modes.source import SourceMethod

MODES: dict[str, type[Method]] = {
  m.name: m for m in (ProjectableMethod, UniversalMethod, SpecialistsMethod, SourceMethod)
}


def make_method(config: ml_collections.ConfigDict, data: TaskData) -> Method:
  """The mode ``config.mode`` on ``data``: the config read once into typed settings.

  ``config.train.fast_compile`` turns XLA's optimisations off here, before the run compiles
  anything; JAX's setting is per process, so it holds for every later compilation too.
  """
  if config.train.get("fast_compile", False):
    jax.config.update("jax_disable_most_optimizations", True)
  return MODES[config.mode].from_config(config, data)


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
