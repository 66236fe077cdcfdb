"""Runs the `rl-jax` command under tcmalloc when the machine has it.

XLA:CPU allocates each jitted call's scratch memory as one block (885 MB for the W3 training
step of benchmarks/) and frees it when the call returns. glibc's malloc serves blocks above 32
MB with a fresh `mmap` and returns them with `munmap`, and its tunables cannot keep such a block
(an aligned request is larger than the block freed before it), so every training step faults in
the whole block again: 216,000 page faults a step in W3. tcmalloc keeps the block for the next
call: no faults, and W3 is 15-25% faster on the 2-core machine of benchmarks/RESULTS.md.

A process cannot change its allocator once it runs, so the command line (`rl_jax.cli`)
re-executes itself once with tcmalloc in LD_PRELOAD, as TPU VM images and Intel's PyTorch
launcher do. Nothing changes when the library is called from Python (a notebook, a test); there,
start Python with `LD_PRELOAD=libtcmalloc_minimal.so.4` yourself.

  RL_JAX_MALLOC=auto     (default) use tcmalloc when `ctypes.util.find_library` finds it
  RL_JAX_MALLOC=system   never re-execute; glibc's malloc

Debian / Ubuntu: `apt install libtcmalloc-minimal4`.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from collections.abc import Callable, Mapping

SWITCH = "RL_JAX_MALLOC"
_ACTIVE = "RL_JAX_MALLOC_ACTIVE"  # set in the re-executed process: never re-execute twice
_LIBRARIES = ("tcmalloc_minimal", "tcmalloc")
_OTHER_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")


def find_tcmalloc() -> str | None:
  """The shared-library name of tcmalloc on this machine (e.g. "libtcmalloc_minimal.so.4"), or
  None."""
  for name in _LIBRARIES:
    found = ctypes.util.find_library(name)
    if found:
      return found
  return None


def preload_environment(
  environ: Mapping[str, str],
  find: Callable[[], str | None] = find_tcmalloc,
  platform: str = sys.platform,
) -> dict[str, str] | None:
  """The environment to re-execute the command with, or None to run on as is: not Linux, the
  switch says "system", this process is the re-executed one, an allocator is already preloaded,
  or no tcmalloc is installed."""
  choice = environ.get(SWITCH, "auto")
  if choice not in ("auto", "system"):
    raise SystemExit(f"rl-jax: {SWITCH} must be 'auto' or 'system', got {choice!r}")
  preloaded = environ.get("LD_PRELOAD", "")
  if (
    platform != "linux"
    or choice == "system"
    or _ACTIVE in environ
    or any(name in preloaded for name in _OTHER_ALLOCATORS)
  ):
    return None
  library = find()
  if library is None:
    return None
  env = with_preload(environ, library)
  env[_ACTIVE] = library
  return env


def with_preload(environ: Mapping[str, str], library: str) -> dict[str, str]:
  """A copy of `environ` with `library` first in LD_PRELOAD (also used to run the benchmark peers
  under the same allocator)."""
  env = dict(environ)
  env["LD_PRELOAD"] = f"{library} {environ.get('LD_PRELOAD', '')}".strip()
  # tcmalloc reports every allocation above 1 GiB on stderr; XLA's scratch blocks are that big
  # for real models, and the reports would bury the training log.
  env.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))
  return env


def reexecute_under_tcmalloc(argv: list[str]) -> None:
  """Replaces this process by `python -m rl_jax.cli ARGV` under tcmalloc when
  `preload_environment` says so; returns otherwise."""
  env = preload_environment(os.environ)
  if env is None:
    return
  print(
    f"rl-jax: running under tcmalloc ({env[_ACTIVE]}: XLA:CPU's per-call buffers are reused "
    f"instead of faulted in again; {SWITCH}=system turns this off)",
    file=sys.stderr,
  )
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, [sys.executable, "-m", "rl_jax.cli", *argv], env)
  except OSError as e:  # the interpreter cannot be re-executed: go on with the system malloc
    print(
      f"rl-jax: could not re-execute under tcmalloc ({e}); using the system malloc", file=sys.stderr
    )


def active() -> str:
  """The allocator this process runs with: the preloaded library's file name, or "system"."""
  try:
    with open("/proc/self/maps") as f:
      for line in f:
        name = os.path.basename(line.split()[-1]) if len(line.split()) >= 6 else ""
        if any(a in name for a in _OTHER_ALLOCATORS):
          return name
  except OSError:
    pass
  return "system"
