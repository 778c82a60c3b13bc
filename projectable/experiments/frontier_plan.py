"""The points of a frontier: which run, at which budget, seed and settings, in which workdir.

At budget B (a multiple of the reference, the training FLOPs of ``train.num_steps``
projectable steps) a method runs ``round(B / its per-step FLOPs)`` steps, its eval,
checkpoint and warmup periods scaled alike (``arms.scaled``), so its training FLOPs are
within half a step of B. The methods built on a source (``arms.FROM_SOURCE``) pay for
it: they start from the ``source`` point at budget ``share * B`` (same seed, the config's
own settings) and spend ``(1 - share) * B`` on their own training; ``share`` is the
frontier's ``source_share`` unless their settings choose one. With a ``source_workdir``
(the amortised frontier) they all build on that trained source and spend all of B.
A ``Shard`` says which of several processes sharing the workdir trains a point.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import zlib
from collections.abc import Collection, Iterator

import ml_collections

from projectable import data as data_lib
from projectable.experiments import arms, tuning
from projectable.training import warmstart, workdir_lock


@dataclasses.dataclass(frozen=True)
class Point:
  """One training run of the frontier."""

  method: str
  budget: float  # Multiple of the reference budget.
  budget_flops: float
  seed: int
  config: ml_collections.ConfigDict
  workdir: str
  source: Point | None = None  # arms.FROM_SOURCE methods: the source point they build on.
  settings: tuning.Settings = ()  # The tuned knobs it trains with; () = the config's own.


@dataclasses.dataclass(frozen=True)
class Shard:
  """Process ``index`` of ``count`` sharing a frontier's workdir. It trains the points whose
  run hashes to it; the methods built on a source go by their source's run, so the trials
  that share a source run in the shard that trains it. With ``index`` None (``any/N``)
  each process trains whichever missing point no other is training: it claims the point's
  workdir lock (and its unfinished source's) first, so shards stay busy when some points
  are already finished or slower than others."""

  index: int | None = 0  # None: any point no other process holds.
  count: int = 1

  def __post_init__(self):
    if self.count < 1 or not (self.index is None or 0 <= self.index < self.count):
      raise ValueError(f"shard {self.index}/{self.count}: want 0 <= index < count")

  @classmethod
  def parse(cls, text: str) -> Shard:
    """``'i/n'`` -> Shard(i, n); ``'any/n'`` -> Shard(None, n)."""
    index, sep, count = text.partition("/")
    if not (sep and (index.isdigit() or index == "any") and count.isdigit()):
      raise ValueError(f"shard {text!r}: want INDEX/COUNT or any/COUNT, e.g. 0/2")
    return cls(None if index == "any" else int(index), int(count))

  def owns(self, point: Point) -> bool:
    """Whether ``point`` is this process's by its run's hash (every point with ``any``)."""
    if self.index is None:
      return True
    run = os.path.basename((point.source or point).workdir)
    return zlib.crc32(run.encode()) % self.count == self.index

  @contextlib.contextmanager
  def claim(self, point: Point, unfinished: Collection[str]) -> Iterator[bool]:
    """Whether this process trains ``point`` now, holding with ``any`` the workdir locks of
    its runs in ``unfinished`` (the point, its source) until the block ends."""
    if self.index is not None:
      yield self.owns(point)
      return
    held = []
    try:
      for workdir in unfinished:
        if not workdir_lock.try_claim(workdir, "frontier point"):
          break
        held.append(workdir)
      yield len(held) == len(unfinished)
    finally:
      for workdir in reversed(held):
        workdir_lock.release(workdir)


WHOLE = Shard()  # One process trains every point.


class Planner:
  """Makes the frontier's points of one config; every check runs when a point is made."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    workdir: str,
    source_share: float,
    distill_weight: float = arms.DISTILL_WEIGHT,
    source_workdir: str = "",
  ):
    self.config, self.workdir = config, workdir
    self.source_share, self.distill_weight = source_share, distill_weight
    self.source_workdir = source_workdir
    self.data = data_lib.load(config.data)
    self.reference = arms.reference_flops(config, self.data)
    # Per method, dropout and λ: the learning rate and the source share change no step's FLOPs.
    self._step_flops: dict[tuple[str, float, float, float], float] = {}

  def point(self, method: str, budget: float, seed: int, settings: tuning.Settings = ()) -> Point:
    """``method`` at ``budget`` x reference; raises ValueError where it buys no step."""
    config = self.config.copy_and_resolve_references()
    config.seed = seed
    tuning.apply(config, method, settings)
    source, share, source_dir = None, 1.0, self.source_workdir
    if method in arms.FROM_SOURCE and not self.source_workdir:
      source_share = dict(settings).get("source_share", self.source_share)
      try:
        source = self.point("source", budget * source_share, seed)
      except ValueError as e:
        raise ValueError(
          f"{method} at budget {budget:g} spends {source_share:g} of it on its source: {e}"
        ) from None
      share, source_dir = 1 - source_share, source.workdir
    run_config = arms.mode_config(config, method, source_dir, self.distill_weight)
    # Dropout costs FLOPs, and λ > 0 the source's own loss.
    cost_key = (
      method,
      run_config.model.dropout,
      run_config.small.dropout,
      run_config.lambda_source,
    )
    if cost_key not in self._step_flops:
      self._step_flops[cost_key] = arms.step_flops(run_config, self.data)
    per_step = self._step_flops[cost_key]
    available = share * budget * self.reference
    if available < per_step:
      what = f"budget {budget:g} x reference = {budget * self.reference:.4g} FLOPs"
      if source:
        what = f"the fine-tuning share {share:g} of {what} ({available:.4g} FLOPs)"
      raise ValueError(
        f"{what} buys less than one training step of {method} ({per_step:.4g} FLOPs per "
        f"step); the reference is {self.config.train.num_steps} projectable steps = "
        f"{self.reference:.4g} FLOPs"
      )
    name = "_".join(filter(None, (method, f"b{budget:g}", tuning.tag(settings), f"seed{seed}")))
    return Point(
      method,
      budget,
      budget * self.reference,
      seed,
      arms.scaled(run_config, round(available / per_step)),
      os.path.join(self.workdir, name),
      source,
      settings,
    )


def check_source_shares(shares: tuple[float, ...]) -> None:
  """Raises ValueError unless every share of the budget spent on a source lies in (0, 1)."""
  for share in shares:
    if not 0 < share < 1:
      raise ValueError(f"source_share must lie strictly between 0 and 1, got {share}")


def check_trained_source(
  config: ml_collections.ConfigDict, workdir: str, methods: tuple[str, ...]
) -> None:
  """Raises unless ``workdir`` holds a finished source run that ``config`` can build on."""
  if not os.path.exists(os.path.join(workdir, "eval", "metrics.json")):
    raise FileNotFoundError(
      f"source_workdir={workdir!r} holds no finished run (no eval/metrics.json): train a "
      "source there first (launch/train.py --config.mode=source) or fix the path"
    )
  for method in set(methods) & set(arms.FROM_SOURCE):
    warmstart.check_sources(arms.mode_config(config, method, workdir))
