"""The sandbox contains hostile programs (each scored as a failure, the caller going on), and the
unit-test reward scores a batch row by row. Most containment cases run twice: with the in-child
audit hook, and without it (`audit_hook=False`) to prove the OS layers hold on their own; the
latter are skipped where this machine lacks the layer they need."""

import os
import resource
import select
import socket
import time

import numpy as np
import pytest

from rl_jax import rewards, sandbox
from rl_jax.components import Component
from rl_jax.tasks.base import Example

LAYERS = sandbox.sandbox_layers()
HOOK = pytest.mark.parametrize("hook", [True, False], ids=["hook", "os-only"])


def _needs(hook: bool, *layers: str):
  if not hook and not any(LAYERS[name] for name in layers):
    pytest.skip(f"no OS layer among {layers} on this machine")


def _sandbox_processes() -> list[int]:
  """Live processes whose command line names a sandbox directory."""
  pids = []
  for name in os.listdir("/proc"):
    try:
      with open(f"/proc/{name}/cmdline", "rb") as f:
        if b"rl_jax_sandbox_" in f.read():
          pids.append(int(name))
    except (OSError, ValueError):
      pass
  return pids


def _fenced(program: str) -> str:
  return f"Here is my solution:\n```python\n{program}\n```\nIt adds numbers."


ADD_TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"


def test_correct_program_passes_and_wrong_one_fails():
  examples = [Example("add", ADD_TESTS), Example("add", ADD_TESTS)]
  completions = [
    _fenced("def add(a, b):\n  return a + b"),
    _fenced("def add(a, b):\n  return a - b"),
  ]
  out = sandbox.python_unit_tests(examples, completions, timeout_s=3)
  assert out["reward"].dtype == np.float32
  assert out["reward"].tolist() == [1.0, 0.0]
  assert out["passed"].tolist() == [True, False]
  assert out["sandbox_timeout"].tolist() == [False, False]


def test_program_and_tests_are_found():
  text = "```python\nx = 1\n```\nthen\n```py\ndef f():\n  return 2\n```\n"
  assert sandbox.extract_program(text) == "def f():\n  return 2\n"  # the last block
  assert sandbox.extract_program("def f(): pass") == "def f(): pass"  # no block: all of it
  program = "def f():\n  return 2"
  meta = [
    Example("", "assert f() == 3", {"tests": "assert f() == 2"}),  # meta wins over answer
    Example("", "assert f() == 2", {"other": 1}),  # meta without the field: the answer
    Example("", "", {"checks": ["assert f() == 2", "assert f() > 1"]}),  # a list, tests_field
  ]
  out = sandbox.python_unit_tests(meta[:2], [program] * 2, timeout_s=3)
  assert out["reward"].tolist() == [1.0, 1.0]
  out = sandbox.python_unit_tests(meta[2:], [program], timeout_s=3, tests_field="checks")
  assert out["reward"].tolist() == [1.0]
  unit = (
    "import unittest\nclass T(unittest.TestCase):\n"
    "  def test_f(self):\n    self.assertEqual(f(), {})\n"
    "assert unittest.main(exit=False).result.wasSuccessful()\n"
  )
  examples = [Example("", unit.format(2)), Example("", unit.format(3))]
  out = sandbox.python_unit_tests(examples, [program] * 2, timeout_s=3)
  assert out["reward"].tolist() == [1.0, 0.0]


def test_the_reward_is_named_from_a_config():
  section = rewards.check(
    (("code", Component.of("rl_jax.sandbox:python_unit_tests", timeout_s="2", workers="1")),)
  )
  fn = rewards.build(section, task=None)
  total, parts = fn([Example("", "assert 1 + 1 == 2")], ["print('hi')"])
  assert total.tolist() == [1.0] and parts["passed"].tolist() == [True]


def test_normal_programs_run_as_main():
  code = (
    "import collections, dataclasses, json, math, re, sys\n"
    "if __name__ == '__main__':\n"
    "  print(json.dumps({'a': math.isqrt(17)}), sys.argv[0].endswith('main.py'))\n"
  )
  r = sandbox.run_python(code, timeout_s=3)
  assert (r.ok, r.returncode, r.reason, r.stdout) == (True, 0, "ok", '{"a": 4} True\n')
  r = sandbox.run_python("def f(:\n", timeout_s=3)  # a syntax error is just a failure
  assert (r.ok, r.reason) == (False, "error") and "SyntaxError" in r.stderr
  r = sandbox.run_python("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)", timeout_s=3)
  assert r.reason == f"killed by signal {int(__import__('signal').SIGTERM)}"


@HOOK
def test_files_outside_the_sandbox_cannot_be_read(tmp_path, hook):
  _needs(hook, "drop_privileges", "landlock_abi")
  secret = tmp_path / "secret.txt"
  secret.write_text("TOPSECRET-42")
  r = sandbox.run_python(f"print(open({str(secret)!r}).read())", timeout_s=3, audit_hook=hook)
  assert not r.ok and "TOPSECRET" not in r.stdout + r.stderr
  assert "PermissionError" in r.stderr


@HOOK
def test_etc_passwd_cannot_be_read(hook):
  _needs(hook, "landlock_abi")
  r = sandbox.run_python("print(open('/etc/passwd').read())", timeout_s=3, audit_hook=hook)
  assert not r.ok and "root:" not in r.stdout and "PermissionError" in r.stderr


@HOOK
def test_files_outside_the_sandbox_cannot_be_written(tmp_path, hook):
  _needs(hook, "drop_privileges", "landlock_abi")
  target = tmp_path / "planted.txt"
  r = sandbox.run_python(f"open({str(target)!r}, 'w').write('x')", timeout_s=3, audit_hook=hook)
  assert not r.ok and not target.exists()


@HOOK
def test_no_connection_reaches_a_local_listener(hook):
  _needs(hook, "user_network_namespaces", "landlock_abi")
  with socket.socket() as server:
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    code = (
      "import socket\n"
      f"s = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
      "s.sendall(b'hello')\nprint('connected')\n"
    )
    r = sandbox.run_python(code, timeout_s=3, audit_hook=hook)
    readable, _, _ = select.select([server], [], [], 0.2)
  assert not r.ok and "connected" not in r.stdout
  assert not readable, "the sandboxed program reached the test's listening socket"


def _gone(pgid: int) -> bool:
  """Whether no process (not even a zombie) is left in process group `pgid`."""
  try:
    os.killpg(pgid, 0)
  except ProcessLookupError:
    return True
  return False


@HOOK
def test_fork_bomb_is_contained(hook):
  if not hook and os.geteuid() == 0 and not LAYERS["drop_privileges"]:
    pytest.skip("root without a sandbox uid: RLIMIT_NPROC would not apply")
  if not hook and not LAYERS["pid_namespace"]:
    pytest.skip("no PID namespace: orphans of the bomb are left to the machine's pid 1 to reap")
  start = time.monotonic()
  r = sandbox.run_python("import os\nwhile True:\n  os.fork()\n", timeout_s=2, audit_hook=hook)
  assert not r.ok and time.monotonic() - start < 2 + 2
  assert "BlockingIOError" in r.stderr or "PermissionError" in r.stderr  # RLIMIT_NPROC / hook
  assert _gone(r.pid)  # the whole process group is gone, zombies included
  assert _sandbox_processes() == []


def test_unbounded_memory_is_contained():
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  start = time.monotonic()
  code = "x = []\nwhile True:\n  x.append(bytearray(10**7))"
  r = sandbox.run_python(code, timeout_s=5, memory_mb=128)
  assert time.monotonic() - start < 5
  assert not r.ok and not r.timed_out and r.reason == "memory"
  grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
  assert grown_mb < 50  # the test process's own peak memory is unaffected


def test_infinite_loop_is_killed_at_the_timeout():
  start = time.monotonic()
  r = sandbox.run_python("while True:\n  pass", timeout_s=1.5)
  elapsed = time.monotonic() - start
  assert r.timed_out and not r.ok and r.reason == "timeout" and r.returncode == -9
  assert 1.5 <= elapsed < 1.5 + 2
  assert _gone(r.pid) and _sandbox_processes() == []


@HOOK
def test_large_files_are_cut_off_and_the_directory_is_removed(hook):
  code = (
    "import os\nprint(os.getcwd(), flush=True)\n"
    "with open('big.bin', 'wb') as f:\n  for _ in range(50):\n    f.write(b'x' * 100_000)\n"
  )
  r = sandbox.run_python(code, timeout_s=3, max_file_bytes=200_000, audit_hook=hook)
  assert not r.ok and r.reason == "error" and "File too large" in r.stderr
  box = r.stdout.strip()
  assert os.path.basename(box).startswith("rl_jax_sandbox_") and not os.path.exists(box)


def test_the_sandbox_directory_has_a_size_limit():
  if not LAYERS["mount_namespace"]:
    pytest.skip("no private mount namespace here: the directory is on the host's disk")
  code = "for i in range(10):\n  open(str(i), 'wb').write(b'x' * 900_000)\nprint('all written')"
  r = sandbox.run_python(code, timeout_s=3, max_disk_bytes=3_000_000)
  assert not r.ok and "No space left on device" in r.stderr and "all written" not in r.stdout


def test_the_directory_is_removed_after_a_timeout():
  r = sandbox.run_python("import os\nprint(os.getcwd(), flush=True)\nwhile True: pass", timeout_s=1)
  assert r.timed_out and not os.path.exists(r.stdout.strip())


def test_stdin_passes_through_and_output_is_capped():
  r = sandbox.run_python("import sys\nprint(sys.stdin.read().upper())", stdin="abc\n" * 10_000)
  assert r.ok and r.stdout == "ABC\n" * 10_000 + "\n"
  r = sandbox.run_python(
    "import sys\nfor _ in range(100):\n"
    "  print('x' * 10_000)\n  print('e' * 10_000, file=sys.stderr)",
    max_output_bytes=1000,
    timeout_s=3,
  )
  assert r.ok and r.stdout == "x" * 1000 and r.stderr == "e" * 1000


def test_the_callers_environment_does_not_leak(monkeypatch):
  monkeypatch.setenv("RL_JAX_TEST_TOKEN", "hunter2")
  r = sandbox.run_python("import os\nprint(dict(os.environ))", timeout_s=3)
  assert r.ok and "hunter2" not in r.stdout and "RL_JAX_TEST_TOKEN" not in r.stdout


def test_a_hostile_batch_scores_row_by_row(tmp_path):
  secret = tmp_path / "secret.txt"
  secret.write_text("TOPSECRET-42")
  tests = "assert add(2, 3) == 5\n"
  good = "def add(a, b):\n  return a + b"
  hostile = [
    f"print(open({str(secret)!r}).read())\n{good}",
    f"import os\nwhile True:\n  os.fork()\n{good}",
    f"while True:\n  pass\n{good}",
    f"x = []\nwhile True:\n  x.append(bytearray(10**7))\n{good}",
    f"import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)\n{good}",
    "import sys\nsys.exit(0)",  # exits 0 before the tests run: no pass
    "import os\nos._exit(0)",
  ]
  completions = [_fenced(good), _fenced("def add(a, b):\n  return 0")]
  completions += [_fenced(h) for h in hostile] + [_fenced(good)]
  examples = [Example("add two numbers", tests)] * len(completions)
  start = time.monotonic()
  out = sandbox.python_unit_tests(examples, completions, timeout_s=2, memory_mb=128)
  assert time.monotonic() - start < 8
  assert out["reward"].tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]
  assert out["sandbox_timeout"].tolist() == [False] * 4 + [True] + [False] * 5
  assert _sandbox_processes() == []
