"""Test setup: 4 fake CPU devices, strict rank promotion and fast, shared compiles, before JAX
starts; the whole suite runs on pytest-xdist workers (``pytest_xdist_auto_num_workers``)."""

import copy
import functools
import importlib.util
import logging
import os
import shutil
import sys
import tempfile

# XLA:CPU's older kernel emitters compile the tests' small steps in about half the time of
# its fusion emitters (the tiny train step: ~2 s against ~4.5 s), and compiling is most of
# the suite's time. Subprocesses inherit these flags, with their own device count.
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "")
  + " --xla_cpu_use_fusion_emitters=false --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Compiling is most of the suite's time. XLA's optimisations off (what the tiny variant's
# train.fast_compile does) halve it; a persistent cache shared by the xdist workers and the
# launcher subprocesses (they inherit these variables) compiles each function once. Only
# compiles over 0.1 s are stored: the thousands of eager ops' compiles (~10 ms each) cost
# more to write and read than to redo (2,204 cache files per suite -> 470).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "projectable-test-jax-cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax
import pytest
from absl import flags

from projectable.experiments.run import train_and_evaluate

jax.config.update("jax_numpy_rank_promotion", "raise")
# Tests build many trainers of the same shapes: reuse compiled executables across them.
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: nothing without the plugin.
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
  """Workers for ``-n auto`` (pyproject's addopts): the whole suite runs on one per core, up to
  4 (compiling is single-threaded); tests picked by path, -k or -m run in this process."""
  if (
    config.args_source != pytest.Config.ArgsSource.TESTPATHS
    or config.option.keyword
    or config.option.markexpr
  ):
    return 0
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return min(4, cores) if cores and cores > 1 else 0


# The files whose tests take longest (compiles, subprocesses), slowest first: run first,
# xdist's per-file scheduling (``--dist loadfile``) ends on short files instead of leaving one
# worker alone with a long one (measured: 2 workers, 565 CPU-s of tests in 326 s of wall).
_SLOW_FILES_FIRST = (
  "test_multidevice.py",
  "test_benchmarks.py",
  "test_train_step.py",
  "test_safety.py",
  "test_wheel.py",
  "test_safety_signals.py",
  "test_export.py",
  "test_compare.py",
  "test_distill.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
  """Orders the slow files first (a stable sort: each file's tests keep their order)."""

  def rank(item: pytest.Item) -> int:
    name = item.path.name
    return _SLOW_FILES_FIRST.index(name) if name in _SLOW_FILES_FIRST else len(_SLOW_FILES_FIRST)

  items.sort(key=rank)


@pytest.fixture(scope="session")
def load_digits():
  """``load_digits(split_seed=0)``: scikit-learn's digits through the real loader (their
  TFDS builder, prepared once), at the digits config's levels and split fractions."""
  from configs import digits
  from projectable import data as data_lib

  @functools.cache
  def load(split_seed: int = 0):
    config = digits.get_config("tiny")
    config.data.split_seed = split_seed
    return data_lib.load(config.data)

  return load


@pytest.fixture(scope="session")
def flip_middle_bytes():
  """``flip_middle_bytes(directory)`` flips 8 bytes in the middle of the largest array file
  Orbax wrote under ``directory``: it still reads without error, so only a checksum tells."""
  import glob

  def flip(directory: str) -> None:
    data_file = max(glob.glob(f"{directory}/**/d/*", recursive=True), key=os.path.getsize)
    with open(data_file, "r+b") as f:
      f.seek(os.path.getsize(data_file) // 2)
      middle = f.read(8)
      f.seek(-8, os.SEEK_CUR)
      f.write(bytes(b ^ 0xFF for b in middle))

  return flip


@pytest.fixture(scope="session")
def saved_states():
  """``saved_states(config, workdir, steps)``: the train states ``config``'s run saved in
  ``workdir`` at ``steps``, as host numpy."""
  from projectable import data as data_lib
  from projectable.training import checkpoints, sharding
  from projectable.training.modes import make_method
  from projectable.training.trainer import Trainer

  def states(config, workdir: str, steps) -> dict[int, dict]:
    data = data_lib.load(config.data)
    mesh = sharding.make_mesh(config.mesh)
    with jax.set_mesh(mesh):
      trainer = Trainer(make_method(config, data), mesh)
      ckpts = checkpoints.Checkpoints(workdir, config.train.keep_checkpoints)
      try:
        return {s: jax.device_get(ckpts.restore_state(trainer.abstract_state, s)) for s in steps}
      finally:
        ckpts.close()

  return states


@pytest.fixture
def tiny_config():
  """The digits ``tiny`` variant on one device, unlocked for per-test overrides."""
  from configs import digits

  config = digits.get_config("tiny")
  config.mesh = "data:1,model:1"
  return config


class _Records(logging.Handler):
  def __init__(self):
    super().__init__(logging.INFO)
    self.records: list[logging.LogRecord] = []

  def emit(self, record):
    self.records.append(record)


@pytest.fixture(scope="session")
def finished_tiny_run(tmp_path_factory):
  """(workdir, metrics, absl's log records at INFO) of a finished ``tiny_config`` run,
  trained once per xdist worker and shared: read it only (``trained_tiny_run`` gives a test
  its own copy)."""
  from configs import digits

  config = digits.get_config("tiny")
  config.mesh = "data:1,model:1"  # As tiny_config.
  workdir = str(tmp_path_factory.mktemp("tiny-run"))
  absl = logging.getLogger("absl")
  handler, level = _Records(), absl.level
  absl.addHandler(handler)
  absl.setLevel(logging.INFO)
  try:
    metrics = train_and_evaluate(config, workdir)
  finally:
    absl.removeHandler(handler)
    absl.setLevel(level)
  return workdir, metrics, handler.records


@pytest.fixture
def trained_tiny_run(finished_tiny_run, tmp_path):
  """``train_and_evaluate(tiny_config, str(tmp_path))`` done: ``tmp_path`` holds a copy of
  one finished ``tiny_config`` run (training is deterministic: the same files a fresh run
  writes); returns that run's metrics. Tests may change the copy freely."""
  workdir, metrics, _ = finished_tiny_run
  shutil.copytree(workdir, tmp_path, dirs_exist_ok=True)
  return copy.deepcopy(metrics)


@pytest.fixture(scope="session")
def source_workdir(tmp_path_factory):
  """A finished tiny ``source`` run (warm starts and distillation teachers); tests that
  move it must put it back."""
  from configs import digits

  config = digits.get_config("tiny")
  config.mesh, config.mode = "data:1,model:1", "source"
  workdir = str(tmp_path_factory.mktemp("source"))
  train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture
def run_launcher(monkeypatch):
  """``run_launcher(name, argv)`` runs ``launch/<name>.py``'s main in-process on ``argv``
  (as sys.argv: config_flags reads its overrides there), then forgets its flags."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def run(name: str, argv: list[str]) -> None:
    spec = importlib.util.spec_from_file_location(
      f"launch_{name}", os.path.join(root, "launch", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    known = set(flags.FLAGS)
    spec.loader.exec_module(module)
    monkeypatch.setattr("sys.argv", [f"{name}.py", *argv])
    try:
      module.main(flags.FLAGS(sys.argv))
    finally:
      for flag in set(flags.FLAGS) - known:
        delattr(flags.FLAGS, flag)

  return run
