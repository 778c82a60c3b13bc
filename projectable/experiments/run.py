"""``train_and_evaluate(config, workdir)``: one run end to end, as ``launch/train.py`` runs it.

Trains (``training.loop``), then writes the run's pictures, its specialists
(``export/<task>/``, modes that have them) and samples (``samples/<task>.png``)
from the best-on-validation weights, and returns ``eval/metrics.json``. The run holds the
workdir's lock (``training.workdir_lock``) from its start to its last artifact.
"""

from __future__ import annotations

import jax
import ml_collections
from absl import logging

from projectable.specialists import emission, images
from projectable.training import loop, workdir_lock


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains ``config.mode`` in ``workdir`` (resuming if possible); returns eval/metrics.json."""
  with workdir_lock.WorkdirLock(workdir, "training", enabled=jax.process_index() == 0):
    run = loop.train(config, workdir)
    metrics = run.metrics
    if jax.process_index() == 0:
      images.write_pictures(run.config, run.data, run.method, run.params, metrics, workdir)
      emission.export_specialists(run.data, run.method, run.params, metrics, workdir)
  logging.info("best step %d: test %.4f bits/dim", metrics["step"], metrics["bits_per_dim"]["mean"])
  return metrics
