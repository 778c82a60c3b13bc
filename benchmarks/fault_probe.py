r"""Issue #32's faults in one scripted probe: each case's exit status and last line.

  PYTHONPATH=. python benchmarks/fault_probe.py            # every case, ~10 min on 2 cores
  PYTHONPATH=. python benchmarks/fault_probe.py --cases=busy_workdir,unknown_field

Each case breaks one thing the way a user or a machine would (a second writer, a
rewind, flipped or truncated weights, changed data, a full disk, a bad config value,
SIGTERM while compiling, ...) on the tiny digits variant, runs the real launcher in a
subprocess and checks its exit status, that its last stderr line names the problem, and
that user errors (status 2) print no traceback. Prints one row per case and exits 1 if
any case does not behave as documented.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
from absl import app, flags
from sklearn import datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config=configs/digits.py:tiny", "--config.samples.num_per_task=1"]


@dataclasses.dataclass
class Outcome:
  status: int
  stderr: str
  seconds: float

  @property
  def last_line(self) -> str:
    lines = self.stderr.strip().splitlines()
    return lines[-1] if lines else ""


def launch(name: str, *argv: str, signal_after: str | None = None) -> Outcome:
  """Runs ``launch/<name>.py argv``; with ``signal_after``, SIGTERMs it once that text is logged."""
  env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
  command = [sys.executable, os.path.join(ROOT, "launch", f"{name}.py"), *argv]
  start = time.time()
  proc = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
  lines = []
  for line in proc.stderr:
    lines.append(line)
    if signal_after and signal_after in line:
      proc.send_signal(signal.SIGTERM)
      signal_after = None
  proc.wait()
  return Outcome(proc.returncode, "".join(lines), time.time() - start)


def trained(scratch: str, name: str, *extra: str) -> str:
  """A finished tiny run in ``scratch/name`` (reused by the cases that damage copies of it)."""
  workdir = os.path.join(scratch, name)
  if not os.path.exists(os.path.join(workdir, "eval", "metrics.json")):
    outcome = launch("train", *TINY, f"--workdir={workdir}", *extra)
    assert outcome.status == 0, outcome.stderr[-3000:]
  return workdir


def copy_of(workdir: str, scratch: str, name: str) -> str:
  target = os.path.join(scratch, name)
  shutil.copytree(workdir, target)
  return target


def _flip(path: str) -> None:
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0xFF]))


def _largest_file(directory: str) -> str:
  files = [p for p in glob.glob(os.path.join(directory, "**"), recursive=True) if os.path.isfile(p)]
  return max(files, key=os.path.getsize)


def case_busy_workdir(scratch: str) -> tuple[Outcome, int, str]:
  workdir, log = os.path.join(scratch, "busy"), os.path.join(scratch, "busy.log")
  with open(log, "w") as f:
    first = subprocess.Popen(
      [
        sys.executable,
        "launch/train.py",
        *TINY,
        f"--workdir={workdir}",
        "--config.train.num_steps=9999",
      ],
      cwd=ROOT,
      env={**os.environ, "PYTHONPATH": ROOT},
      stderr=f,
    )
  while first.poll() is None and "compiling the train step" not in open(log).read():
    time.sleep(0.2)  # By then the first run holds the workdir.
  second = launch("train", *TINY, f"--workdir={workdir}")
  first.kill()
  return second, 2, "in use"


def case_unknown_field(scratch: str) -> tuple[Outcome, int, str]:
  out = launch("train", *TINY, f"--workdir={scratch}/u", "--config.train.foo=1")
  return out, 2, "no such field"


def case_bad_value(scratch: str) -> tuple[Outcome, int, str]:
  out = launch("train", *TINY, f"--workdir={scratch}/b", "--config.train.learning_rate=-1")
  return out, 2, "learning_rate"


def case_checkpoints_not_a_directory(scratch: str) -> tuple[Outcome, int, str]:
  workdir = os.path.join(scratch, "file")
  os.makedirs(workdir)
  open(os.path.join(workdir, "checkpoints"), "w").close()
  return launch("train", *TINY, f"--workdir={workdir}"), 2, "not a writable directory"


def case_truncated_npz(scratch: str) -> tuple[Outcome, int, str]:
  path = os.path.join(scratch, "digits.npz")
  digits = datasets.load_digits()
  np.savez(path, image=digits.images.astype(np.uint8), label=digits.target)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  flags_ = ["--config.data.name=arrays", f"--config.data.path={path}", "--config.data.levels=17"]
  return launch("train", *TINY, f"--workdir={scratch}/npz", *flags_), 2, "digits.npz"


def case_flipped_best(scratch: str) -> tuple[Outcome, int, str]:
  workdir = copy_of(trained(scratch, "base"), scratch, "flipped")
  (step,) = os.listdir(os.path.join(workdir, "best"))
  _flip(_largest_file(os.path.join(workdir, "best", step, "params")))
  out = launch("export", f"--workdir={workdir}", f"--out={scratch}/flipped_out", "--tasks=3")
  return out, 1, "damaged"


def case_truncated_specialist(scratch: str) -> tuple[Outcome, int, str]:
  out_dir = os.path.join(scratch, "spec")
  export = launch(
    "export", f"--workdir={trained(scratch, 'base')}", f"--out={out_dir}", "--tasks=3"
  )
  assert export.status == 0, export.stderr[-3000:]
  weights = _largest_file(os.path.join(out_dir, "3"))
  with open(weights, "r+b") as f:
    f.truncate(os.path.getsize(weights) // 2)
  return launch("sample", f"--specialist={out_dir}/3", f"--out={scratch}/g.png"), 1, "damaged"


def _digits_npz(path: str, invert: bool = False) -> list[str]:
  """Writes digits as an ``arrays`` .npz (inverted: the same shapes, other contents)."""
  digits = datasets.load_digits()
  images = digits.images.astype(np.uint8)
  np.savez(path, image=16 - images if invert else images, label=digits.target)
  return ["--config.data.name=arrays", f"--config.data.path={path}", "--config.data.levels=17"]


def case_changed_data_on_resume(scratch: str) -> tuple[Outcome, int, str]:
  path = os.path.join(scratch, "resume.npz")
  workdir = os.path.join(scratch, "resume")
  first = launch(
    "train", *TINY, f"--workdir={workdir}", "--config.train.num_steps=3", *_digits_npz(path)
  )
  assert first.status == 0, first.stderr[-3000:]
  return launch("train", *TINY, f"--workdir={workdir}", *_digits_npz(path, invert=True)), 2, "fresh"


def case_failed_start_then_fixed(scratch: str) -> tuple[Outcome, int, str]:
  workdir = os.path.join(scratch, "start")
  wrong = launch(
    "train", *TINY, f"--workdir={workdir}", f"--config.init.source_workdir={scratch}/no"
  )
  assert wrong.status == 2, wrong.stderr[-3000:]
  return launch("train", *TINY, f"--workdir={workdir}", "--config.train.num_steps=3"), 0, ""


def case_full_disk(scratch: str) -> tuple[Outcome, int, str]:
  mount = os.path.join(scratch, "tiny_fs")
  os.makedirs(mount)
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", mount]).returncode:
    return (
      Outcome(1, "skipped: mounting a small tmpfs needs root\nCheckpointWriteError", 0.0),
      1,
      "",
    )
  try:
    out = launch("train", *TINY, f"--workdir={mount}/run")
  finally:
    subprocess.run(["umount", mount])
  return out, 1, "CheckpointWriteError"


def case_fresh_race(scratch: str) -> tuple[Outcome, int, str]:
  """Two ``--fresh`` into a workdir holding a run, started together: two new directories."""
  base = trained(scratch, "base")
  env = {**os.environ, "PYTHONPATH": ROOT}
  command = [sys.executable, "launch/train.py", *TINY, f"--workdir={base}", "--fresh"]
  procs = [subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)]
  procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True))
  errs = [p.communicate()[1] for p in procs]
  finished = sorted(glob.glob(f"{base}-*/eval/metrics.json"))
  status = max(p.returncode for p in procs) or (0 if len(finished) == 2 else 1)
  return Outcome(status, errs[-1] + f"\n{len(finished)} new runs: {finished}", 0.0), 0, "2 new"


def case_rewind_new_learning_rate(scratch: str) -> tuple[Outcome, int, str]:
  """restore_step=3 with another learning rate: metrics.json describes the new steps 4-6."""
  workdir = copy_of(trained(scratch, "base"), scratch, "rewind")
  with open(os.path.join(workdir, "eval", "metrics.json")) as f:
    before = f.read()
  flags_ = ["--config.restore_step=3", "--config.train.learning_rate=0.01"]
  out = launch("train", *TINY, f"--workdir={workdir}", *flags_)
  with open(os.path.join(workdir, "eval", "metrics.json")) as f:
    after = f.read()
  aside = os.path.isdir(os.path.join(workdir, "best_set_aside"))
  verdict = f"metrics.json rewritten: {after != before}; old best set aside: {aside}"
  status = out.status or (0 if after != before and aside else 1)
  return (
    Outcome(status, out.stderr + "\n" + verdict, out.seconds),
    0,
    "True; old best set aside: True",
  )


def case_flipped_specialist(scratch: str) -> tuple[Outcome, int, str]:
  out_dir = os.path.join(scratch, "flipspec")
  export = launch(
    "export", f"--workdir={trained(scratch, 'base')}", f"--out={out_dir}", "--tasks=3"
  )
  assert export.status == 0, export.stderr[-3000:]
  _flip(_largest_file(os.path.join(out_dir, "3")))
  return launch("sample", f"--specialist={out_dir}/3", f"--out={scratch}/f.png"), 1, "damaged"


def case_sigterm_while_compiling(scratch: str) -> tuple[Outcome, int, str]:
  out = launch("train", *TINY, f"--workdir={scratch}/term", signal_after="compiling the train")
  return out, 143, ""


CASES: dict[str, Callable[[str], tuple[Outcome, int, str]]] = {
  name[len("case_") :]: fn for name, fn in globals().items() if name.startswith("case_")
}


def main(argv: list[str]) -> None:
  del argv
  names = flags.FLAGS.cases or list(CASES)
  failed = 0
  with tempfile.TemporaryDirectory() as scratch:
    print(f"{'case':<28} {'status':>6} {'want':>4} {'s':>6}  last line")
    for name in names:
      out, want, text = CASES[name](scratch)
      ok = out.status == want and text in out.last_line
      ok &= want != 2 or "Traceback" not in out.stderr
      failed += not ok
      mark = "" if ok else "  <-- FAILED"
      print(
        f"{name:<28} {out.status:>6} {want:>4} {out.seconds:>6.1f}  {out.last_line[:110]}{mark}"
      )
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  flags.DEFINE_list("cases", [], f"Cases to run (default all): {', '.join(CASES)}.")
  app.run(main)
