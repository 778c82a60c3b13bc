"""scikit-learn's 8x8 digits, tasks = the 10 classes.

Variants: ``--config configs/digits.py`` (the demo: a few minutes on 2 CPU
cores) and ``--config configs/digits.py:tiny`` (seconds; used by the tests).
Override any field with ``--config.a.b=value``.
"""

from ml_collections import ConfigDict

from projectable.training.config import base_config, make_tiny, parse_variant


def get_config(arg: str | None = None) -> ConfigDict:
  variant = parse_variant(arg, ("default", "tiny"))
  c = base_config()
  c.data.name = "digits"  # scikit-learn's bundled digits: 1797 images, no download.
  c.data.levels = 17  # Intensities 0..16 kept exactly.
  # The demo: a source 3x wider than the specialists, sized for a few minutes on 2 CPU cores.
  c.model.update(d=96, heads=4, mlp_dim=384, depth=4)
  c.train.num_steps = 300
  c.train.eval_every = 50
  c.train.checkpoint_every = 100
  if variant == "tiny":
    make_tiny(c)
  return c
