"""TensorBoard for a run (``training.tb_writer``): the config, parameters and sample grids.

Process 0 writes ``DIR/events.out.tfevents.*``; other processes get a writer that
drops everything. Besides the scalars of ``training.step_log`` and the evaluations,
a run writes once, at its first step: the config as text (``config``) and as
hyperparameters (the HParams tab; every scalar field, flattened as ``train.learning_rate``),
the parameter table of clu's ``parameter_overview`` (``parameters``) and the counts as
scalars (``params/total``, ``params/<part>``); and at each evaluation a grid of samples
(``samples``: one row per task, ``EvalSamples.per_task`` samples each, the same draws
every time, so the rows show how the model changes).
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from clu import parameter_overview
from jax.experimental import multihost_utils

from projectable.core import sampling
from projectable.data.records import TaskData
from projectable.data.tokens import tokens_to_images
from projectable.training import tb_writer, typed_config
from projectable.training.modes import Method


def open_writer(workdir: str) -> tb_writer.Writer:
  """The run's TensorBoard writer: synchronous, on process 0; a no-op on the others."""
  if jax.process_index() > 0:
    return tb_writer.NullWriter()
  return tb_writer.SummaryWriter(workdir)


def hparams(config: ml_collections.ConfigDict) -> dict[str, bool | int | float | str]:
  """Every scalar field of the config, flattened to ``section.field`` keys (a default left
  as None, the projectors' rate multiple, as the value it resolves to)."""
  out = {}

  def walk(prefix: str, node: dict) -> None:
    for key, value in node.items():
      name = f"{prefix}{key}"
      if isinstance(value, dict):
        walk(f"{name}.", value)
      elif isinstance(value, bool | int | float | str):
        out[name] = value

  walk("", config.to_dict())
  out["train.projector_lr_scale"] = typed_config.projector_lr_scale(config)
  return out


def _preformatted(text: str) -> str:
  """Markdown (TensorBoard's text tab) that shows ``text`` as is: indented 4 spaces."""
  return "\n".join("    " + line for line in text.splitlines())


def write_run_summary(
  writer: tb_writer.Writer,
  step: int,
  config: ml_collections.ConfigDict,
  method: Method,
  params: dict,
) -> None:
  """The config (text and hyperparameters) and the parameter table and counts at ``step``."""
  overview = parameter_overview.get_parameter_overview(params, include_stats=False)
  writer.write_texts(
    step,
    {"config": _preformatted(config.to_json(indent=2)), "parameters": _preformatted(overview)},
  )
  writer.write_hparams(hparams(config))
  counts = {f"params/{k}": v for k, v in method.num_params(params).items() if v is not None}
  writer.write_scalars(
    step, {"params/total": parameter_overview.count_parameters(params), **counts}
  )


def mosaic(images_TxSxHxWxC: np.ndarray, scale: int = 4) -> np.ndarray:
  """One uint8 image (1, H', W', C): a row per task, a column per sample, 1 grey pixel
  between tiles, each pixel repeated ``scale`` times on both axes."""
  t, s, h, w, c = images_TxSxHxWxC.shape
  tiles = images_TxSxHxWxC.repeat(scale, 2).repeat(scale, 3)
  canvas = np.full((t * (h * scale + 1) - 1, s * (w * scale + 1) - 1, c), 128, np.uint8)
  for i in range(t):
    for j in range(s):
      top, left = i * (h * scale + 1), j * (w * scale + 1)
      canvas[top : top + h * scale, left : left + w * scale] = tiles[i, j]
  return canvas[None]


class EvalSamples:
  """A few samples of each task's model (the first ``max_tasks`` tasks) as one image.

  One jitted call draws all of them (the mode's ``sampler`` vmapped over tasks, then
  ``core.sampling.sample``), compiled at the first evaluation; every process takes part.
  """

  per_task = 4

  def __init__(
    self, method: Method, data: TaskData, seed: int, temperature: float, max_tasks: int = 10
  ):
    self.data = data
    self.task_ids = np.arange(min(data.num_tasks, max_tasks), dtype=np.int32)
    self.tasks_TxC = np.asarray(data.task_descriptors(), np.float32)[self.task_ids]
    keys = jax.random.split(jax.random.key(seed), len(self.task_ids))
    self.keys_T = np.asarray(jax.random.key_data(keys))  # Numpy: valid on any mesh.
    num = self.per_task

    def draw(params, ids_T, tasks_TxC, keys_T):
      def one(task_id, task_C, key_data):
        model = method.sampler(params, task_id, task_C)
        key = jax.random.wrap_key_data(key_data)
        return sampling.sample(model.cfg, model.weights, num, key, model.task_C, temperature)

      return jax.vmap(one)(ids_T, tasks_TxC, keys_T)

    self._draw = jax.jit(draw)

  def image(self, params: dict) -> np.ndarray:
    """The grid (1, H', W', C) uint8 of the samples from ``params``."""
    tokens_TxSxL = self._draw(params, self.task_ids, self.tasks_TxC, self.keys_T)
    if jax.process_count() > 1:
      tokens_TxSxL = multihost_utils.process_allgather(tokens_TxSxL, tiled=True)
    tokens_TxSxL = np.asarray(jax.device_get(tokens_TxSxL))
    t, s, length = tokens_TxSxL.shape
    pictures = tokens_to_images(
      tokens_TxSxL.reshape(t * s, length), self.data.image_shape, self.data.levels
    )
    return mosaic(pictures.reshape(t, s, *self.data.image_shape))
