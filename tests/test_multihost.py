"""Multi-process runs (rl_jax/distributed.py) on CPU: two local processes x 4 fake devices,
joined by `jax.distributed` on 127.0.0.1 with gloo collectives, against one process on 8 fake
devices with the same global batch.

One sequence of runs serves every test (module fixture), so the 2-core CI machine pays for it
once:
  single  one process, 8 devices, 6 RL steps, uninterrupted (it also makes the warm start,
          which the other runs load from a copy of its reference/)
  multi   two processes; SIGTERM to process 1 only (not the one that writes logs) after the
          first step is logged; both stop at the same step boundary with a checkpoint and exit
          0; the same command again resumes to step 6
Then: per-step losses and final parameters of `multi` equal `single`'s (1e-5); its checkpoint
restores in this one-device process and on a (data=4, fsdp=2) mesh of 8 devices in another
process with identical parameters, and a one-process run on one device continues it.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6
SMALL = {
  "model.preset": "test",
  "task.max_digits": "2",
  "sft.steps": "100",
  "sft.batch_size": "32",
  "train.steps": str(STEPS),
  "rl.prompts_per_step": "8",  # a multiple of the 8-way batch sharding
  "rl.group_size": "4",
  "eval.every": "0",
  "eval.num_prompts": "16",
  "checkpoint.every": "100",  # only the last step and the signal's checkpoint
  "checkpoint.keep": "5",
  "log.tensorboard": "false",
}
# The data axis as two slices, one per process (the multi-slice layout; here the same order).
MULTI = {"mesh.dcn_data": "2"}
CLI = "import sys; from rl_jax import cli; raise SystemExit(cli.main(sys.argv[1:]))"
TIMEOUT = 600


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir, processes: int, devices: int, overrides=None) -> list[subprocess.Popen]:
  """`rl-jax train` as `processes` local processes with `devices` CPU devices each."""
  flags = [f"--config.{k}={v}" for k, v in {**SMALL, **(overrides or {})}.items()]
  port = _free_port()
  procs = []
  for i in range(processes):
    env = dict(
      os.environ,
      XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
      JAX_PLATFORMS="cpu",
    )
    if processes > 1:
      env.update(
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        JAX_NUM_PROCESSES=str(processes),
        JAX_PROCESS_ID=str(i),
      )
    log = open(f"{workdir}.p{i}.log", "a")  # noqa: SIM115 - closed with the process
    procs.append(
      subprocess.Popen(
        [sys.executable, "-c", CLI, "train", f"--workdir={workdir}", *flags],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
      )
    )
  return procs


def _wait(procs, workdir) -> list[int]:
  codes = []
  for i, p in enumerate(procs):
    try:
      codes.append(p.wait(timeout=TIMEOUT))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail(f"process {i} timed out; see {workdir}.p{i}.log")
  return codes


def _log(workdir, i=0) -> str:
  with open(f"{workdir}.p{i}.log") as f:
    return f.read()


def _rows(workdir) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _params(workdir: str, step: int):
  """The policy parameters of `workdir`'s checkpoint `step`, restored on this process's one
  device (a mesh unlike the writer's)."""
  import ml_collections

  from rl_jax import config as config_lib
  from rl_jax import loop
  from rl_jax.checkpoint import Checkpointer
  from rl_jax.parallel import path_str

  with open(os.path.join(workdir, "config.json")) as f:
    cd = ml_collections.ConfigDict(json.load(f))
  config = config_lib.from_configdict(config_lib.apply_overrides(cd, {"mesh.dcn_data": "1"}))
  exp = loop.Experiment.build(config, devices=jax.devices()[:1])
  params = exp.policy.init_params(config.seed, exp.mesh)
  ckpt = Checkpointer(workdir)
  state, _, meta = ckpt.restore(step, exp.rl_state(params), jax.random.key(config.seed))
  ckpt.close()
  assert meta["step"] == step
  return {
    path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(state.params)[0]
  }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  base = tmp_path_factory.mktemp("multihost")
  single, multi = str(base / "single"), str(base / "multi")

  procs = _launch(single, 1, 8, {"distributed.initialize": "off"})
  assert _wait(procs, single) == [0], _log(single)

  os.makedirs(multi)
  shutil.copytree(os.path.join(single, "reference"), os.path.join(multi, "reference"))
  procs = _launch(multi, 2, 4, MULTI)
  deadline = time.time() + TIMEOUT
  while not _rows(multi) and time.time() < deadline and procs[0].poll() is None:
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)  # one host only: both must stop at the same step
  codes = _wait(procs, multi)
  interrupted = dict(codes=codes, rows=_rows(multi), log0=_log(multi))

  # The same command resumes; the timeouts (resumable) reach jax.distributed.initialize.
  timeouts = {
    "distributed.heartbeat_timeout_s": "60",
    "distributed.initialization_timeout_s": "120",
  }
  procs = _launch(multi, 2, 4, {**MULTI, **timeouts})
  assert _wait(procs, multi) == [0, 0], _log(multi) + _log(multi, 1)
  return dict(single=single, multi=multi, interrupted=interrupted, base=base)


def test_a_signal_to_one_process_stops_both_at_one_step_with_a_checkpoint(runs):
  info = runs["interrupted"]
  assert info["codes"] == [0, 0], info["log0"]
  stopped_at = info["rows"][-1]["step"]
  assert 1 <= stopped_at < STEPS, "the signal came too late to interrupt the run"
  assert f"stopped by a signal on another process after step {stopped_at}" in info["log0"]
  assert "SIGTERM received" in _log(runs["multi"], 1)
  # the checkpoint of the stop, and the resumed run's last step
  steps = sorted(
    int(n) for n in os.listdir(os.path.join(runs["multi"], "checkpoints")) if n.isdigit()
  )
  assert steps == [stopped_at, STEPS]
  assert f"resumed from checkpoint step {stopped_at}" in _log(runs["multi"])


def test_two_processes_compute_what_one_process_on_eight_devices_does(runs):
  one, two = _rows(runs["single"]), _rows(runs["multi"])
  assert [r["step"] for r in two] == list(range(1, STEPS + 1))  # no step lost or repeated
  for a, b in zip(one, two):
    for key in ("loss", "reward_mean", "grad_norm", "response_len_mean"):
      np.testing.assert_allclose(
        b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=f"step {a['step']} {key}"
      )
  assert any(r["grad_norm"] > 0 for r in one), "no step had a learning signal: a vacuous check"
  p1, p2 = _params(runs["single"], STEPS), _params(runs["multi"], STEPS)
  assert p1.keys() == p2.keys()
  for k in p1:
    np.testing.assert_allclose(p2[k], p1[k], rtol=1e-5, atol=1e-6, err_msg=k)
  # only process 0 wrote logs (one header line per launch in its log, none in process 1's)
  assert "rl_jax: grpo on arithmetic" not in _log(runs["multi"], 1)
  assert "rl_jax: joined 2 processes (8 devices, 4 on each host)" in _log(runs["multi"])


def test_the_checkpoint_restores_on_one_device_and_on_another_mesh(runs, tmp_path):
  one_device = _params(runs["multi"], STEPS)
  out = tmp_path / "mesh42.npz"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  cmd = [sys.executable, os.path.join(ROOT, "tests", "multihost_check.py"), "restore"]
  cmd += [runs["multi"], str(STEPS), str(out), "4", "2"]
  done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
  assert done.returncode == 0, done.stdout + done.stderr
  assert "split over fsdp" in done.stdout
  other_mesh = dict(np.load(out))
  assert other_mesh.keys() == one_device.keys()
  for k in one_device:
    np.testing.assert_array_equal(other_mesh[k], one_device[k], err_msg=k)


def test_one_process_on_one_device_continues_the_two_process_run(runs, small_config):
  from rl_jax import loop

  workdir = str(runs["base"] / "continued")
  shutil.copytree(runs["multi"], workdir)
  config = small_config(**{**SMALL, "train.steps": str(STEPS + 1)})
  lines = []
  summary = loop.run(config, workdir, log=lines.append, stream=open(os.devnull, "w"))
  assert f"resumed from checkpoint step {STEPS} in {workdir}/checkpoints" in lines
  assert [r["step"] for r in _rows(workdir)] == list(range(1, STEPS + 2))
  assert summary["after"]["step"] == STEPS + 1


# --- joining: what the config and the environment ask for (no process is started) ---------


def _dist(**kw):
  from rl_jax.config import DistributedConfig

  return DistributedConfig(**kw)


ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "TPU_WORKER_HOSTNAMES")
ENV += ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


@pytest.fixture
def clean_env(monkeypatch):
  for name in ENV:
    monkeypatch.delenv(name, raising=False)
  return monkeypatch


def test_single_process_unless_a_coordinator_or_a_cluster_is_named(clean_env):
  from rl_jax import distributed

  assert distributed.settings(_dist()) is None
  clean_env.setenv("SLURM_NTASKS", "1")  # a one-task job is a single process
  assert distributed.settings(_dist()) is None
  assert distributed.settings(_dist(initialize="on")) == {}  # JAX detects the rest
  clean_env.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.1,10.0.0.2")
  assert distributed.settings(_dist()) == {}
  assert distributed.settings(_dist(initialize="off")) is None


def test_coordinator_from_the_environment_or_the_config(clean_env):
  from rl_jax import distributed

  clean_env.setenv("JAX_COORDINATOR_ADDRESS", "node0:1234")
  clean_env.setenv("JAX_NUM_PROCESSES", "4")
  clean_env.setenv("JAX_PROCESS_ID", "3")
  want = dict(coordinator_address="node0:1234", num_processes=4, process_id=3)
  assert distributed.settings(_dist()) == want
  got = distributed.settings(_dist(coordinator_address="head:99", num_processes=2, process_id=0))
  assert got == dict(coordinator_address="head:99", num_processes=2, process_id=0)
  timeouts = _dist(initialization_timeout_s=600, heartbeat_timeout_s=30)
  assert distributed.settings(timeouts) == dict(
    want, initialization_timeout=600, heartbeat_timeout_seconds=30
  )
  clean_env.delenv("JAX_PROCESS_ID")
  with pytest.raises(ValueError, match="JAX_PROCESS_ID"):
    distributed.settings(_dist())
  clean_env.setenv("JAX_PROCESS_ID", "one")
  with pytest.raises(ValueError, match="JAX_PROCESS_ID='one' is not an integer"):
    distributed.settings(_dist())


def test_bad_distributed_and_dcn_settings_are_config_errors(small_config):
  from rl_jax import config as config_lib

  with pytest.raises(config_lib.ConfigError, match="distributed.initialize"):
    config_lib.validate(small_config(**{"distributed.initialize": "maybe"}))
  with pytest.raises(config_lib.ConfigError, match="distributed.heartbeat_timeout_s"):
    config_lib.validate(small_config(**{"distributed.heartbeat_timeout_s": "-1"}))
  with pytest.raises(config_lib.ConfigError, match="mesh.dcn_data"):
    config_lib.validate(small_config(**{"mesh.dcn_data": "0"}))
  cfg = small_config(**{"mesh.data": "4", "mesh.dcn_data": "3"})
  with pytest.raises(config_lib.ConfigError, match="must divide mesh.data=4"):
    config_lib.validate(cfg, 4)
  assert config_lib.resumable("mesh.fsdp") and config_lib.resumable("distributed.process_id")


def test_one_process_helpers_are_the_plain_operations():
  from rl_jax import distributed

  assert not distributed.is_multiprocess() and distributed.is_primary()
  x = np.arange(6.0).reshape(3, 2)
  assert distributed.row_range(3) == slice(0, 3)
  np.testing.assert_array_equal(distributed.fetch(distributed.put(x, jax.devices()[0])), x)
  calls = []
  out = distributed.split_rows(lambda rows: calls.append(rows) or {"r": x[rows, 0]}, 3)
  assert calls == [slice(0, 3)] and out["r"].tolist() == [0.0, 2.0, 4.0]
  assert distributed.any_process(True) and not distributed.any_process(False)
  distributed.barrier("one process: returns at once")
