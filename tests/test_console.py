"""What a run shows: its console lines and its TensorBoard events (one tiny run), and the
arithmetic behind its steps/s and ETA."""

import glob
import math
import re

import numpy as np
import optax
import pytest
from absl import logging as absl_logging
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from projectable.training import console, step_log


@pytest.fixture(scope="module")
def tiny_run(finished_tiny_run):
  """(console lines as absl prints them, workdir, config) of a tiny projectable run (the
  worker's shared one, trained by conftest with absl's records kept)."""
  from configs import digits

  config = digits.get_config("tiny")
  config.mesh = "data:1,model:1"  # finished_tiny_run's config.
  workdir, _, records = finished_tiny_run
  formatter = absl_logging.PythonFormatter()
  ours = [r for r in records if "/projectable/" in r.pathname]
  lines = [line for r in ours for line in formatter.format(r).splitlines()]
  return lines, workdir, config


def test_console_is_one_short_line_per_step_evaluation_and_artifact(tiny_run):
  lines, _, config = tiny_run
  assert max(len(line) for line in lines) <= 200, max(lines, key=len)
  messages = [line.split("] ", 1)[1] for line in lines]
  total = config.train.num_steps
  step_lines = [m for m in messages if re.match(rf"step \d+/{total} loss=", m)]
  assert [int(m.split()[1].split("/")[0]) for m in step_lines] == list(range(1, total + 1))
  for m in step_lines:
    assert re.fullmatch(
      r"step \d+/\d+ loss=\S+ bits/dim=\d+\.\d{4} lr=\S+ steps/s=\S+ ETA \S+", m
    ), m
  compiling = messages.index(next(m for m in messages if m.startswith("compiling the train step")))
  assert compiling < messages.index(step_lines[0])
  evals = [m for m in messages if m.startswith("eval step ")]
  assert [m.split()[2] for m in evals] == ["3/6:", "6/6:"]  # eval_every=3: one line each.
  assert all("best val" in m for m in evals)
  assert not any("bits_per_dim/" in m for m in messages)  # Per-task values: TensorBoard only.
  for artifact in ("eval/metrics.json", "eval/bits_per_dim.png", "samples/", "export/"):
    assert any(m.startswith(f"wrote {artifact}") for m in messages), artifact
  # Slow end-of-run work is announced before it starts.
  assert messages.index(next(m for m in messages if m.startswith("sampling "))) < messages.index(
    next(m for m in messages if m.startswith("wrote samples/"))
  )
  assert any(m.startswith("emitting and scoring 10 specialists") for m in messages)


def _events(workdir: str) -> event_accumulator.EventAccumulator:
  (path,) = glob.glob(f"{workdir}/events.out.tfevents.*")
  acc = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
  acc.Reload()
  return acc


def test_tensorboard_has_the_schedule_config_parameters_and_samples(tiny_run):
  _, workdir, config = tiny_run
  acc = _events(workdir)
  tags = acc.Tags()["tensors"]
  plugin = {t: acc.SummaryMetadata(t).plugin_data.plugin_name for t in tags}
  scalars = {t for t, p in plugin.items() if p == "scalars"}
  assert all(t.split("/")[0] in ("train", "val", "test", "params") for t in scalars), scalars
  assert [t for t in tags if "steps_per" in t] == ["train/steps_per_s"]
  train = config.train
  # optax's warmup-cosine: the step computes the same schedule from its traced inputs.
  schedule = optax.warmup_cosine_decay_schedule(
    train.learning_rate / (train.warmup_steps + 1),
    train.learning_rate,
    train.warmup_steps,
    train.num_steps,
    end_value=0.0,
  )
  logged = {
    e.step: float(tensor_util.make_ndarray(e.tensor_proto))
    for e in acc.Tensors("train/learning_rate")
  }
  assert sorted(logged) == list(range(1, train.num_steps + 1))
  np.testing.assert_allclose(
    [logged[s] for s in sorted(logged)],
    [float(schedule(s - 1)) for s in sorted(logged)],
    rtol=1e-6,  # float32
  )
  assert max(logged.values()) == pytest.approx(train.learning_rate)  # Warmup reached the peak.
  assert plugin["config"] == plugin["parameters"] == "text"
  assert "_hparams_/session_start_info" in tags
  total = float(tensor_util.make_ndarray(acc.Tensors("params/total")[0].tensor_proto))
  parts = [
    float(tensor_util.make_ndarray(acc.Tensors(f"params/{p}")[0].tensor_proto))
    for p in (
      "source",
      "projector",
    )
  ]
  assert total == sum(parts) > 0  # The trained weights: the source and the projector.
  images = acc.Tensors("samples")
  assert plugin["samples"] == "images" and [e.step for e in images] == [3, 6]
  width, height = (int(v) for v in tensor_util.make_ndarray(images[0].tensor_proto)[:2])
  assert height == 10 * (8 * 4 + 1) - 1 and width == 4 * (8 * 4 + 1) - 1  # 10 tasks x 4.


def test_format_duration():
  assert [console.format_duration(s) for s in (4.4, 59.6, 123, 3723)] == [
    "4s",
    "1:00",
    "2:03",
    "1:02:03",
  ]
  assert console.format_duration(math.inf) == console.format_duration(-1) == "?"


def test_throughput_rate_and_eta_from_the_mean_pace():
  now = [10.0]
  t = console.Throughput(total=100, clock=lambda: now[0])
  t.mark(1)  # Step 1 (compilation included) finished at t=10.
  now[0] = 20.0
  rate, eta = t.update(11)  # 10 steps in 10 s.
  assert rate == pytest.approx(1.0) and eta == pytest.approx(89.0)
  now[0] = 25.0
  rate, eta = t.update(31)  # 20 steps in 5 s; the mean pace is 30 steps in 15 s.
  assert rate == pytest.approx(4.0) and eta == pytest.approx(69 * 0.5)
  now[0] = 26.0
  assert t.update(100)[1] == 0.0


class _Writer:
  def __init__(self):
    self.steps: list[int] = []

  def write_scalars(self, step, scalars):
    self.steps.append(step)


def test_a_log_step_is_read_after_the_next_step_unless_it_must_be_read_now(tiny_config):
  writer = _Writer()
  log = step_log.StepLog(tiny_config.train, writer, lambda count: 1e-3)
  metrics = {"loss": np.float32(2.0), "nll": np.float32(1.0)}
  log.log(1, metrics, now=False)
  assert writer.steps == []  # Held back: reading it would wait for step 1.
  log.flush()  # After step 2 was dispatched.
  assert writer.steps == [1]
  log.log(3, metrics, now=True)  # E.g. a checkpoint step: its state is checked first.
  assert writer.steps == [1, 3]
  with pytest.raises(FloatingPointError, match="non-finite loss=nan at step 4"):
    log.log(4, {**metrics, "loss": np.float32("nan")}, now=True)
