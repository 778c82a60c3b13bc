"""Device mesh from a config string and shardings from logical axis names."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "model")


def parse_mesh(spec: str, num_devices: int) -> dict[str, int]:
  """``'data:-1,model:2'`` -> {'data': n / 2, 'model': 2}; -1 fills in."""
  sizes: dict[str, int] = {}
  for part in spec.split(","):
    name, sep, size = part.strip().partition(":")
    if not sep or name not in MESH_AXES or name in sizes:
      raise ValueError(
        f"config.mesh={spec!r}: expected comma-separated 'axis:size' with axes {MESH_AXES}, "
        "e.g. 'data:-1,model:1'"
      )
    try:
      sizes[name] = int(size)
    except ValueError:
      raise ValueError(
        f"config.mesh={spec!r}: size {size!r} of axis {name!r} is not an integer"
      ) from None
  fill = [n for n, s in sizes.items() if s == -1]
  if len(fill) > 1 or any(s < 1 for s in sizes.values() if s != -1):
    raise ValueError(f"config.mesh={spec!r}: sizes must be >= 1, with at most one -1")
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if fill:
    if num_devices % fixed:
      raise ValueError(f"config.mesh={spec!r}: {num_devices} devices are not divisible by {fixed}")
    sizes[fill[0]] = num_devices // fixed
  if math.prod(sizes.values()) > num_devices:
    raise ValueError(
      f"config.mesh={spec!r} needs {math.prod(sizes.values())} devices but only "
      f"{num_devices} are available; use -1 for one axis to fill in"
    )
  return {axis: sizes.get(axis, 1) for axis in MESH_AXES}


def make_mesh(spec: str, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'model') mesh over the first devices it needs (default pool: all)."""
  devices = list(devices) if devices is not None else jax.devices()
  sizes = parse_mesh(spec, len(devices))
  devices = devices[: math.prod(sizes.values())]
  return jax.make_mesh(
    tuple(sizes.values()), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
  )


def rules_from_config(rules: Mapping[str, str]) -> dict[str, str | None]:
  """``config.sharding.rules`` as logical axis -> mesh axis or None ('' or None: replicated;
  runs saved before '' replaced None in the defaults hold None)."""
  for axis, target in rules.items():
    if target not in (None, "", *MESH_AXES):
      raise ValueError(
        f"config.sharding.rules.{axis}={target!r} is invalid: must be '' (replicated) or one "
        f"of the mesh axes {MESH_AXES}"
      )
  return {axis: target or None for axis, target in rules.items()}


def spec_for(axes: Sequence[str | None], rules: Mapping[str, str | None]) -> PartitionSpec:
  """PartitionSpec for a weight's logical axes under logical->mesh ``rules``."""
  mesh_axes = [rules.get(a) if a is not None else None for a in axes]
  used = [a for a in mesh_axes if a is not None]
  if len(used) != len(set(used)):  # A mesh axis may shard one dimension only.
    seen: set[str] = set()
    mesh_axes = [a if a is None or (a not in seen and not seen.add(a)) else None for a in mesh_axes]
  return PartitionSpec(*mesh_axes)


def tree_shardings(axes_tree, mesh: Mesh, rules: Mapping[str, str | None]):
  """NamedShardings for a tree whose leaves are tuples of logical axis names."""
  return jax.tree.map(
    lambda axes: NamedSharding(mesh, spec_for(axes, rules)),
    axes_tree,
    is_leaf=lambda x: isinstance(x, tuple),
  )


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def check_divisible(shapes_tree, shardings_tree) -> None:
  """Raises naming the weight whose dimension a mesh axis does not divide."""
  flat_shapes = jax.tree_util.tree_leaves_with_path(shapes_tree)
  flat_shardings = jax.tree.leaves(shardings_tree)
  for (path, shape), sharding in zip(flat_shapes, flat_shardings, strict=True):
    for dim, axis in zip(shape.shape, sharding.spec, strict=False):
      if axis is not None and dim % sharding.mesh.shape[axis]:
        raise ValueError(
          f"weight {jax.tree_util.keystr(path)} dimension {dim} is not divisible by mesh "
          f"axis {axis!r} of size {sharding.mesh.shape[axis]}; change config.mesh or "
          "config.sharding"
        )
