"""TFDS builders for the local datasets, and random-access TFDS sources (ArrayRecord).

Two builders prepare data that is already on this machine into a TFDS data
directory, in the ArrayRecord format, in the original example order, with no
download: ``sklearn_digits`` (scikit-learn's bundled 8x8 digits) and
``fashion_mnist_idx`` (the IDX files of Debian's ``dataset-fashion-mnist``).
Images are stored as raw uint8 bytes (fast to write and to read). Any other TFDS
image classification dataset is read where it was prepared beforehand, e.g.
``tfds build mnist --data_dir=DIR --file_format=array_record``; it is never
downloaded from here.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from projectable.data.records import Source

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist.
FASHION_MNIST_CLASSES = (
  "T-shirt/top",
  "Trouser",
  "Pullover",
  "Dress",
  "Coat",
  "Sandal",
  "Shirt",
  "Sneaker",
  "Bag",
  "Ankle boot",
)
FASHION_MNIST_FILES = {
  "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {
  0x08: np.uint8,
  0x09: np.int8,
  0x0B: np.dtype(">i2"),
  0x0C: np.dtype(">i4"),
  0x0D: np.dtype(">f4"),
  0x0E: np.dtype(">f8"),
}


def _features(
  shape: tuple[int, int, int], class_names: Sequence[str]
) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict(
    {
      "image": tfds.features.Tensor(
        shape=shape, dtype=np.uint8, encoding=tfds.features.Encoding.BYTES
      ),
      "label": tfds.features.ClassLabel(names=list(class_names)),
    }
  )


class SklearnDigits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """scikit-learn's bundled 8x8 digits: 1797 images with values 0..16, one 'train' split."""

  name = "sklearn_digits"
  VERSION = tfds.core.Version("1.0.0")
  MAX_VALUE = 16.0
  # No download checksums; also avoids TFDS 4.9.10's code-path lookup, which needs the
  # undeclared package importlib_resources for builders defined inside a package.
  code_path = None

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=self.__doc__,
      features=_features((8, 8, 1), "0123456789"),
      supervised_keys=("image", "label"),
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: Any) -> dict:
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.uint8).reshape(-1, 8, 8, 1)
    for i, (image, label) in enumerate(zip(images, digits.target, strict=True)):
      yield i, {"image": image, "label": int(label)}


def read_idx(path: str) -> np.ndarray:
  """An IDX file (optionally gzipped) as an array."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    raw = f.read()
  if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
    raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4]!r})")
  ndim = raw[3]
  dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
  return np.frombuffer(raw, _IDX_DTYPES[raw[2]], offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist_files(path: str) -> dict[str, tuple[str, str]]:
  """Split -> (images, labels) IDX paths in ``path`` (.gz or not); ValueError if missing."""
  found, missing = {}, []
  for split, names in FASHION_MNIST_FILES.items():
    paths = []
    for name in names:
      candidates = [os.path.join(path, name + ext) for ext in (".gz", "")]
      hit = next((p for p in candidates if os.path.isfile(p)), None)
      if hit is None:
        missing.append(name + ".gz")
      paths.append(hit)
    found[split] = tuple(paths)
  if missing:
    raise ValueError(
      f"Fashion-MNIST IDX files not found in {path!r} (missing {', '.join(missing)}). "
      "Install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu; files in "
      f"{FASHION_MNIST_DIR}) or set --config.data.path to a directory holding them."
    )
  return found  # type: ignore[return-value]


class FashionMnistIdx(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Fashion-MNIST (28x28 grey, 60000 train / 10000 test) from local IDX files."""

  name = "fashion_mnist_idx"
  VERSION = tfds.core.Version("1.0.0")
  MAX_VALUE = 255.0
  code_path = None  # As for SklearnDigits.

  def __init__(self, *, path: str = FASHION_MNIST_DIR, **kwargs: Any):
    self.idx_path = path
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=self.__doc__,
      features=_features((28, 28, 1), FASHION_MNIST_CLASSES),
      supervised_keys=("image", "label"),
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: Any) -> dict:
    del dl_manager
    files = fashion_mnist_files(self.idx_path)
    return {split: self._generate_examples(*paths) for split, paths in files.items()}

  def _generate_examples(self, images_path: str, labels_path: str):
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
      raise ValueError(
        f"{images_path} / {labels_path}: unexpected shapes {images.shape} / {labels.shape}"
      )
    for i in range(len(labels)):
      yield i, {"image": images[i][..., None], "label": int(labels[i])}


class RecordView:
  """A TFDS data source's records as {"image": (H, W, C) uint8, "label": int}."""

  def __init__(self, source: Any, image_key: str, label_key: str, add_channel: bool):
    self.source, self.image_key, self.label_key = source, image_key, label_key
    self.add_channel = add_channel

  def _convert(self, example: dict) -> dict[str, Any]:
    image = np.asarray(example[self.image_key])
    return {
      "image": image[..., None] if self.add_channel else image,
      "label": int(example[self.label_key]),
    }

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> dict[str, Any]:
    return self._convert(self.source[i])

  def __getitems__(self, rows: Sequence[int]) -> list[dict[str, Any]]:
    return [self._convert(e) for e in self.source.__getitems__(list(rows))]


def _prepare(builder: tfds.core.DatasetBuilder) -> None:
  """Prepares a local (no-download) builder once; tolerates a concurrent preparation."""
  if builder.is_prepared():
    return
  try:
    builder.download_and_prepare(file_format="array_record")
  except Exception:
    if not builder.is_prepared():
      raise


def is_tfds_name(name: str) -> bool:
  """Whether ``name`` ('mnist', 'cifar10/config:1.2.3') is a TFDS dataset of this install."""
  base = name.split("/")[0].split(":")[0]
  return base in tfds.list_builders(with_community_datasets=False)


def builder_source(builder: tfds.core.DatasetBuilder, name: str) -> Source:
  """A prepared builder's train (and test) splits as a random-access ``Source``."""
  where = f"{builder.data_dir_root} (config.data.tfds_data_dir)"
  if not builder.is_prepared():
    raise ValueError(
      f"TFDS dataset {name!r} is not prepared in {where}, and projectable never downloads. "
      f"Prepare it (where there is internet) with `tfds build {name} --data_dir=DIR "
      "--file_format=array_record` and set --config.data.tfds_data_dir=DIR."
    )
  info = builder.info
  image_key, label_key = info.supervised_keys or ("image", "label")
  features = info.features
  if not (
    isinstance(image_key, str)
    and isinstance(label_key, str)
    and image_key in features
    and label_key in features
    and isinstance(features[label_key], tfds.features.ClassLabel)
  ):
    raise ValueError(
      f"TFDS dataset {name!r} is not image classification: it needs an image "
      f"and a ClassLabel feature (supervised keys {info.supervised_keys})"
    )
  shape = tuple(features[image_key].shape)
  if (
    len(shape) not in (2, 3)
    or any(d is None for d in shape)
    or features[image_key].np_dtype != np.uint8
  ):
    raise ValueError(
      f"TFDS dataset {name!r}: images must have a fixed (H, W[, C]) uint8 "
      f"shape, not {shape} {features[image_key].np_dtype}"
    )
  if "train" not in info.splits:
    raise ValueError(f"TFDS dataset {name!r} has no 'train' split (splits {list(info.splits)})")
  try:
    splits = builder.as_data_source()
  except (NotImplementedError, ValueError) as e:
    raise ValueError(
      f"TFDS dataset {name!r} in {where} is not in a random-access format ({e}). Prepare it "
      "with --file_format=array_record."
    ) from e
  add_channel = len(shape) == 2
  views = {
    split: RecordView(splits[split], image_key, label_key, add_channel)
    for split in ("train", "test")
    if split in splits
  }
  return Source(
    name=name,
    train=views["train"],
    test=views.get("test"),
    class_names=tuple(features[label_key].names),
    image_shape=(*shape, 1) if add_channel else shape,  # type: ignore[arg-type]
    max_value=float(getattr(builder, "MAX_VALUE", 255.0)),
  )


def _data_dir(data_dir: str) -> str | None:
  return os.path.expanduser(data_dir) if data_dir else None


def open_digits(data_dir: str) -> Source:
  builder = SklearnDigits(data_dir=_data_dir(data_dir), file_format="array_record")
  _prepare(builder)
  return builder_source(builder, "digits")


def open_fashion_mnist(data_dir: str, path: str) -> Source:
  builder = FashionMnistIdx(
    path=path or FASHION_MNIST_DIR, data_dir=_data_dir(data_dir), file_format="array_record"
  )
  if not builder.is_prepared():
    fashion_mnist_files(builder.idx_path)  # A clear error before any TFDS machinery runs.
  _prepare(builder)
  return builder_source(builder, "fashion_mnist")


def open_tfds(name: str, data_dir: str) -> Source:
  """A TFDS image classification dataset prepared in ``data_dir``; never downloads."""
  return builder_source(tfds.builder(name, data_dir=_data_dir(data_dir)), name)
