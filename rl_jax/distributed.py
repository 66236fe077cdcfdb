"""Multi-process runs on JAX's own multi-controller runtime: every host runs the same command,
`jax.distributed.initialize` joins them, one global mesh spans all devices.

What each process does with host data, so that a run's numbers do not depend on how many
processes share it:
- inputs: every process draws the step's examples (a pure function of seed and step, cheap)
  and builds the same global host batch; `put` places only the rows of its own devices
  (`jax.make_array_from_callback`), so no process ever holds another's device data;
- outputs: `fetch` brings a global array to every host (an all-gather when other processes
  hold parts of it); scalars the update returns are replicated and read locally;
- rewards: `split_rows` runs a scoring function on this process's share of the rows only and
  gathers the results, so an expensive verifier (a sandboxed program) runs once per row;
- agreement: `any_process` reduces a flag (a stop signal) so every host takes the same branch;
- writing: only the primary process (`is_primary`) writes logs, metrics, plots and JSON;
  Orbax writes checkpoints cooperatively from all of them.

In a single process each of these is the plain operation (device_put, device_get, a direct
call), so nothing changes for one-host runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

_CLUSTER_ENV = {  # variables that mark a multi-host launch, and how to read its size
  "TPU_WORKER_HOSTNAMES": lambda v: len([h for h in v.split(",") if h]),
  "SLURM_NTASKS": int,
  "OMPI_COMM_WORLD_SIZE": int,
}


def _env_int(name: str, default: int) -> int:
  value = os.environ.get(name, "")
  try:
    return int(value) if value else default
  except ValueError:
    raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def settings(cfg) -> dict[str, Any] | None:
  """The keyword arguments of `jax.distributed.initialize` that `cfg` (a `DistributedConfig`)
  and the environment ask for, or None for a single-process run. Pure: reads `os.environ`."""
  mode = cfg.initialize
  if mode == "off":
    return None
  address = cfg.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
  num = cfg.num_processes or _env_int("JAX_NUM_PROCESSES", 0)
  pid = cfg.process_id if cfg.process_id >= 0 else _env_int("JAX_PROCESS_ID", -1)
  cluster = any(
    name in os.environ and read(os.environ[name]) > 1 for name, read in _CLUSTER_ENV.items()
  )
  if mode == "auto" and not address and not cluster:
    return None
  if address and (not num or pid < 0) and not cluster:
    raise ValueError(
      f"a coordinator address ({address}) needs the process count and this process's id: "
      "set distributed.num_processes / distributed.process_id or JAX_NUM_PROCESSES / "
      "JAX_PROCESS_ID"
    )
  kwargs: dict[str, Any] = {}
  if address:
    kwargs["coordinator_address"] = address
  if num:
    kwargs["num_processes"] = num
  if pid >= 0:
    kwargs["process_id"] = pid
  if cfg.initialization_timeout_s:
    kwargs["initialization_timeout"] = cfg.initialization_timeout_s
  if cfg.heartbeat_timeout_s:
    kwargs["heartbeat_timeout_seconds"] = cfg.heartbeat_timeout_s
  return kwargs


def initialize(cfg, log: Callable[[str], None] = print) -> bool:
  """Joins the multi-process run `cfg` asks for (before anything touches a device). Returns
  whether this is a multi-process run. On CPU the cross-process collectives use gloo."""
  kwargs = settings(cfg)
  if kwargs is None:
    return False
  if jax.distributed.is_initialized():
    return jax.process_count() > 1
  # Collectives between CPU devices of different processes (tests, CPU clusters); the setting
  # does not touch accelerators.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
  if jax.process_index() == 0:
    log(
      f"rl_jax: joined {jax.process_count()} processes ({jax.device_count()} devices, "
      f"{jax.local_device_count()} on each host)"
    )
  return jax.process_count() > 1


def is_multiprocess() -> bool:
  return jax.process_count() > 1


def is_primary() -> bool:
  """Whether this process writes logs, metrics, plots and JSON files (process 0)."""
  return jax.process_index() == 0


def put(tree, sharding):
  """Host arrays (the same global values on every process) placed at `sharding`: each process
  transfers only the blocks of its own devices."""
  if not is_multiprocess():
    return jax.device_put(tree, sharding)

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:  # already global: reshard
      return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(one, tree)


def fetch(tree):
  """Arrays as host numpy arrays with their global values, on every process (an all-gather
  for arrays that other processes hold parts of)."""
  if not is_multiprocess():
    return jax.device_get(tree)
  from jax.experimental import multihost_utils

  def one(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
      return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(one, tree)


def row_range(n: int) -> slice:
  """This process's share of `n` host rows for host-side work (scoring): contiguous, equal
  shares; every row on one process when `n` does not split evenly."""
  count, index = jax.process_count(), jax.process_index()
  if count == 1 or n % count:
    return slice(0, n)
  share = n // count
  return slice(index * share, (index + 1) * share)


def split_rows(fn: Callable[[slice], Any], n: int):
  """`fn(rows)` (a pytree of arrays with leading axis len(rows)) computed on this process's
  rows only and gathered: the same value as `fn(slice(0, n))` on every process."""
  rows = row_range(n)
  local = fn(rows)
  if rows == slice(0, n):
    return local
  if not all(np.asarray(x).dtype.kind in "biuf" for x in jax.tree.leaves(local)):
    return fn(slice(0, n))  # text or objects cannot be all-gathered: every row here instead
  from jax.experimental import multihost_utils

  def gather(x):
    x = np.asarray(x)
    out = np.asarray(multihost_utils.process_allgather(x))  # [processes, share, ...]
    return out.reshape((n,) + x.shape[1:])

  return jax.tree.map(gather, local)


def any_process(flag: bool) -> bool:
  """Whether `flag` is true on any process (every process gets the same answer)."""
  if not is_multiprocess():
    return bool(flag)
  from jax.experimental import multihost_utils

  return bool(np.any(multihost_utils.process_allgather(np.array([bool(flag)], np.int32))))


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (no-op in one process)."""
  if is_multiprocess():
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
