"""Meshes of 1 to 8 devices and two processes train the same model (issue #6).

The in-process suite has 4 fake devices, so one subprocess with 8 fake devices
runs every mesh (and a checkpoint moved between meshes) and prints JSON; two
``launch/train.py`` processes with 2 devices each join over localhost (gloo).
"""

import json
import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# data:4,model:2 trains in the FSDP case (the same mesh, more axes sharded); pure data
# parallelism across processes in test_two_processes_train_like_one.
MESHES = ["data:2,model:4"]

# Runs in a fresh interpreter with 8 fake devices; argv[1] is a scratch dir.
WORKER = r"""
import json, logging, os, shutil, sys, tempfile, time
import jax
import numpy as np
import pytest
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update(
  "jax_compilation_cache_dir", os.path.join(tempfile.gettempdir(), "projectable-test-jax-cache")
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
t0 = time.time()
from configs import digits
from projectable.training import checkpoints
from projectable.data import pipeline
from projectable.training import sharding
from projectable.training import loop
from projectable.training import preemption
from projectable import data as data_lib
from projectable.training.modes import make_method
from projectable.training.trainer import Trainer

config = digits.get_config("tiny")
config.train.examples_per_task = 8
data = data_lib.load(config.data)
# The global batches of a 2-process run: each host's part, concatenated on N.
hosts = [pipeline.TaskBatch(data, config.train.batch_tasks, 8, config.seed, i, 2) for i in (0, 1)]

def batch(step):
  parts = [h(step) for h in hosts]
  return {**parts[0], "tokens": np.concatenate([p["tokens"] for p in parts], axis=1)}

def specs(tree):
  flat = jax.tree_util.tree_leaves_with_path(tree)
  return {jax.tree_util.keystr(p): list(x.sharding.spec) for p, x in flat}

out = {"losses": {}, "max_param_diff": {}, "seconds": {}}
reference, trainers = None, {}
for spec in ["data:1", "data:2,model:4"]:
  mesh = sharding.make_mesh(spec)
  with jax.set_mesh(mesh):
    trainer = trainers[spec] = Trainer(make_method(config, data), mesh)
    state = trainer.init_state(jax.random.key(config.seed))
    if spec == "data:2,model:4":
      out["param_specs"] = specs(state["params"])
      out["opt_specs"] = specs(state["opt_state"])
    losses = []
    for step in range(3):
      placed = pipeline.place(batch(step), trainer.batch_shardings)
      state, metrics = trainer.train_step(state, placed)
      losses.append(float(metrics["loss"]))
    params = jax.device_get(state["params"])
  out["losses"][spec] = losses
  if reference is None:
    reference = params
  out["max_param_diff"][spec] = max(
    float(np.max(np.abs(a - b)))
    for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(params), strict=True)
  )
  out["seconds"][spec] = time.time() - t0

# FSDP (source embed over data) with the projected small weights sharded over model.
fsdp = digits.get_config("tiny")
fsdp.train.examples_per_task = 8
fsdp.sharding.rules.update(embed="data", small_heads="model", small_mlp="model")
mesh = sharding.make_mesh("data:4,model:2")
with jax.set_mesh(mesh):
  trainer = Trainer(make_method(fsdp, data), mesh)
  state = trainer.init_state(jax.random.key(fsdp.seed))
  out["fsdp_specs"] = specs(state["params"])
  out["losses"]["fsdp"] = []
  for step in range(3):
    state, metrics = trainer.train_step(state, pipeline.place(batch(step), trainer.batch_shardings))
    out["losses"]["fsdp"].append(float(metrics["loss"]))

universal = digits.get_config("tiny")
universal.mode = "universal"
mesh = sharding.make_mesh("data:2,model:4")
with jax.set_mesh(mesh):
  shardings = Trainer(make_method(universal, data), mesh).param_shardings
out["universal_specs"] = [list(s.spec) for s in jax.tree.leaves(shardings)]

# Save on one device; resume the step-3 checkpoint under data:2,model:4.
logged = []

class Losses(logging.Handler):
  def emit(self, record):
    message = record.getMessage()
    if " loss=" in message:
      logged.append(message)

logging.getLogger("absl").addHandler(Losses())
logging.getLogger("absl").setLevel(logging.INFO)

def run(mesh_spec, workdir):
  trainer = trainers[mesh_spec]  # Compiled above; eval_every only matters to the loop.
  with jax.set_mesh(trainer.mesh):
    ckpts = checkpoints.Checkpoints(workdir, config.train.keep_checkpoints)
    try:
      with preemption.StopRequest() as stop:
        state = loop._train(config, data, trainer, ckpts, workdir, stop)
    finally:
      ckpts.close()
    return jax.device_get(state["params"])

config.train.eval_every = 100  # Evaluate at the end only.
straight, resumed = os.path.join(sys.argv[1], "straight"), os.path.join(sys.argv[1], "resumed")
params_straight = run("data:1", straight)
out["seconds"]["straight"] = time.time() - t0
out["straight_log"], logged[:] = list(logged), []
shutil.copytree(straight, resumed)
# Simulate a crash after the step-3 checkpoint: drop everything written later.
shutil.rmtree(os.path.join(resumed, "checkpoints", "6"))
shutil.rmtree(os.path.join(resumed, "best"))
params_resumed = run("data:2,model:4", resumed)
out["resumed_log"] = list(logged)
out["resume_max_param_diff"] = max(
  float(np.max(np.abs(a - b)))
  for a, b in zip(jax.tree.leaves(params_straight), jax.tree.leaves(params_resumed), strict=True)
)
out["seconds"]["resumed"] = time.time() - t0
print("RESULT " + json.dumps(out))
"""


def _env(devices):
  """A subprocess's environment: ``devices`` fake CPUs and this process's compile cache."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = os.environ["XLA_FLAGS"].replace("device_count=4", f"device_count={devices}")
  env["PYTHONPATH"] = REPO
  env["JAX_COMPILATION_CACHE_DIR"] = jax.config.jax_compilation_cache_dir
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  return env


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
  """The 8-device subprocess's JSON report (run once for the module)."""
  scratch = str(tmp_path_factory.mktemp("multidevice"))
  proc = subprocess.run(
    [sys.executable, "-c", WORKER, scratch],
    cwd=REPO,
    env=_env(8),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-5000:]
  line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT ") :])


def _losses(log_lines):
  """{step: loss} from the console's step lines 'step 3/6 loss=value ...'."""
  out = {}
  for line in log_lines:
    m = re.search(r"\bstep (\d+)/\d+ loss=([-\d.e+]+)", line)
    if m:
      out[int(m.group(1))] = float(m.group(2))
  return out


def test_every_mesh_trains_like_one_device(worker):
  one = worker["losses"]["data:1"]
  assert len(one) == 3 and one[0] != one[2]
  for mesh in MESHES:
    np.testing.assert_allclose(worker["losses"][mesh], one, atol=1e-5, err_msg=mesh)
    assert worker["max_param_diff"][mesh] < 1e-5, mesh


def test_fsdp_and_sharded_small_weights_train_like_one_device(worker):
  np.testing.assert_allclose(worker["losses"]["fsdp"], worker["losses"]["data:1"], atol=1e-5)
  specs = {k: P(*v) for k, v in worker["fsdp_specs"].items()}
  assert specs["['source']['blocks']['w1']"] == P(None, "data", "model")  # (layers, embed, mlp)
  assert specs["['source']['token_embed']"] == P(None, "data")  # (vocab, embed)


def test_parameters_carry_the_rules_shardings(worker):
  specs = {k: P(*v) for k, v in worker["param_specs"].items()}
  replicated = [k for k, v in worker["param_specs"].items() if not any(v)]
  source = "['source']['blocks']"
  assert specs[f"{source}['w1']"] == P(None, None, "model")  # (layers, embed, mlp)
  assert specs[f"{source}['w2']"] == P(None, "model", None)  # (layers, mlp, embed)
  assert specs[f"{source}['wq']"] == P(None, None, "model")  # (layers, embed, heads)
  assert specs[f"{source}['wo']"] == P(None, "model", None)  # (layers, heads, embed)
  assert f"{source}['ln1_scale']" in replicated and "['source']['token_embed']" in replicated
  maps = "['projector']['maps']"
  assert specs[f"{maps}['mlp']['base']"] == P(None, "model", None)
  assert specs[f"{maps}['attn_qk']['base']"] == P(None, "model", None)
  assert f"{maps}['residual']['base']" in replicated  # (embed, None): small side.
  assert "['projector']['task_code']" in replicated
  # Adam's moments of a sharded weight are sharded like it.
  moments = [v for k, v in worker["opt_specs"].items() if k.endswith(f"{source}['w1']")]
  assert moments and all(P(*m) == P(None, None, "model") for m in moments)
  # The small (universal) model is replicated whatever the mesh.
  assert all(not any(spec) for spec in worker["universal_specs"])


def test_checkpoint_saved_on_one_mesh_resumes_on_another(worker):
  straight, resumed = _losses(worker["straight_log"]), _losses(worker["resumed_log"])
  assert sorted(straight) == [1, 2, 3, 4, 5, 6]
  assert sorted(resumed) == [4, 5, 6]  # Restored step 3, not restarted.
  for step in resumed:
    np.testing.assert_allclose(resumed[step], straight[step], rtol=2e-5, err_msg=step)
  assert worker["resume_max_param_diff"] < 1e-5


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes(flags: list[str]) -> tuple[list[int], list[str]]:
  """Runs ``launch/train.py flags`` as processes 0 and 1 of one job: (exit codes, logs)."""
  job = [f"--coordinator=127.0.0.1:{_free_port()}", "--num_processes=2"]
  procs = [
    subprocess.Popen(
      [sys.executable, "launch/train.py", *flags, *job, f"--process_id={i}"],
      cwd=REPO,
      env=_env(2),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in (0, 1)
  ]
  try:
    logs = [p.communicate(timeout=600)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return [p.returncode for p in procs], logs


def test_two_processes_train_like_one(worker, tmp_path):
  """Two launch/train.py processes of 2 devices each: the losses of one 4-device process."""
  # Three steps: the first three losses depend only on the warmup learning rates, which
  # do not depend on num_steps, so they match the worker's (num_steps=6) losses.
  flags = [
    "--config=configs/digits.py:tiny",
    "--config.mesh=data:4",
    "--config.train.examples_per_task=8",
    "--config.train.num_steps=3",
    "--config.train.eval_every=100",
    "--config.samples.num_per_task=1",
    "--logtostderr",
  ]
  # On CPU, gloo waits only 30 s in a collective for the other process: where one process
  # lags the other that long while compiling (a busy machine), the first attempt fails
  # naming gloo's deadline; its compilations are in the shared cache, so the second
  # attempt compiles nothing and the two processes meet in time.
  for attempt in (1, 2):
    workdir = str(tmp_path / f"run{attempt}")
    codes, logs = _two_processes([*flags, f"--workdir={workdir}"])
    if not any("Gloo context initialization failed" in log for log in logs):
      break
  for i, (code, log) in enumerate(zip(codes, logs, strict=True)):
    assert code == 0, f"process {i}:\n{log[-5000:]}"
    assert f"process {i} of 2; 2 local of 4 devices" in log, log[-3000:]
  losses = _losses(logs[0].splitlines())
  assert sorted(losses) == [1, 2, 3]
  expected = worker["losses"]["data:1"]  # Every mesh's, as the first test checks.
  np.testing.assert_allclose([losses[s] for s in (1, 2, 3)], expected, rtol=2e-5)
  assert _losses(logs[1].splitlines()) == losses  # Process 1 logs the same global loss.
  # Only process 0 writes metric files.
  events = [f for f in os.listdir(workdir) if f.startswith("events.out.tfevents")]
  assert len(events) == 1
  assert os.path.exists(os.path.join(workdir, "eval", "metrics.json"))
