"""Fashion-MNIST (28x28 grey, 60000 train / 10000 test), tasks = the 10 classes by default.

Needs Debian's ``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``)
or ``--config.data.path=DIR`` holding train-images-idx3-ubyte.gz & co.; the first
run prepares it once as a TFDS dataset in ``config.data.tfds_data_dir``.

Variants: ``--config configs/fashion_mnist.py`` (``cpu``: 14x14, 16 levels, for
2 CPU cores), ``--config configs/fashion_mnist.py:full`` (28x28, 256 levels, a
bigger model; for accelerators) and ``--config configs/fashion_mnist.py:tiny``
(seconds; tests). Override any field with ``--config.a.b=value``; e.g. tasks as
class sets: ``--config.data.tasks='tops:0,2,4,6;bottoms:1,3;footwear:5,7,9;bag:8'``.
"""

from ml_collections import ConfigDict

from projectable.training.config import base_config, make_tiny, parse_variant


def get_config(arg: str | None = None) -> ConfigDict:
  variant = parse_variant(arg, ("cpu", "full", "tiny"))
  c = base_config()
  c.data.name = "fashion_mnist"  # Local IDX files -> TFDS (ArrayRecord); no download.
  c.data.val_fraction = 0.1  # Carved per class from the 60000 training images.
  c.train.batch_tasks = 10
  if variant == "cpu":
    c.data.downsample = 2  # 28x28 -> 14x14 by 2x2 mean pooling: 196 tokens.
    c.data.levels = 16
    c.train.examples_per_task = 6
    c.train.num_steps = 600  # The reference budget of the committed frontiers (docs/results).
    c.train.warmup_steps = 50
    c.train.eval_every = 200
    c.train.log_every = 50
    c.train.checkpoint_every = 200
    c.model.update(d=128, heads=4, mlp_dim=512, depth=4, dropout=0.1)
    c.small.update(d=32, heads=2, mlp_dim=128, depth=4, dropout=0.1)
  elif variant == "full":
    c.data.downsample = 1  # 784 tokens.
    c.data.levels = 256  # Every intensity kept.
    c.train.examples_per_task = 32  # Divisible by data axes up to 32.
    c.train.num_steps = 20000
    c.train.learning_rate = 5e-4
    c.train.warmup_steps = 1000
    c.train.eval_every = 2000
    c.train.log_every = 100
    c.train.checkpoint_every = 1000
    c.train.eval_chunk = 128
    c.model.update(d=512, heads=8, mlp_dim=2048, depth=8, dropout=0.1)
    c.small.update(d=128, heads=4, mlp_dim=512, depth=8, dropout=0.1)
    c.projector.rank = 16
  else:  # tiny
    c.data.downsample = 4  # 7x7: 49 tokens.
    c.data.levels = 4
    make_tiny(c)
    c.train.eval_chunk = 256
  return c
