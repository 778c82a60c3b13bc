"""``source``: the large task-conditional model alone, ``{"source": ...}``."""

from __future__ import annotations

from projectable.core import model
from projectable.core.losses import conditional_nll
from projectable.training.modes.base import Method, Sampler


class SourceMethod(Method):
  name = "source"

  def init(self, key):
    return {"source": model.init_params(self.src, key)}

  def logical_axes(self):
    return {"source": model.logical_axes(self.src)}

  def loss(self, params, batch, key):
    nll = conditional_nll(self.src, params["source"], batch["tokens"], batch["task"], key).mean()
    return nll, {"nll": nll}

  def task_nll(self, params, tokens_NxL, task_id, task_C):
    nll = conditional_nll(self.src, params["source"], tokens_NxL[None], task_C[None], None)
    return {"main": nll[0].mean(-1)}

  def sampler(self, params, task_id, task_C):
    return Sampler(self.src, params["source"], task_C)

  def num_params(self, params):
    return {"source": model.num_params(params["source"]), "small": None}
