"""Dataset sources: digits and Fashion-MNIST via TFDS, user arrays, generic TFDS, bad inputs."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import digits as digits_config
from configs import fashion_mnist as fashion_config
from projectable import data as data_lib
from projectable.data import sources, tfds_sources
from projectable.data import tokens as tokens_lib
from projectable.training import config as config_lib
from projectable.training import validation


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp("tensorflow_datasets"))


def _cfg(tfds_dir: str, **overrides):
  cfg = config_lib.base_config().data
  cfg.tfds_data_dir = tfds_dir
  cfg.update(overrides)
  return cfg


@pytest.fixture(scope="session")
def fashion(tfds_dir):
  if not os.path.isdir(tfds_sources.FASHION_MNIST_DIR):
    pytest.skip(
      f"Fashion-MNIST IDX files absent from {tfds_sources.FASHION_MNIST_DIR}; "
      "install them with `apt-get install dataset-fashion-mnist`"
    )
  return data_lib.load(_cfg(tfds_dir, name="fashion_mnist", levels=16, downsample=2))


def test_digits_via_tfds_equal_scikit_learns_arrays_split_per_class(tfds_dir):
  from sklearn.datasets import load_digits as sklearn_digits

  data = data_lib.load(_cfg(tfds_dir, name="digits"))
  raw = sklearn_digits()
  tokens_NxL = data_lib.quantise(raw.images, 16.0, 17).reshape(len(raw.images), -1)
  rows = tokens_lib.split_per_class(raw.target, 0.1, 0.2, seed=0)
  assert data.image_shape == (8, 8, 1) and data.task_names == tuple("0123456789")
  for name, split_rows in zip(("train", "val", "test"), rows, strict=True):
    np.testing.assert_array_equal(getattr(data, name).tokens, tokens_NxL[split_rows])
    np.testing.assert_array_equal(getattr(data, name).labels, raw.target[split_rows])


def test_digits_as_user_arrays_with_max_value_equal_the_digits_source(tfds_dir, tmp_path):
  from sklearn.datasets import load_digits as sklearn_digits

  raw = sklearn_digits()
  images = raw.images.astype(np.uint8)
  path = _npz(tmp_path / "digits.npz", image=images, label=raw.target, max_value=np.array(16))
  mine = data_lib.load(_cfg("", name="arrays", path=path))
  digits = data_lib.load(_cfg(tfds_dir, name="digits"))
  for split in ("train", "val", "test"):
    np.testing.assert_array_equal(getattr(mine, split).tokens, getattr(digits, split).tokens)
    np.testing.assert_array_equal(getattr(mine, split).labels, getattr(digits, split).labels)
  # Without max_value the same arrays read as 0..255 intensities: other tokens.
  path = _npz(tmp_path / "digits255.npz", image=images, label=raw.target)
  assert data_lib.load(_cfg("", name="arrays", path=path)).train.tokens.max() < 2


def test_fashion_mnist_counts_shapes_labels_and_downsampling(fashion):
  assert len(fashion.train.labels) + len(fashion.val.labels) == 60000
  assert len(fashion.test.labels) == 10000
  assert fashion.image_shape == (14, 14, 1) and fashion.seq_len == 196
  assert fashion.class_names[0] == "T-shirt/top" and fashion.class_names[9] == "Ankle boot"
  assert fashion.task_names[0] == "t_shirt_top" and fashion.num_tasks == 10
  np.testing.assert_array_equal(np.bincount(fashion.test.labels), [1000] * 10)
  np.testing.assert_array_equal(
    np.bincount(np.concatenate([fashion.train.labels, fashion.val.labels])), [6000] * 10
  )
  for split in (fashion.train, fashion.val, fashion.test):
    assert split.tokens.dtype == np.int32 and 0 <= split.tokens.min() <= split.tokens.max() <= 15
  # Test split = the IDX test file in order, 2x2 mean-pooled and quantised to 16 levels.
  raw = tfds_sources.read_idx(
    os.path.join(tfds_sources.FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")
  )
  expect = data_lib.quantise(raw[:50].reshape(50, 14, 2, 14, 2).mean((2, 4)), 255.0, 16)
  np.testing.assert_array_equal(fashion.test.tokens[:50], expect.reshape(50, 196))


def test_fashion_mnist_missing_files_name_the_package(tmp_path):
  cfg = _cfg(str(tmp_path / "tfds"), name="fashion_mnist", path=str(tmp_path))
  with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist"):
    data_lib.load(cfg)


def test_quantise_and_downsample_are_exact_on_hand_made_images():
  image = np.array([[0, 2, 8, 8], [2, 4, 8, 8], [16, 16, 1, 3], [16, 16, 3, 1]], np.uint8)
  pooled = tokens_lib.downsample(image[None, :, :, None], 2)
  np.testing.assert_array_equal(pooled[0, :, :, 0], [[2, 8], [16, 2]])
  tokens = data_lib.preprocess(image[None, :, :, None], 16.0, 17, 2)
  np.testing.assert_array_equal(tokens, [[2, 8, 16, 2]])
  np.testing.assert_array_equal(
    data_lib.preprocess(image[None, :, :, None], 16.0, 5, 2), [[0, 2, 4, 0]]
  )
  # Colour: raster order with channels interleaved.
  rgb = np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3)
  np.testing.assert_array_equal(data_lib.preprocess(rgb, 255.0, 256, 1), [np.arange(12)])
  with pytest.raises(ValueError, match="downsample=3"):
    tokens_lib.downsample(image[None, :, :, None], 3)


def _npz(path, **arrays) -> str:
  np.savez(path, **arrays)
  return str(path)


def test_arrays_source_round_trips_colour_images(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (90, 4, 6, 3), dtype=np.uint8)
  labels = np.repeat(np.arange(3), 30)
  path = _npz(
    tmp_path / "mine.npz", image=images, label=labels, class_names=np.array(["cat", "dog", "bird"])
  )
  cfg = _cfg("", name="arrays", path=path, levels=256, tasks="pets:cat,dog;bird:2")
  data = data_lib.load(cfg)
  assert data.name == "mine" and data.image_shape == (4, 6, 3) and data.seq_len == 72
  assert data.task_names == ("pets", "bird") and data.task_classes == ((0, 1), (2,))
  assert sum(len(s.labels) for s in (data.train, data.val, data.test)) == 90
  lookup = {tuple(im.reshape(-1)): lab for im, lab in zip(images, labels, strict=True)}
  for split in (data.train, data.val, data.test):
    for tokens, label in zip(split.tokens, split.labels, strict=True):
      assert lookup[tuple(tokens)] == label
  test_path = _npz(tmp_path / "test.npz", image=images[::10, :, :, 0], label=labels[::10])
  grey = data_lib.load(
    _cfg(
      "",
      name="arrays",
      path=_npz(tmp_path / "grey.npz", image=images[:, :, :, 0], label=labels),
      test_path=test_path,
      levels=256,
    )
  )
  assert grey.image_shape == (4, 6, 1) and grey.class_names == ("0", "1", "2")
  np.testing.assert_array_equal(grey.test.tokens, images[::10, :, :, 0].reshape(9, -1))
  assert len(grey.train.labels) + len(grey.val.labels) == 90


def test_tasks_are_unions_of_classes(tfds_dir):
  data = data_lib.load(_cfg(tfds_dir, name="digits", tasks="low:0,1,2;odd:1,3,5,7,9"))
  assert data.task_names == ("low", "odd")
  np.testing.assert_allclose(
    data.task_descriptors()[1], np.isin(np.arange(10), [1, 3, 5, 7, 9]) / 5
  )
  for pool, classes in zip(data.task_indices(data.test), data.task_classes, strict=True):
    assert set(data.test.labels[pool]) == set(classes)
  assert data_lib.parse_tasks({"a": [3, "1"]}, tuple("0123")) == (("a",), ((1, 3),))


def test_bad_max_value_raises_a_clear_error(tmp_path):
  image, label = np.full((4, 2, 2), 20, np.uint8), np.zeros(4, int)
  for max_value, match in ((np.array([16, 16]), "must be one number"), (np.array(16), "holds 20")):
    path = _npz(tmp_path / "bad.npz", image=image, label=label, max_value=max_value)
    with pytest.raises(ValueError, match=match):
      sources.open_arrays(path)


@pytest.mark.parametrize(
  "arrays, match",
  [
    ({"images": np.zeros((4, 2, 2), np.uint8), "label": np.zeros(4, int)}, "needs 'image'"),
    ({"image": np.zeros((4, 2, 2), np.float32), "label": np.zeros(4, int)}, "must be uint8"),
    ({"image": np.zeros((4, 2), np.uint8), "label": np.zeros(4, int)}, "must be uint8 of shape"),
    ({"image": np.zeros((4, 2, 2), np.uint8), "label": np.zeros(3, int)}, "'label' must be"),
    ({"image": np.zeros((4, 2, 2), np.uint8), "label": np.array([0, 1, -1, 0])}, "outside"),
    (
      {
        "image": np.zeros((4, 2, 2), np.uint8),
        "label": np.array([0, 1, 5, 0]),
        "class_names": np.array(["a", "b"]),
      },
      "labels \\[5\\] are outside the classes 0..1",
    ),
  ],
)
def test_bad_npz_raises_a_clear_error(tmp_path, arrays, match):
  path = _npz(tmp_path / "bad.npz", **arrays)
  with pytest.raises(ValueError, match=match):
    sources.open_arrays(path)


@pytest.mark.parametrize(
  "tasks, match",
  [
    ("tops:", "task 'tops' is empty"),
    ("tops:0,11", "class 11 of task 'tops' is outside"),
    ("a b:1", "task name 'a b'"),
    ("x:1;x:2", "task name 'x'"),
    ("tops", "not of the form"),
    ("t:shoe", "neither an index nor one of the class names"),
  ],
)
def test_bad_tasks_raise_a_clear_error(tasks, match):
  with pytest.raises(ValueError, match=match):
    data_lib.parse_tasks(tasks, tuple("0123456789"))


def _damaged_files(tmp_path) -> dict[str, tuple[str, str]]:
  """name -> (path, expected message) of data files broken in the ways users break them."""
  images, labels = np.zeros((4, 2, 2), np.uint8), np.arange(4) % 2
  good = _npz(tmp_path / "good.npz", image=images, label=labels)
  with open(good, "rb") as f:
    raw = f.read()
  truncated = tmp_path / "truncated.npz"
  truncated.write_bytes(raw[: len(raw) // 2])
  flipped = bytearray(raw)  # A byte inside the stored (uncompressed) image array.
  at = raw.index(images.tobytes()) + 1
  flipped[at] ^= 0xFF
  (tmp_path / "crc.npz").write_bytes(bytes(flipped))
  np.save(tmp_path / "one.npy", images)
  np.savez(tmp_path / "objects.npz", image=np.array([images, None], dtype=object), label=labels)
  return {
    "truncated": (str(truncated), "is not a readable .npz"),
    "bad CRC": (str(tmp_path / "crc.npz"), "array 'image' is damaged"),
    ".npy": (str(tmp_path / "one.npy"), r"holds one array \(\.npy\)"),
    "objects": (str(tmp_path / "objects.npz"), "array 'image' holds Python objects"),
  }


def test_damaged_data_files_name_the_field_and_file_and_never_advise_pickle(tmp_path):
  for name, (path, match) in _damaged_files(tmp_path).items():
    for field, cfg in (
      ("path", _cfg("", name="arrays", path=path)),
      (
        "test_path",
        _cfg(
          "",
          name="arrays",
          path=_npz(
            tmp_path / "ok.npz", image=np.zeros((4, 2, 2), np.uint8), label=np.arange(4) % 2
          ),
          test_path=path,
        ),
      ),
    ):
      with pytest.raises(ValueError, match=match) as info:
        data_lib.load(cfg)
      message = str(info.value)
      assert f"config.data.{field}={path!r}" in message, (name, message)
      assert "allow_pickle" not in message, name


def test_unknown_dataset_and_missing_npz_raise_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="'no_such_dataset' is not a known dataset"):
    data_lib.load(_cfg(str(tmp_path), name="no_such_dataset"))
  with pytest.raises(ValueError, match=r"config\.data\.path must name a \.npz"):
    data_lib.load(_cfg("", name="arrays"))
  with pytest.raises(ValueError, match="no such file"):
    data_lib.load(_cfg("", name="arrays", path=str(tmp_path / "nope.npz")))


def test_unprepared_tfds_dataset_raises_without_downloading(tmp_path, monkeypatch):
  def no_download(*args, **kwargs):
    raise AssertionError("a download was attempted")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
  with pytest.raises(ValueError, match=r"'mnist' is not prepared in .*never downloads.*tfds build"):
    data_lib.load(_cfg(str(tmp_path), name="mnist"))
  assert not os.path.exists(tmp_path / "downloads")


class ProjectableTestSquares(tfds.core.GeneratorBasedBuilder):
  """A tiny registered TFDS image classification dataset (2-D images, 2 splits)."""

  VERSION = tfds.core.Version("1.0.0")
  code_path = None

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(shape=(6, 6), dtype=np.uint8),
          "label": tfds.features.ClassLabel(names=["dark", "light"]),
        }
      ),
      supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(40), "test": self._generate_examples(10)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {"image": np.full((6, 6), 200 * (i % 2), np.uint8), "label": i % 2}


def test_a_prepared_tfds_dataset_is_read_by_name(tmp_path, monkeypatch):
  name = "projectable_test_squares"
  ProjectableTestSquares(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  data = data_lib.load(_cfg(str(tmp_path), name=name, levels=2))
  assert data.class_names == ("dark", "light") and data.image_shape == (6, 6, 1)
  assert len(data.test.labels) == 10 and len(data.train.labels) + len(data.val.labels) == 40
  for split in (data.train, data.val, data.test):
    np.testing.assert_array_equal(split.tokens, np.repeat(split.labels[:, None], 36, 1))

  # What TFDS raises for data prepared as TFRecord (preparing one would import TensorFlow).
  def tfrecord_only(*args, **kwargs):
    raise NotImplementedError("Random access data source for file format tfrecord")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "as_data_source", tfrecord_only)
  with pytest.raises(ValueError, match="not in a random-access format"):
    data_lib.load(_cfg(str(tmp_path), name=name))


def test_configs_validate():
  for variant in ("cpu", "full", "tiny"):
    config = fashion_config.get_config(variant)
    config.mesh = "data:1,model:1"
    validation.validate(config)
  config = digits_config.get_config("tiny")
  config.mesh = "data:1,model:1"
  config.data.downsample = 0
  with pytest.raises(ValueError, match=r"data\.downsample"):
    validation.validate(config)
