"""The `rl-jax` command's re-execution under tcmalloc (rl_jax/allocator.py)."""

import os
import subprocess
import sys

import pytest

from rl_jax import allocator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOUND = lambda: "libtcmalloc_minimal.so.4"


def test_preload_environment_adds_tcmalloc_before_an_existing_preload():
  env = allocator.preload_environment({"LD_PRELOAD": "libfoo.so", "PATH": "/bin"}, FOUND, "linux")
  assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4 libfoo.so"
  assert env["PATH"] == "/bin"
  assert env["RL_JAX_MALLOC_ACTIVE"] == "libtcmalloc_minimal.so.4"
  assert int(env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) == 1 << 40
  env = allocator.preload_environment(
    {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": "5"}, FOUND, "linux"
  )
  assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4"
  assert env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] == "5"  # the user's setting wins


@pytest.mark.parametrize(
  "environ, find, platform",
  [
    ({"RL_JAX_MALLOC": "system"}, FOUND, "linux"),  # switched off
    ({"RL_JAX_MALLOC_ACTIVE": "libtcmalloc_minimal.so.4"}, FOUND, "linux"),  # already re-executed
    ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, FOUND, "linux"),  # the user chose an allocator
    ({}, lambda: None, "linux"),  # not installed
    ({}, FOUND, "darwin"),  # LD_PRELOAD is Linux's
  ],
)
def test_preload_environment_leaves_the_process_alone(environ, find, platform):
  assert allocator.preload_environment(environ, find, platform) is None


def test_a_bad_switch_value_is_an_error():
  with pytest.raises(SystemExit, match="RL_JAX_MALLOC must be 'auto' or 'system'"):
    allocator.preload_environment({"RL_JAX_MALLOC": "jemalloc"}, FOUND, "linux")


def test_a_failed_reexecution_goes_on_with_the_system_malloc(monkeypatch, capsys):
  calls = []
  monkeypatch.setattr(
    allocator,
    "preload_environment",
    lambda environ: {"RL_JAX_MALLOC_ACTIVE": "libtcmalloc_minimal.so.4"},
  )

  def failing_execve(*args):
    calls.append(args)
    raise OSError("exec format error")

  monkeypatch.setattr(allocator.os, "execve", failing_execve)
  allocator.reexecute_under_tcmalloc(["config"])  # returns instead of raising
  assert len(calls) == 1 and calls[0][1][-2:] == ["rl_jax.cli", "config"]
  assert "using the system malloc" in capsys.readouterr().err


def _clean_env(**extra):
  env = {
    k: v for k, v in os.environ.items() if not k.startswith("RL_JAX_MALLOC") and k != "LD_PRELOAD"
  }
  env.update(extra)
  return env


@pytest.mark.skipif(
  sys.platform != "linux" or allocator.find_tcmalloc() is None,
  reason="needs tcmalloc (apt install libtcmalloc-minimal4)",
)
def test_the_command_reexecutes_once_under_tcmalloc():
  probe = [sys.executable, "-c", "from rl_jax import allocator; print(allocator.active())"]
  plain = subprocess.run(probe, env=_clean_env(), capture_output=True, text=True, check=True)
  assert plain.stdout.strip() == "system"
  library = allocator.find_tcmalloc()
  preloaded = subprocess.run(
    probe, env=_clean_env(LD_PRELOAD=library), capture_output=True, text=True, check=True
  )
  assert "tcmalloc" in preloaded.stdout

  cmd = [sys.executable, "-m", "rl_jax.cli", "config", "--config=experiments/default.py"]
  run = subprocess.run(cmd, cwd=REPO, env=_clean_env(), capture_output=True, text=True)
  assert run.returncode == 0, run.stderr
  assert run.stderr.count("running under tcmalloc") == 1  # one re-execution, not a loop
  assert '"algorithm"' in run.stdout  # the command still ran
  off = subprocess.run(
    cmd, cwd=REPO, env=_clean_env(RL_JAX_MALLOC="system"), capture_output=True, text=True
  )
  assert off.returncode == 0, off.stderr
  assert "tcmalloc" not in off.stderr
  assert off.stdout == run.stdout
