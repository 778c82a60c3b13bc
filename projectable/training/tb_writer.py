"""TensorBoard event files without TensorFlow: scalars, images, texts and hyperparameters.

The events are those TensorFlow 2's ``tf.summary`` writes (tensor summaries tagged with the
scalars, images, text or hparams plugin), built from the ``tensorboard`` package's pure
Python pieces: its protos, its summary ``*_pb`` helpers and its TFRecord ``RecordWriter``.
The file is written with plain ``open``: ``tensorboard``'s own ``EventFileWriter`` goes
through ``tensorboard.compat.tf``, which imports TensorFlow whenever it is installed.
Images are encoded as PNG with PIL. Every ``write_*`` call flushes, so a live TensorBoard
sees each log step.
"""

from __future__ import annotations

import io
import itertools
import os
import socket
import time
from collections.abc import Mapping
from typing import Protocol

import numpy as np
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import summary_v2 as scalar_summary
from tensorboard.plugins.text import summary_v2 as text_summary
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboard.util import tensor_util

HParam = bool | int | float | str
_uids = itertools.count()


class Writer(Protocol):
  """What the training loop writes to TensorBoard (``SummaryWriter`` or ``NullWriter``)."""

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None: ...
  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None: ...
  def write_texts(self, step: int, texts: Mapping[str, str]) -> None: ...
  def write_hparams(self, hparams: Mapping[str, HParam]) -> None: ...
  def flush(self) -> None: ...
  def close(self) -> None: ...


def png(image_HxWxC: np.ndarray) -> bytes:
  """PNG bytes of one image: uint8, or floats in [0, 1] (clipped); 1 to 4 channels."""
  image = np.asarray(image_HxWxC)
  if image.dtype != np.uint8:
    image = (np.clip(image.astype(np.float64), 0.0, 1.0) * 255.0).round().astype(np.uint8)
  if image.ndim == 3 and image.shape[-1] in (1, 2):  # Grey, grey + alpha: PIL's L and LA.
    image = image[..., 0] if image.shape[-1] == 1 else image
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def image_summary(tag: str, images_NxHxWxC: np.ndarray) -> summary_pb2.Summary:
  """What ``tf.summary.image`` writes: a string tensor [width, height, png, png, ...]."""
  images = np.asarray(images_NxHxWxC)
  if images.ndim == 3:
    images = images[None]
  _, height, width, _ = images.shape
  encoded = [str(width).encode(), str(height).encode(), *(png(i) for i in images)]
  summary = summary_pb2.Summary()
  summary.value.add(
    tag=tag,
    metadata=image_metadata.create_summary_metadata(display_name=None, description=None),
    tensor=tensor_util.make_tensor_proto(encoded, dtype=np.object_),
  )
  return summary


class SummaryWriter:
  """Writes ``DIR/events.out.tfevents.<time>.<host>.<pid>.<n>.v2`` (TensorFlow's naming)."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
    self.path = os.path.join(logdir, f"{name}.{os.getpid()}.{next(_uids)}.v2")
    self._records = RecordWriter(open(self.path, "wb"))  # Closed by close().
    self._closed = False
    self._event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
    self.flush()

  def _event(self, event: event_pb2.Event) -> None:
    self._records.write(event.SerializeToString())

  def _summaries(self, step: int, summaries: list[summary_pb2.Summary]) -> None:
    for summary in summaries:
      self._event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))
    self.flush()

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """One float32 scalar per tag (the Scalars tab)."""
    self._summaries(step, [scalar_summary.scalar_pb(k, float(v)) for k, v in scalars.items()])

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """Images (N, H, W, C) or (H, W, C) per tag, uint8 or floats in [0, 1] (the Images tab)."""
    self._summaries(step, [image_summary(k, v) for k, v in images.items()])

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    """One Markdown string per tag (the Text tab)."""
    self._summaries(step, [text_summary.text_pb(k, v) for k, v in texts.items()])

  def write_hparams(self, hparams: Mapping[str, HParam]) -> None:
    """The run's hyperparameters (the HParams tab), at step 0 as TensorFlow writes them."""
    self._summaries(0, [hparams_summary.hparams_pb(dict(hparams))])

  def flush(self) -> None:
    if not self._closed:
      self._records.flush()

  def close(self) -> None:
    """Flushes and closes the file; later calls do nothing."""
    if not self._closed:
      self._records.flush()
      self._records.close()
      self._closed = True


class NullWriter:
  """Drops everything: the writer of processes other than 0."""

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    del step, scalars

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    del step, images

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    del step, texts

  def write_hparams(self, hparams: Mapping[str, HParam]) -> None:
    del hparams

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass
