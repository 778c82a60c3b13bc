"""training.tb_writer: TensorBoard reads back the scalars, images, texts and hyperparameters
it writes, in the format of TensorFlow's ``tf.summary`` (tensor summaries per plugin)."""

import glob
import io
import os

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util

from projectable.training import tb_writer


def _read(logdir: str) -> event_accumulator.EventAccumulator:
  (path,) = glob.glob(f"{logdir}/events.out.tfevents.*.v2")
  acc = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
  acc.Reload()
  return acc


def _values(acc: event_accumulator.EventAccumulator, tag: str) -> list:
  return [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]


def test_scalars_images_texts_and_hparams_read_back(tmp_path):
  logdir = str(tmp_path / "run")  # Created by the writer.
  writer = tb_writer.SummaryWriter(logdir)
  grey = np.arange(6 * 5, dtype=np.uint8).reshape(1, 6, 5, 1) * 8
  rgb = np.linspace(0.0, 1.0, 4 * 3 * 3).reshape(4, 3, 3)  # Floats in [0, 1], no batch axis.
  writer.write_scalars(1, {"train/loss": 2.5, "train/steps": np.int32(7)})
  writer.write_scalars(2, {"train/loss": 1.25})
  writer.write_images(2, {"grey": grey, "rgb": rgb})
  writer.write_texts(3, {"config": "    a: 1\n    b: 2"})
  writer.write_hparams({"train.learning_rate": 0.1, "mode": "projectable", "fast": True})
  writer.close()
  writer.close()  # A second close does nothing.

  acc = _read(logdir)
  plugins = {t: acc.SummaryMetadata(t).plugin_data.plugin_name for t in acc.Tags()["tensors"]}
  assert plugins == {
    "train/loss": "scalars",
    "train/steps": "scalars",
    "grey": "images",
    "rgb": "images",
    "config": "text",
    "_hparams_/session_start_info": "hparams",
  }
  assert [(s, float(v)) for s, v in _values(acc, "train/loss")] == [(1, 2.5), (2, 1.25)]
  assert [(s, float(v)) for s, v in _values(acc, "train/steps")] == [(1, 7.0)]

  ((step, grey_tensor),) = _values(acc, "grey")
  assert step == 2 and [int(v) for v in grey_tensor[:2]] == [5, 6]  # Width, height.
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(grey_tensor[2]))), grey[0, ..., 0])
  ((_, rgb_tensor),) = _values(acc, "rgb")
  assert [int(v) for v in rgb_tensor[:2]] == [3, 4] and len(rgb_tensor) == 3
  decoded = np.asarray(Image.open(io.BytesIO(rgb_tensor[2])))
  np.testing.assert_array_equal(decoded, (rgb * 255).round().astype(np.uint8))

  ((step, text),) = _values(acc, "config")
  assert step == 3 and text.item().decode() == "    a: 1\n    b: 2"

  (event,) = acc.Tensors("_hparams_/session_start_info")
  content = acc.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
  start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
  assert event.step == 0
  assert start.hparams["train.learning_rate"].number_value == pytest.approx(0.1)
  assert start.hparams["mode"].string_value == "projectable"
  assert start.hparams["fast"].bool_value is True


def test_each_write_is_flushed_for_a_live_tensorboard(tmp_path):
  writer = tb_writer.SummaryWriter(str(tmp_path))
  writer.write_scalars(5, {"val/bits_per_dim": 1.5})
  assert [s for s, _ in _values(_read(str(tmp_path)), "val/bits_per_dim")] == [5]
  writer.close()


def test_two_writers_in_one_process_write_two_files(tmp_path):
  first, second = tb_writer.SummaryWriter(str(tmp_path)), tb_writer.SummaryWriter(str(tmp_path))
  first.close()
  second.close()
  assert first.path != second.path and len(os.listdir(tmp_path)) == 2


def test_the_null_writer_writes_nothing(tmp_path):
  writer = tb_writer.NullWriter()
  writer.write_scalars(1, {"a": 1.0})
  writer.write_images(1, {"b": np.zeros((1, 2, 2, 1), np.uint8)})
  writer.write_texts(1, {"c": "text"})
  writer.write_hparams({"d": 1})
  writer.flush()
  writer.close()
  assert not os.listdir(tmp_path)
