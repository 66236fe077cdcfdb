"""Mesh and partition rules: the one place that decides where arrays live.

The mesh has named axes `data`, `fsdp` and `tensor`, sized from config (`-1` = the rest).
Parameters are placed by regex rules on their path (one table per model family); batches
shard their leading (sequence) axis over `data` x `fsdp`. Every jitted step is compiled with
these shardings, so one program runs on 1 CPU, 8 fake CPU devices, a GPU, or a pod.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Decoder parameters, by pure-dict path ("layers/0/attn/q_proj/kernel"). First match wins.
# Kernels are [in, out]: column-parallel layers split `out` over tensor, row-parallel `in`;
# the other dimension is split over fsdp. Norm scales and biases are replicated.
TRANSFORMER_RULES: tuple[tuple[str, P], ...] = (
  (r"embed/embedding$", P("tensor", "fsdp")),
  (r"(q_proj|k_proj|v_proj|gate_proj|up_proj)/kernel$", P("fsdp", "tensor")),
  (r"(o_proj|down_proj)/kernel$", P("tensor", "fsdp")),
  (r"lm_head/kernel$", P("fsdp", "tensor")),
  (r"value_head/kernel$", P("fsdp", None)),
  (r".*", P()),
)


def make_mesh(
  sizes: dict[str, int], devices: Sequence[jax.Device] | None = None, *, dcn_data: int = 1
) -> Mesh:
  """A mesh with axes (data, fsdp, tensor) of the given sizes, GSPMD (Auto) axis types.

  `dcn_data` > 1 (multi-slice): the data axis is `dcn_data` outer blocks, one per slice (TPU
  devices' `slice_index`; a process where devices report one slice, as on GPU nodes), so fsdp
  and tensor collectives stay inside a slice and only the data-parallel reduction crosses the
  data-centre network."""
  devices = list(jax.devices() if devices is None else devices)
  shape = tuple(sizes[a] for a in AXES)
  if int(np.prod(shape)) != len(devices):
    raise ValueError(
      f"mesh {dict(zip(AXES, shape))} needs {int(np.prod(shape))} devices, have {len(devices)}"
    )
  axis_types = (AxisType.Auto,) * len(AXES)
  if dcn_data == 1:
    return jax.make_mesh(shape, AXES, axis_types=axis_types, devices=devices)
  from jax.experimental import mesh_utils

  if shape[0] % dcn_data:
    raise ValueError(f"mesh.dcn_data={dcn_data} does not divide the data axis ({shape[0]})")
  ici = (shape[0] // dcn_data,) + shape[1:]
  slices = {getattr(d, "slice_index", None) for d in devices}
  by_process = None in slices or len(slices) == 1  # no TPU slices: a process is a granule
  grid = mesh_utils.create_hybrid_device_mesh(
    ici, (dcn_data, 1, 1), devices, process_is_granule=by_process
  )
  return Mesh(grid, AXES, axis_types=axis_types)


def path_str(path) -> str:
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
  return "/".join(parts)


def _fit(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Drops axes that do not divide their dimension (small models stay replicated there)."""
  entries = list(spec) + [None] * (len(shape) - len(spec))
  out = []
  for dim, axis in zip(shape, entries[: len(shape)]):
    names = (axis,) if isinstance(axis, str) else tuple(axis or ())
    size = int(np.prod([mesh.shape[n] for n in names])) if names else 1
    out.append(axis if names and dim % size == 0 and size > 1 else None)
  return P(*out)


def param_specs(params, mesh: Mesh, rules=TRANSFORMER_RULES):
  """PartitionSpec per parameter: the first rule whose regex matches the path."""

  def spec_for(path, leaf):
    name = path_str(path)
    for pattern, spec in rules:
      if re.search(pattern, name):
        return _fit(spec, tuple(leaf.shape), mesh)
    return P()

  return jax.tree_util.tree_map_with_path(spec_for, params)


def param_shardings(params, mesh: Mesh, rules=TRANSFORMER_RULES):
  return jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(params, mesh, rules))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading axis over data x fsdp, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def batch_divisor(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def shard_batch(tree, mesh: Mesh):
  """Places host arrays with their leading axis split over data x fsdp (in a multi-process run
  each process transfers only its own devices' rows: `distributed.put`)."""
  from rl_jax import distributed

  return distributed.put(tree, batch_sharding(mesh))


def state_shardings(state, mesh: Mesh, rules=TRANSFORMER_RULES):
  """Shardings for a whole train state (params, optimizer moments, critic, scalars).

  The rules match on path suffixes, so an optimizer moment or a critic trunk array is placed
  like the parameter it mirrors; scalars and unmatched leaves are replicated (the catch-all).
  """
  return param_shardings(state, mesh, rules)
