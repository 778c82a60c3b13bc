"""Launchers end as a person reads them: a user error is one line and exit status 2, no
traceback; a named fault is exit status 1."""

import os
import subprocess
import sys

import jax
import pytest

from projectable.experiments import cli
from projectable.training.checkpoints import CheckpointWriteError, DamagedCheckpointError
from projectable.training.workdir_lock import WorkdirBusyError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
  "override, message",
  [
    ("--config.train.learning_rate=-1", "error: config.train.learning_rate=-1.0 is invalid"),
    ("--config.train.foo=1", "error: --config.train.foo: the config has no such field"),
    ("--config.model.d=abc", "error: flag --config.model.d=abc: invalid literal"),
  ],
)
def test_a_bad_config_value_is_one_line_and_exit_status_2(tmp_path, override, message):
  result = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "launch", "train.py"),
      "--config=" + os.path.join(REPO, "configs", "digits.py") + ":tiny",
      f"--workdir={tmp_path / 'run'}",
      override,
    ],
    capture_output=True,
    text=True,
    env={**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"},
    timeout=120,
    check=False,
  )
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith(message)
  assert "Traceback" not in result.stderr
  assert "Config:" not in result.stderr  # Refused before the config dump.
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize(
  "error, status",
  [
    (DamagedCheckpointError("checkpoint step 6 at /w is damaged"), cli.FAULT),
    (FloatingPointError("non-finite loss=nan at step 3"), cli.FAULT),
    (CheckpointWriteError("could not write a checkpoint in /w/checkpoints"), cli.FAULT),
    (FileExistsError("not overwriting /out/3; pass --overwrite"), cli.USER_ERROR),
    (ValueError("config.train.num_steps=0 is invalid"), cli.USER_ERROR),
    (WorkdirBusyError("/w is in use by another run (pid 7)"), cli.USER_ERROR),
  ],
)
def test_errors_map_to_exit_statuses_with_the_message_last(monkeypatch, capsys, error, status):
  def main(argv):
    raise error

  monkeypatch.setattr(sys, "argv", ["launcher"])
  with pytest.raises(SystemExit) as exit_info:
    cli.run(main)
  assert exit_info.value.code == status
  assert capsys.readouterr().err.strip().splitlines()[-1].endswith(str(error))


def test_launchers_use_a_persistent_compilation_cache_unless_the_environment_names_one(
  monkeypatch, tmp_path
):
  before = jax.config.jax_compilation_cache_dir
  try:
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    cli._use_compilation_cache("~/cache")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
    cli._use_compilation_cache("")  # '' turns it off: the setting stays as it was.
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/named/by/the/environment")
    jax.config.update("jax_compilation_cache_dir", before)
    cli._use_compilation_cache("~/cache")  # The variable wins.
    assert jax.config.jax_compilation_cache_dir == before
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
