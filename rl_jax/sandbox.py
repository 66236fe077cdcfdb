"""Run untrusted Python (a model's output) in a contained subprocess, and a unit-test reward.

Threat model: the code is whatever a policy wrote: wrong, hostile or both. It may loop forever,
allocate without bound, fork without bound, write huge files, print without end, open sockets,
read the host's files (keys, datasets, the trainer's own code) or kill processes. None of it may
stop the run or reach anything outside a throwaway directory; every such program scores as a
failure and the caller goes on with the next one. `run_python` never raises for anything the
code does; `python_unit_tests` is the reward built on it.

Layers, outermost first (each one on its own where it works; a probe on first use finds out
which work here and silently leaves out the ones that do not, see `sandbox_layers()`):

* Process: a fresh `python -I -S -B -X utf8` (no user site, no PYTHON* variables, no script
  directory on sys.path) with a minimal environment, in its own session and process group;
  the user code reaches it as a file in the sandbox directory, never as an argument. When the
  program exits or the wall clock (`timeout_s`) runs out, the whole process group gets SIGKILL,
  and (with a sandbox uid) every process of that uid, which catches children that left the
  group with setsid(). Output is read with a cap (`max_output_bytes` per stream; the rest is
  drained and dropped, so a chatty program costs the caller no memory).
* Directory: a private `tempfile.mkdtemp` directory is the cwd, HOME and TMPDIR, and is
  deleted afterwards (also after a timeout). With the mount layer (below) it is a tmpfs of
  `max_disk_bytes` (default 64 MB, 10 000 inodes), so a program cannot fill the disk with many
  files each under RLIMIT_FSIZE.
* Resource limits (setrlimit in `preexec_fn`): RLIMIT_AS = memory_mb, RLIMIT_CPU =
  ceil(timeout_s) + 1 s, RLIMIT_NPROC = max_processes, RLIMIT_FSIZE = max_file_bytes,
  RLIMIT_NOFILE = 64, RLIMIT_CORE = 0.
* Unprivileged uid (only when the caller is root, where RLIMIT_NPROC is not enforced and root
  owns most files): each concurrent sandbox gets its own uid from a range no account uses
  (`_UID_BASE`), so RLIMIT_NPROC counts only its processes and sandboxes cannot signal or
  ptrace each other. Before dropping privileges, the child gets a private mount namespace
  (propagation made private first, so nothing reaches the host's mount table): the sandbox
  directory's tmpfs, and if the interpreter sits below a directory that uid cannot enter
  (pyenv under /root, mode 700), a small tmpfs over that directory with the interpreter's
  prefix bind-mounted back at its own path (the rest of that directory stays hidden).
* Namespaces: new user + network + PID namespaces (`unshare(CLONE_NEWUSER | CLONE_NEWNET |
  CLONE_NEWPID)`). A new network namespace has only a loopback interface, which is down: no
  socket reaches the host or the internet. In the PID namespace the prelude's first fork is
  pid 1, a reaper that runs the program as pid 2 and exits when it does; the kernel then kills
  and reaps everything left in the namespace. So nothing outlives the program, not even as a
  zombie (this matters where the machine's pid 1 never reaps orphans, as in many containers).
* Landlock (Linux >= 5.13, unprivileged): the filesystem is reduced to reading the Python
  prefix and the system's libraries (/usr, /lib*), executing only the interpreter and its ELF
  loader, /dev/null, /dev/urandom, and full access to the sandbox directory; TCP bind/connect
  are denied (ABI >= 4) and signals / abstract unix sockets are scoped to the sandbox
  (ABI >= 6). This is what keeps /etc/passwd and the caller's files out of reach at the
  OS level.
* Audit hook (inside the child, before the user code): `sys.addaudithook` raising
  PermissionError on socket.* events, opening for writing outside the sandbox directory,
  opening for reading outside the sandbox directory and the stdlib (site-packages excluded),
  listing such directories, modifying paths outside the sandbox, symlinks and hard links,
  process creation (os.system, os.exec*, os.spawn*, os.fork, os.forkpty, os.posix_spawn,
  subprocess.Popen, importing _posixsubprocess), signals to other processes, setrlimit and
  ctypes.* (so ctypes cannot even be imported). Belt and braces only: an audit hook is NOT a
  security boundary on its own (Python code can reach the hook's state through introspection),
  which is why the layers above, enforced by the kernel, are the real containment.

Not contained: CPU time shared with the caller (bounded by the timeout; `workers` sandboxes run
at once), the page cache and disk bandwidth of writes inside the sandbox directory, side
channels, and kernel bugs. Where a layer is unavailable (not Linux, no root for the uid, user
namespaces or Landlock disabled) the others still apply; `sandbox_layers()` says which apply.

`python_unit_tests` is a reward for the registry (`rl_jax.rewards`):

  rewards.code.name=rl_jax.sandbox:python_unit_tests
  rewards.code.timeout_s=5.0                   per program, wall clock
  rewards.code.memory_mb=512                   address-space limit
  rewards.code.tests_field=tests               the unit tests: example.meta[tests_field]
  rewards.code.workers=2                       sandboxes run at once

Defaults: timeout 5 s, 512 MiB of address space, 32 processes, 64 000 bytes of output per
stream, files up to 1 MB, 64 open files.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import math
import os
import re
import resource
import secrets
import selectors
import shutil
import signal
import stat
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_UID_BASE = 1_900_000_000  # sandbox uids (and gids): _UID_BASE + slot, root callers only
_UID_SLOTS = 4096  # handed out round-robin, so a slot is reused as late as possible
_NOFILE = 64
_DIR_PREFIX = "rl_jax_sandbox_"

_CLONE_NEWNS, _CLONE_NEWUSER, _CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
_CLONE_NEWPID = 0x20000000
_MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_REC, _MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18
_PR_SET_NO_NEW_PRIVS = 38
_SYS_LANDLOCK = (444, 445, 446)  # create_ruleset, add_rule, restrict_self (x86_64, arm64)


@dataclasses.dataclass(frozen=True)
class SandboxResult:
  ok: bool  # exited 0 within the time limit
  returncode: int | None  # None: it never started (or was not reaped)
  stdout: str  # at most max_output_bytes of it (utf-8, undecodable bytes replaced)
  stderr: str
  timed_out: bool  # killed at the wall-clock limit
  reason: str  # "ok", "timeout", "memory", "error", "cpu limit", "killed by signal N", ...
  pid: int | None = None  # the host pid of the sandbox's first process (and its process group)


@dataclasses.dataclass(frozen=True)
class _Layers:
  """The OS layers in use (found once by `_probe`)."""

  drop_privileges: bool = False  # setgid/setuid to a sandbox uid (root callers)
  mounts: bool = False  # a private mount namespace (root callers, with drop_privileges)
  cover: str | None = None  # the directory a tmpfs covers so that uid reaches the interpreter
  namespaces: int = 0  # unshare flags: CLONE_NEWUSER | CLONE_NEWNET (| CLONE_NEWPID)
  landlock_abi: int = 0  # 0: no Landlock


def sandbox_layers() -> dict[str, object]:
  """The OS layers this machine gives sandboxes (the audit hook and rlimits always apply)."""
  layers = _probe()
  return {
    "rlimits": True,
    "audit_hook": True,
    "drop_privileges": layers.drop_privileges,
    "mount_namespace": layers.mounts,
    "user_network_namespaces": bool(layers.namespaces),
    "pid_namespace": bool(layers.namespaces & _CLONE_NEWPID),
    "landlock_abi": layers.landlock_abi,
  }


def run_python(
  code: str,
  *,
  stdin: str = "",
  timeout_s: float = 5.0,
  memory_mb: int = 512,
  max_processes: int = 32,
  max_output_bytes: int = 64_000,
  max_file_bytes: int = 1_000_000,
  max_disk_bytes: int = 64_000_000,
  audit_hook: bool = True,
) -> SandboxResult:
  """Run `code` as `__main__` in a fresh sandboxed interpreter (see the module docstring) with
  `stdin` as its standard input. Never raises for what the code does. `max_disk_bytes` bounds
  the sandbox directory where it can be a tmpfs of its own (the mount namespace layer);
  `audit_hook=False` leaves out the in-process hook, to test the OS layers on their own."""
  limits = _Limits(
    timeout_s, memory_mb, max_processes, max_output_bytes, max_file_bytes, max_disk_bytes
  )
  return _run(code, stdin, limits, _probe(), audit_hook)


# ----------------------------------------------------------------------------------------------
# The reward.

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_program(completion: str) -> str:
  """The last ```python fenced block of `completion`, else the whole text."""
  blocks = _FENCE.findall(completion)
  return blocks[-1] if blocks else completion


def _tests_of(example, tests_field: str) -> str:
  meta = getattr(example, "meta", None)
  tests = meta[tests_field] if isinstance(meta, Mapping) and tests_field in meta else None
  if tests is None:
    tests = example.answer
  if isinstance(tests, list | tuple):  # a list of assert statements
    tests = "\n".join(str(t) for t in tests)
  return str(tests)


def python_unit_tests(
  examples,
  completions,
  *,
  timeout_s: float = 5.0,
  memory_mb: int = 512,
  tests_field: str = "tests",
  workers: int = 2,
) -> dict[str, np.ndarray]:
  """Reward 1.0 for a completion whose program passes its unit tests in the sandbox, else 0.0.

  The program is the last ```python block of the completion (else its whole text); the tests
  are `example.meta[tests_field]` when meta is a mapping holding it (a string, or a list of
  statements), else `example.answer`. The program, then the tests, run in `run_python` (one
  module, so the tests see the program's names); the row passes when the tests ran to their
  end without an error. Rows run `workers` at a time. Returns float32 "reward", bool "passed"
  and bool "sandbox_timeout", each [N].

  "Ran to their end" is checked with an exit status drawn at random per row (3..122) that a
  statement after the tests exits with, rather than with status 0: a program that exits with
  status 0 before the tests run (`sys.exit(0)`, `os._exit(0)`) would otherwise pass. So tests
  must not end the process themselves: instead of `unittest.main()`, end them with
  `assert unittest.main(exit=False).result.wasSuccessful()`."""
  if len(examples) != len(completions):
    raise ValueError(f"{len(examples)} examples for {len(completions)} completions")

  def one(i: int) -> tuple[bool, bool]:
    status = 3 + secrets.randbelow(120)
    tests = _tests_of(examples[i], tests_field)
    source = _with_tests(extract_program(completions[i]), tests, status)
    result = run_python(source, timeout_s=timeout_s, memory_mb=memory_mb)
    return result.returncode == status and not result.timed_out, result.timed_out

  n = len(completions)
  with ThreadPoolExecutor(max_workers=max(1, min(workers, n or 1))) as pool:
    results = list(pool.map(one, range(n)))
  passed = np.array([p for p, _ in results], bool).reshape(n)
  return {
    "reward": passed.astype(np.float32),
    "passed": passed,
    "sandbox_timeout": np.array([t for _, t in results], bool).reshape(n),
  }


def _with_tests(program: str, tests: str, status: int) -> str:
  """`program`, then `tests` (one module: the tests see the program's names), then an exit with
  `status` (plain statements: nothing the program could monkeypatch away)."""
  return f"{program}\n\n{tests}\n\nraise SystemExit({status})\n"


# ----------------------------------------------------------------------------------------------
# One run.


@dataclasses.dataclass(frozen=True)
class _Limits:
  timeout_s: float
  memory_mb: int
  max_processes: int
  max_output_bytes: int
  max_file_bytes: int
  max_disk_bytes: int = 64_000_000

  def rlimits(self) -> list[tuple[int, int, int]]:
    """(resource, soft, hard), each at most the caller's own hard limit (only root may raise
    one)."""
    cpu = math.ceil(self.timeout_s) + 1
    mem = int(self.memory_mb) * 1024 * 1024
    wanted = [
      (resource.RLIMIT_CORE, 0, 0),
      (resource.RLIMIT_AS, mem, mem),
      (resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU, then SIGKILL a second later
      (resource.RLIMIT_FSIZE, self.max_file_bytes, self.max_file_bytes),
      (resource.RLIMIT_NOFILE, _NOFILE, _NOFILE),
      (resource.RLIMIT_NPROC, self.max_processes, self.max_processes),
    ]
    out = []
    for res, soft, hard in wanted:
      cap = resource.getrlimit(res)[1]
      if cap != resource.RLIM_INFINITY and os.geteuid() != 0:
        soft, hard = min(soft, cap), min(hard, cap)
      out.append((res, soft, hard))
    return out


def _run(code: str, stdin: str, limits: _Limits, layers: _Layers, audit_hook: bool):
  uid = box = None
  try:
    uid = _uids.acquire() if layers.drop_privileges else None
    box = tempfile.mkdtemp(prefix=_DIR_PREFIX)
    main, prelude = os.path.join(box, "main.py"), os.path.join(box, ".prelude.py")
    pid_namespace = bool(layers.namespaces & _CLONE_NEWPID)
    files = ((main, code), (prelude, _prelude(box, main, audit_hook, pid_namespace)))
    for path, text in files:  # (with the mount layer, the child writes them into its tmpfs)
      with open(path, "w", encoding="utf-8") as f:
        f.write(text)
      os.chmod(path, 0o644)
    if uid is not None:
      os.chown(box, uid, uid)
    return _execute(box, prelude, stdin, limits, layers, uid, files)
  except Exception as e:  # the sandbox could not start: a failure, never the caller's crash
    return SandboxResult(False, None, "", f"{type(e).__name__}: {e}", False, "launch failed")
  finally:
    if uid is not None:
      _kill_uid(uid)  # (the run already did; again in case it never got that far)
    if box is not None:
      shutil.rmtree(box, ignore_errors=True)
    if uid is not None:
      _uids.release(uid)


def _execute(box, prelude, stdin, limits: _Limits, layers: _Layers, uid, files) -> SandboxResult:
  env = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": box,
    "TMPDIR": box,
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
  }
  preexec = _preexec(limits.rlimits(), layers, uid, box, files, limits.max_disk_bytes)
  proc = subprocess.Popen(
    [_interpreter(), "-I", "-S", "-B", "-X", "utf8", prelude],
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    cwd=box,
    env=env,
    close_fds=True,
    start_new_session=True,
    preexec_fn=preexec,
  )
  deadline = time.monotonic() + limits.timeout_s
  try:
    reaper = bool(layers.namespaces & _CLONE_NEWPID)
    out, err, status, rusage, timed_out = _exchange(
      proc, stdin.encode("utf-8"), deadline, limits.max_output_bytes, uid, reaper
    )
  except BaseException:  # (KeyboardInterrupt included) the sandbox must not outlive the call
    _kill_all(proc.pid, uid)
    proc.wait()
    raise
  finally:
    for f in (proc.stdin, proc.stdout, proc.stderr):
      try:
        f.close()
      except OSError:
        pass
  returncode = None if status is None else os.waitstatus_to_exitcode(status)
  proc.returncode = returncode  # reaped here (os.wait4, for the rusage): Popen must not wait
  stdout = out.decode("utf-8", "replace")
  stderr = err.decode("utf-8", "replace")
  reason = _reason(returncode, timed_out, stderr, rusage, limits.memory_mb)
  return SandboxResult(reason == "ok", returncode, stdout, stderr, timed_out, reason, proc.pid)


def _reason(returncode, timed_out: bool, stderr: str, rusage, memory_mb: int) -> str:
  """What ended the run. "memory" is best effort: a MemoryError at the end of stderr, or death
  by SIGKILL / SIGSEGV (allocation failures inside C code, the OOM killer) after the process's
  peak resident memory reached half of the address-space limit."""
  if timed_out:
    return "timeout"
  if returncode == 0:
    return "ok"
  if "MemoryError" in stderr[-2000:]:
    return "memory"
  if returncode is None or returncode > 0:
    return "error"
  sig = -returncode
  peak_mb = (rusage.ru_maxrss / 1024) if rusage is not None else 0.0
  if sig in (signal.SIGKILL, signal.SIGSEGV) and peak_mb >= 0.5 * memory_mb:
    return "memory"
  if sig == signal.SIGXCPU:
    return "cpu limit"
  return f"killed by signal {sig}"


def _exchange(proc, data: bytes, deadline: float, cap: int, uid, reaper: bool):
  """Feed stdin, read both outputs (at most `cap` bytes each kept) until the program exits or
  the deadline; then kill what is left of it. -> (stdout, stderr, status, rusage, timed_out)."""
  sel = selectors.DefaultSelector()
  bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
  for fd in bufs:
    sel.register(fd, selectors.EVENT_READ)
  stdin_fd, pos = proc.stdin.fileno(), 0
  if data:
    os.set_blocking(stdin_fd, False)
    sel.register(stdin_fd, selectors.EVENT_WRITE)
  else:
    proc.stdin.close()
  exited = timed_out = False
  while True:
    if not exited and _has_exited(proc.pid):
      exited = True
      _kill_all(proc.pid, uid)  # anything it left behind (before reaping: the group id is kept)
    if exited and not sel.get_map():
      break
    remaining = deadline - time.monotonic()
    if remaining <= 0:
      timed_out = not exited
      _stop(proc.pid, uid, reaper and not exited)
      break
    if not sel.get_map():  # both outputs closed: the exit is a moment away
      time.sleep(min(remaining, 0.005))
      continue
    for key, _ in sel.select(min(remaining, 0.05)):
      if key.fd == stdin_fd:
        pos = _feed(sel, proc, data, pos)
      else:
        _read(sel, key.fd, bufs[key.fd], cap)
  try:
    _, status, rusage = os.wait4(proc.pid, 0)
  except ChildProcessError:  # reaped elsewhere (a SIGCHLD handler of the caller's)
    status = rusage = None
  _drain(sel, bufs, cap, stdin_fd, time.monotonic() + 0.5)
  sel.close()
  out, err = (bytes(bufs[f.fileno()]) for f in (proc.stdout, proc.stderr))
  return out, err, status, rusage, timed_out


def _has_exited(pid: int) -> bool:
  """Whether the child has exited, without reaping it (so its process group id stays taken)."""
  try:
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
  except ChildProcessError:
    return True


def _feed(sel, proc, data: bytes, pos: int) -> int:
  fd = proc.stdin.fileno()
  try:
    pos += os.write(fd, data[pos : pos + 65536])
  except BlockingIOError:
    return pos
  except OSError:  # the program closed its stdin or exited
    pos = len(data)
  if pos >= len(data):
    sel.unregister(fd)
    proc.stdin.close()
  return pos


def _read(sel, fd: int, buf: bytearray, cap: int):
  try:
    chunk = os.read(fd, 65536)
  except OSError:
    chunk = b""
  if not chunk:
    sel.unregister(fd)
  elif len(buf) < cap:
    buf += chunk[: cap - len(buf)]  # the rest is read and dropped, so the writer never blocks


def _drain(sel, bufs, cap: int, stdin_fd: int, deadline: float):
  """The output still in the pipes after the program is gone (EOF comes at once, as every
  writer is dead; the deadline only guards against one that escaped)."""
  if stdin_fd in sel.get_map():
    sel.unregister(stdin_fd)
  while sel.get_map() and time.monotonic() < deadline:
    for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
      _read(sel, key.fd, bufs[key.fd], cap)


def _stop(pid: int, uid, reaper: bool):
  """Kill a run at its deadline. With a PID namespace, its pid 1 first (whose end takes the
  namespace down), so that `pid` reaps it and exits on its own, leaving no zombie behind; then
  the whole process group, and the sandbox uid's processes."""
  if reaper:
    _kill_children(pid)
    end = time.monotonic() + 0.5
    while time.monotonic() < end and not _has_exited(pid):
      time.sleep(0.002)
  _kill_all(pid, uid)


def _kill_children(ppid: int):
  for name in os.listdir("/proc"):
    if name.isdigit() and _parent_of(int(name)) == ppid:
      _kill_if(int(name), lambda pid: _parent_of(pid) == ppid)


def _parent_of(pid: int) -> int | None:
  try:
    with open(f"/proc/{pid}/stat", "rb") as f:
      stat_line = f.read(1024)
  except OSError:
    return None
  fields = stat_line[stat_line.rfind(b")") + 2 :].split()
  return int(fields[1]) if len(fields) > 1 else None


def _kill_all(pgid: int, uid):
  try:
    os.killpg(pgid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass
  if uid is not None:
    _kill_uid(uid)


def _kill_uid(uid: int):
  """SIGKILL every live process of the sandbox uid (also those that left the process group),
  until none is left. pidfds make it race-free: a pid reused meanwhile is never signalled."""
  for _ in range(1000):
    pids = _live_pids_of(uid)
    if not pids:
      return
    for pid in pids:
      _kill_if(pid, lambda p: _status_uid(f"/proc/{p}/status") == uid)
    time.sleep(0.001)


def _live_pids_of(uid: int) -> list[int]:
  pids = []
  for name in os.listdir("/proc"):
    if name.isdigit() and _status_uid(f"/proc/{name}/status") == uid:
      pids.append(int(name))
  return pids


def _status_uid(path: str) -> int | None:
  """The real uid in a /proc/<pid>/status file; None for a zombie or a process gone."""
  try:
    with open(path, "rb") as f:
      text = f.read(4096)
  except OSError:
    return None
  state = re.search(rb"^State:\s*(\S)", text, re.M)
  uid = re.search(rb"^Uid:\s*(\d+)", text, re.M)
  if state is None or uid is None or state.group(1) in (b"Z", b"X"):
    return None
  return int(uid.group(1))


def _kill_if(pid: int, check):
  """SIGKILL `pid` if `check(pid)` holds, through a pidfd opened before the check (so a pid
  reused meanwhile is never signalled)."""
  try:
    pidfd = os.pidfd_open(pid)
  except (OSError, AttributeError):
    return
  try:
    if check(pid):
      signal.pidfd_send_signal(pidfd, signal.SIGKILL)
  except OSError:
    pass
  finally:
    os.close(pidfd)


class _UidPool:
  """Sandbox uids: distinct for sandboxes that run at the same time."""

  def __init__(self):
    self._lock = threading.Lock()
    self._busy: set[int] = set()
    self._next = 0

  def acquire(self) -> int:
    with self._lock:
      for _ in range(_UID_SLOTS):
        uid = _UID_BASE + self._next
        self._next = (self._next + 1) % _UID_SLOTS
        if uid not in self._busy:
          self._busy.add(uid)
          return uid
    raise RuntimeError("no free sandbox uid")

  def release(self, uid: int):
    with self._lock:
      self._busy.discard(uid)


_uids = _UidPool()


def _interpreter() -> str:
  return os.path.realpath(sys.executable)


# ----------------------------------------------------------------------------------------------
# The child's setup before exec (preexec_fn, run in the forked child).

_libc = None


def _libc_fn():
  global _libc
  if _libc is None:
    _libc = ctypes.CDLL(None, use_errno=True)
    _libc.syscall.restype = ctypes.c_long
    _libc.unshare.argtypes = [ctypes.c_int]
    _libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
  return _libc


def _check(ret: int, what: str):
  if ret < 0:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def _preexec(rlimits, layers: _Layers, uid, box: str, files, disk_bytes: int):
  """The child's setup, in this order (each step needs the one before):

  1. (root) a private mount namespace, propagation made private first so that nothing reaches
     the host's mount table: a size-limited tmpfs becomes the sandbox directory (`files`
     written into it), and if the interpreter is out of the sandbox uid's reach, a tmpfs
     covers the unreachable directory and the interpreter's prefix is bind-mounted back at
     its own path. Mounting needs root in the host's namespaces: before dropping privileges;
  2. rlimits, as the caller (root may set any limit);
  3. the Landlock rules' paths opened (as the caller, in the new mount view);
  4. setgroups([]) / setgid / setuid to the sandbox uid, still in the host's user namespace,
     so that RLIMIT_NPROC applies to a real, unprivileged uid. Creating the user namespace
     first would not do: inside it, without a uid map, setuid fails, and the process would
     keep the host's uid 0 (owner of root's files, exempt from RLIMIT_NPROC);
  5. unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID) as that uid (unprivileged user
     namespaces; the user namespace is what allows the other two without privileges; the PID
     namespace takes the exec'd interpreter's children, see the prelude);
  6. no_new_privs, then Landlock's restrict_self (last: it needs no privileges, and its rules
     must not stand in the way of the steps above; it also forbids any later mount)."""
  needs_libc = layers.mounts or layers.namespaces or layers.landlock_abi
  libc = _libc_fn() if needs_libc else None
  ruleset = _landlock_plan(layers.landlock_abi, box) if layers.landlock_abi else None

  def setup():
    if layers.mounts:
      _private_mounts(libc, layers.cover, box, uid, files, disk_bytes)
    for res, soft, hard in rlimits:
      resource.setrlimit(res, (soft, hard))
    rules = _open_rules(ruleset) if ruleset else None
    if uid is not None:
      os.setgroups([])
      os.setgid(uid)
      os.setuid(uid)
    if layers.namespaces:
      _check(libc.unshare(layers.namespaces), "unshare(CLONE_NEWUSER|...)")
    if libc is not None:
      _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    if rules is not None:
      _landlock_restrict(libc, ruleset, rules)

  return setup


def _private_mounts(libc, cover, box: str, uid: int, files, disk_bytes: int):
  """(In the child, as root) step 1 of `_preexec`."""
  _check(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
  _check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "mount --make-rprivate /")
  flags = _MS_NOSUID | _MS_NODEV
  if cover is not None:
    prefix = os.path.realpath(sys.base_prefix)
    fd = os.open(prefix, os.O_PATH | os.O_DIRECTORY)
    _check(libc.mount(b"tmpfs", cover.encode(), b"tmpfs", flags, b"mode=755,size=1m"), "cover")
    os.makedirs(prefix, 0o755, exist_ok=True)
    source = f"/proc/self/fd/{fd}".encode()
    _check(libc.mount(source, prefix.encode(), None, _MS_BIND | _MS_REC, None), "bind prefix")
    os.close(fd)
  options = f"mode=700,uid={uid},gid={uid},size={disk_bytes},nr_inodes=10000".encode()
  _check(libc.mount(b"tmpfs", box.encode(), b"tmpfs", flags, options), "sandbox tmpfs")
  for path, text in files:
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)
    os.chmod(path, 0o644)
  os.chdir(box)  # (the cwd Popen set is the directory below the new mount)


# ----------------------------------------------------------------------------------------------
# Landlock (https://docs.kernel.org/userspace-api/landlock.html), through raw syscalls.

_LL_EXECUTE, _LL_WRITE_FILE, _LL_READ_FILE, _LL_READ_DIR = 1, 2, 4, 8
_LL_FILE_RIGHTS = _LL_EXECUTE | _LL_WRITE_FILE | _LL_READ_FILE | (1 << 14) | (1 << 15)


class _RulesetAttr(ctypes.Structure):
  _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
  _pack_ = 1
  _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _landlock_version() -> int:
  if not sys.platform.startswith("linux"):
    return 0
  try:
    libc = _libc_fn()
    abi = libc.syscall(
      ctypes.c_long(_SYS_LANDLOCK[0]), None, ctypes.c_size_t(0), ctypes.c_uint32(1)
    )
  except (OSError, AttributeError):
    return 0
  return max(0, int(abi))


def _landlock_plan(abi: int, box: str):
  """(ruleset attribute, its size, [(path, allowed rights)]) for Landlock ABI `abi`."""
  fs = (1 << 13) - 1  # ABI 1: execute .. make_sym
  fs |= (1 << 13) if abi >= 2 else 0  # refer
  fs |= (1 << 14) if abi >= 3 else 0  # truncate
  fs |= (1 << 15) if abi >= 5 else 0  # ioctl_dev
  attr = _RulesetAttr(fs, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)  # tcp; signal, unix
  size = 24 if abi >= 6 else 16 if abi >= 4 else 8
  rules = [(box, fs)] + [(p, a & fs) for p, a in _system_rules()]
  return attr, size, rules


@functools.cache
def _system_rules() -> tuple[tuple[str, int], ...]:
  """Landlock's allow-list outside the sandbox directory: read the Python prefix and the
  system's libraries; execute the interpreter and its ELF loader; /dev/null, /dev/urandom."""
  read, run = _LL_READ_FILE | _LL_READ_DIR, _LL_EXECUTE | _LL_READ_FILE
  exe = _interpreter()
  rules = [(os.path.realpath(sys.base_prefix), read), (exe, run)]
  loader = _elf_interpreter(exe)
  if loader:
    rules.append((os.path.realpath(loader), run))
  for path in ("/usr", "/lib", "/lib64", "/lib32", "/etc/ld.so.cache", "/dev/urandom"):
    if os.path.exists(path):
      rules.append((path, read))
  rules.append(("/dev/null", _LL_READ_FILE | _LL_WRITE_FILE))
  return tuple((p, a if os.path.isdir(p) else a & _LL_FILE_RIGHTS) for p, a in rules)


def _elf_interpreter(path: str) -> str | None:
  """The ELF loader (PT_INTERP) of a 64-bit little-endian executable, else None."""
  try:
    with open(path, "rb") as f:
      head = f.read(64)
      if head[:4] != b"\x7fELF" or head[4:6] != b"\x02\x01":
        return None
      (phoff,) = struct.unpack_from("<Q", head, 32)
      entsize, count = struct.unpack_from("<HH", head, 54)
      for i in range(count):
        f.seek(phoff + i * entsize)
        kind, _, offset, _, _, size = struct.unpack("<IIQQQQ", f.read(40))
        if kind == 3:  # PT_INTERP
          f.seek(offset)
          return f.read(size).rstrip(b"\0").decode()
  except (OSError, struct.error, UnicodeDecodeError):
    return None
  return None


def _open_rules(plan):
  return [(os.open(path, os.O_PATH | os.O_CLOEXEC), allowed) for path, allowed in plan[2]]


def _landlock_restrict(libc, plan, fds):
  attr, size, _ = plan
  create, add, restrict = (ctypes.c_long(n) for n in _SYS_LANDLOCK)
  ruleset = libc.syscall(create, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
  _check(ruleset, "landlock_create_ruleset")
  for fd, allowed in fds:
    rule = _PathBeneath(allowed, fd)
    ret = libc.syscall(add, ctypes.c_int(ruleset), ctypes.c_int(1), ctypes.byref(rule), 0)
    _check(ret, "landlock_add_rule")
    os.close(fd)
  _check(libc.syscall(restrict, ctypes.c_int(ruleset), ctypes.c_uint32(0)), "restrict_self")
  os.close(ruleset)


# ----------------------------------------------------------------------------------------------
# Which layers work here: probed once, each on top of those that passed.

_probe_lock = threading.Lock()
_probed: _Layers | None = None


def _probe() -> _Layers:
  global _probed
  with _probe_lock:
    if _probed is None:
      _probed = _find_layers()
    return _probed


def _find_layers() -> _Layers:
  layers = _Layers()
  if not sys.platform.startswith("linux"):
    return layers
  if os.geteuid() == 0:
    cover = _unreachable_dir(sys.base_prefix)
    layers = _try(layers, _Layers(drop_privileges=True, mounts=True, cover=cover))
    if not layers.drop_privileges and cover is None:
      layers = _try(layers, _Layers(drop_privileges=True))
  for flags in (_CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWPID, _CLONE_NEWUSER | _CLONE_NEWNET):
    layers = _try(layers, dataclasses.replace(layers, namespaces=flags))
    if layers.namespaces:
      break
  abi = _landlock_version()
  if abi:
    layers = _try(layers, dataclasses.replace(layers, landlock_abi=abi))
  return layers


def _try(current: _Layers, candidate: _Layers) -> _Layers:
  """`candidate` if a trivial program runs under it, else `current`."""
  limits = _Limits(10.0, 512, 32, 4096, 1_000_000)
  result = _run("import json, re\nprint('ok')", "", limits, candidate, True)
  return candidate if result.ok and result.stdout == "ok\n" else current


def _unreachable_dir(path: str) -> str | None:
  """The outermost directory on the way to `path` that other users cannot enter (None: all
  can). "/" itself or a directory below the temp dir cannot be covered: a failed probe."""
  parts = os.path.realpath(path).strip("/").split("/")
  for i in range(1, len(parts) + 1):
    d = "/" + "/".join(parts[:i])
    try:
      if not os.stat(d).st_mode & stat.S_IXOTH:
        return d
    except OSError:
      return d
  return None


# ----------------------------------------------------------------------------------------------
# The child's prelude: the audit hook, then the user's main.py as __main__.


def _stdlib_dirs() -> tuple[list[str], list[str]]:
  """(directories the program may read: the stdlib; their site-packages, which it may not)."""
  paths = sysconfig.get_paths()
  allow = {os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib") if k in paths}
  deny = {os.path.realpath(paths[k]) for k in ("purelib", "platlib") if k in paths}
  return sorted(allow), sorted(deny)


def _prelude(box: str, main: str, audit_hook: bool, pid_namespace: bool) -> str:
  allow, deny = _stdlib_dirs()
  args = f"{box!r}, {main!r}, {allow!r}, {deny!r}, {audit_hook!r}, {pid_namespace!r}"
  return _PRELUDE + f"\n_sandbox_main({args})\n"


_PRELUDE = """
import sys


# In a new PID namespace (unshared before exec, it takes this process's children): fork its
# pid 1, which forks the program (the function returns there) and reaps every orphan until the
# program ends; then pid 1 reports the program's wait status and exits, and the kernel kills
# and reaps the rest of the namespace. This process, outside it, mirrors the program's status.
def _sandbox_spawn():
  import os
  import signal

  r, w = os.pipe()
  init = os.fork()
  if init:  # outside the namespace
    os.close(w)
    report = b""
    while chunk := os.read(r, 64):
      report += chunk
    os.waitpid(init, 0)
    code = os.waitstatus_to_exitcode(int(report)) if report else -signal.SIGKILL
    if code < 0:
      if -code not in (signal.SIGKILL, signal.SIGSTOP):
        signal.signal(-code, signal.SIG_DFL)
      os.kill(os.getpid(), -code)
    os._exit(code if code >= 0 else 128 - code)
  os.close(r)
  program = os.fork()
  if program == 0:
    os.close(w)
    return
  while True:  # pid 1
    try:
      pid, status = os.wait()
    except ChildProcessError:
      os._exit(1)
    if pid == program:
      os.write(w, str(status).encode())
      os._exit(0)


def _sandbox_main(box, main, read_roots, deny_roots, audit_hook, pid_namespace):
  if pid_namespace:
    _sandbox_spawn()

  import os
  import posixpath

  fsdecode, getcwd, getpid = os.fsdecode, os.getcwd, os.getpid
  join, normpath = posixpath.join, posixpath.normpath
  write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
  boxes = (box,)
  blocked = frozenset((
    "os.system", "os.exec", "os.spawn", "os.fork", "os.forkpty", "os.posix_spawn", "os.startfile",
    "pty.spawn", "subprocess.Popen", "os.killpg", "resource.setrlimit", "resource.prlimit",
    "os.symlink", "os.link", "socket.__new__",
  ))
  path_events = frozenset((
    "os.chmod", "os.chown", "os.chflags", "os.lchflags", "os.mkdir", "os.remove", "os.rename",
    "os.rmdir", "os.truncate", "os.utime", "os.setxattr", "os.removexattr", "shutil.rmtree",
    "shutil.copyfile", "shutil.copymode", "shutil.copystat", "shutil.copytree", "shutil.move",
  ))
  no_import = frozenset(("_posixsubprocess", "_ctypes", "ctypes"))

  def absolute(path):
    p = fsdecode(path)
    if not p.startswith("/"):
      p = join(getcwd(), p)
    p = normpath(p)
    return "/" + p.lstrip("/")

  def under(p, roots):
    for r in roots:
      if p == r or p.startswith(r + "/"):
        return True
    return False

  def readable(path):
    if path is None or isinstance(path, int):
      return True
    p = absolute(path)
    if under(p, boxes) or p == "/dev/null":
      return True
    return under(p, read_roots) and not under(p, deny_roots)

  def writable(path):
    if path is None or isinstance(path, int):
      return True
    p = absolute(path)
    return under(p, boxes) or p == "/dev/null"

  def hook(event, args):
    if event == "open":
      path, mode, flags = args
      write = bool((flags or 0) & write_flags)
      write = write or (isinstance(mode, str) and any(c in mode for c in "wax+"))
      if not (writable(path) if write else readable(path)):
        raise PermissionError(f"sandbox: no access to {path!r}")
    elif event in ("os.listdir", "os.scandir", "os.chdir"):
      if args and not readable(args[0]):
        raise PermissionError(f"sandbox: no access to {args[0]!r}")
    elif event in path_events:
      for a in args[:2]:
        if isinstance(a, (str, bytes, os.PathLike)) and not writable(a):
          raise PermissionError(f"sandbox: {event} on {a!r} is not allowed")
    elif event in blocked or event.startswith(("socket.", "ctypes.", "os.exec", "os.spawn")):
      raise PermissionError(f"sandbox: {event} is not allowed")
    elif event == "os.kill" and args[0] != getpid():
      raise PermissionError("sandbox: os.kill is not allowed")
    elif event == "import" and args[0] in no_import:
      raise PermissionError(f"sandbox: import {args[0]} is not allowed")

  with open(main, "rb") as f:
    source = f.read()
  code = compile(source, main, "exec")
  module = type(sys)("__main__")
  module.__file__ = main
  module.__builtins__ = __builtins__
  sys.modules["__main__"] = module
  sys.argv = [main]
  if audit_hook:
    sys.addaudithook(hook)
  del hook, f, source
  exec(code, module.__dict__)
"""
