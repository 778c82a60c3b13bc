"""The wheel: built from the sources, installed into a fresh virtual environment, and its
commands (not the checkout's code) train a tiny run, export, sample and refuse bad input.

No network: the wheel is built with this environment's setuptools (no build isolation)
and installed without dependencies into a venv that sees this environment's packages
through a ``.pth`` line, which adds them after the venv's own site-packages and does not
run this environment's editable-install hook, so ``import projectable`` is the wheel's.
"""

import glob
import json
import os
import shutil
import site
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
tomllib = pytest.importorskip("tomllib")  # Python 3.11+.
with open(os.path.join(REPO, "pyproject.toml"), "rb") as _f:
  SCRIPTS = tomllib.load(_f)["project"]["scripts"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
  """A wheel built from a copy of what the package is made of."""
  src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
  for name in ("pyproject.toml", "README.md", "LICENSE"):
    shutil.copy(os.path.join(REPO, name), src)
  for name in ("projectable", "configs"):
    shutil.copytree(
      os.path.join(REPO, name), src / name, ignore=shutil.ignore_patterns("__pycache__")
    )
  build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
  subprocess.run([*build, "--no-index", "-w", str(out), str(src)], check=True, timeout=300)
  (path,) = glob.glob(str(out / "projectable-*.whl"))
  return path


@pytest.fixture(scope="module")
def env(wheel, tmp_path_factory) -> dict:
  """A fresh venv with the wheel installed: its bin directory, python and a run helper."""
  root = tmp_path_factory.mktemp("venv")
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
  python = str(root / "bin" / "python")
  purelib = subprocess.run(
    [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
    capture_output=True,
    text=True,
    check=True,
  ).stdout.strip()
  with open(os.path.join(purelib, "_projectable_test_deps.pth"), "w") as f:
    f.write("\n".join(site.getsitepackages()) + "\n")
  # Nothing of the checkout on sys.path, for pip (which would see its package as installed)
  # and the commands alike.
  environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  install = [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps"]
  subprocess.run([*install, "--no-index", wheel], check=True, timeout=300, env=environ)
  cwd = tmp_path_factory.mktemp("cwd")  # Outside the checkout.
  # One device, as a plain install has; conftest's compile flag kept.
  environ["XLA_FLAGS"] = os.environ["XLA_FLAGS"].replace(
    "--xla_force_host_platform_device_count=4", ""
  )
  environ["JAX_PLATFORMS"] = "cpu"

  def run(command: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
      [str(root / "bin" / command), *args],
      cwd=cwd,
      env=environ,
      capture_output=True,
      text=True,
      timeout=600,
      check=False,
    )

  return {"root": str(root), "purelib": purelib, "run": run, "cwd": cwd}


def test_the_wheel_ships_every_package_its_configs_commands_license_and_py_typed(wheel):
  names = set(zipfile.ZipFile(wheel).namelist())
  for init in glob.glob(os.path.join(REPO, "projectable", "**", "__init__.py"), recursive=True):
    assert os.path.relpath(init, REPO) in names  # pyproject lists packages by hand.
  for name in ("digits", "fashion_mnist"):
    assert f"projectable/configs/{name}.py" in names
  assert "projectable/py.typed" in names
  assert not any(n.startswith(("configs/", "tests/", "launch/")) for n in names)
  dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/RECORD"))
  assert any(n.startswith(dist_info) and n.endswith("LICENSE") for n in names)
  entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
  for script, target in SCRIPTS.items():
    assert f"{script} = {target}" in entry_points


def test_the_venv_imports_the_wheels_copy_and_its_configs(env):
  result = env["run"](
    "python",
    "-c",
    "import projectable; from projectable.experiments import config_names; "
    "print(projectable.__file__); print(config_names.resolve('digits'))",
  )
  assert result.returncode == 0, result.stderr[-2000:]
  module, config = result.stdout.split()
  assert module.startswith(env["purelib"]) and config.startswith(env["purelib"])
  assert not module.startswith(REPO)


def test_commands_train_export_and_sample_and_refuse_bad_input(env, tmp_path):
  run, workdir, out = env["run"], tmp_path / "run", tmp_path / "out"
  train = run("projectable-train", "--config=digits:tiny", f"--workdir={workdir}")
  assert train.returncode == 0, train.stderr[-3000:]
  with open(workdir / "eval" / "metrics.json") as f:
    assert json.load(f)["mode"] == "projectable"
  assert os.listdir(workdir / "best") and os.path.isdir(workdir / "export" / "3")

  export = run("projectable-export", f"--workdir={workdir}", f"--out={out}", "--tasks=3,0")
  assert export.returncode == 0, export.stderr[-3000:]
  assert sorted(os.listdir(out)) == ["0", "3"]
  assert os.path.isfile(out / "3" / "config.json") and os.path.isdir(out / "3" / "params")
  assert "3: " in export.stdout and "test bits/dim" in export.stdout
  assert "orbax" not in export.stderr  # ~300 INFO lines before the log filter.

  again = run("projectable-export", f"--workdir={workdir}", f"--out={out}", "--tasks=3")
  assert again.returncode == 2
  assert again.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "--overwrite" in again.stderr and "Traceback" not in again.stderr

  grid = tmp_path / "source3.png"
  sample = run(
    "projectable-sample",
    f"--workdir={workdir}",
    "--task=3",
    "--model=source",
    "--num=4",
    f"--out={grid}",
  )
  assert sample.returncode == 0, sample.stderr[-3000:]
  assert grid.stat().st_size > 0

  bad = run(
    "projectable-train",
    "--config=digits:tiny",
    f"--workdir={tmp_path / 'bad'}",
    "--config.train.learning_rate=-1",
  )
  assert bad.returncode == 2
  lines = [line for line in bad.stderr.strip().splitlines() if line.startswith("error:")]
  assert lines == ["error: config.train.learning_rate=-1.0 is invalid: must be a finite number > 0"]
  assert "Traceback" not in bad.stderr and not os.path.exists(tmp_path / "bad")
