"""``PointProgress``: the ``point k/N`` lines of experiments and their ETA."""

import pytest

from projectable.experiments.progress import PointProgress


def test_point_progress_eta_is_the_mean_point_time_times_the_points_left():
  now = [0.0]
  progress = PointProgress(5, clock=lambda: now[0])
  assert progress.start(1, "a") == "point 1/5: a (ETA ?)"
  now[0] = 100.0
  assert progress.start(2, "b") == "point 2/5: b (ETA 6:40)"  # 4 left x 100 s.
  now[0] = 150.0
  progress.done()  # Points of 100 s and 50 s: mean 75 s.
  now[0] = 151.0
  assert progress.start(3, "c, reused") == "point 3/5: c, reused (ETA 3:45)"  # 3 x 75 s.
  now[0] = 152.0
  progress.done(timed=False)  # A reused point does not lower the mean.
  assert progress.eta_s(4) == pytest.approx(2 * 75.0)
  assert progress.seconds == [100.0, 50.0]
  # Shards of one frontier: each sees every point, and trains its share of those left.
  shared = PointProgress(5, clock=lambda: now[0], processes=2)
  shared.seconds = [100.0]
  assert shared.eta_s(2) == pytest.approx(4 * 100.0 / 2)


def test_a_resumed_run_counts_only_the_points_it_still_has_to_train():
  # 64 points, 10 of them left to train when two shards resumed; this one has trained 2.
  resumed = PointProgress(64, processes=2, to_train=10)
  resumed.seconds = [300.0, 300.0]
  # (10 - 2 x 2) points left over 2 shards, not (64 - 15 + 1) / 2.
  assert resumed.eta_s(15) == pytest.approx(6 * 300.0 / 2)
  # Near the end the points of the plan bound it, as without to_train.
  assert resumed.eta_s(64) == pytest.approx(1 * 300.0 / 2)
  # Shards slower than this one: at least the point starting is left.
  resumed.seconds = [300.0] * 6
  assert resumed.eta_s(20) == pytest.approx(1 * 300.0 / 2)
