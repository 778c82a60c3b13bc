"""``train_and_evaluate(config, workdir)``: one run end to end, as ``launch/train.py`` runs it.

Trains (``training.loop``), then writes the run's pictures, its specialists
(``export/<task>/``, modes that have them) and samples (``samples/<task>.png``)
from the best-on-validation weights, and returns ``eval/metrics.json``. The run holds the
workdir's lock (``training.workdir_lock``) from its first write to its last artifact.
"""

from __future__ import annotations

import jax
import ml_collections
from absl import logging

from projectable.specialists import emission, images
from projectable.training import loop


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains ``config.mode`` in ``workdir`` (resuming if possible); returns eval/metrics.json."""

  def write_artifacts(run: loop.TrainedRun) -> None:  # Still holding the workdir's lock.
    if jax.process_index() == 0:
      images.write_pictures(run.config, run.data, run.method, run.params, run.metrics, workdir)
      emission.export_specialists(run.data, run.method, run.params, run.metrics, workdir)

  metrics = loop.train(config, workdir, finish=write_artifacts).metrics
  logging.info("best step %d: test %.4f bits/dim", metrics["step"], metrics["bits_per_dim"]["mean"])
  return metrics
