"""Orbax checkpoints: train state, RNG key, data position and config, saved asynchronously.

Layout in a workdir:
  checkpoints/<step>/   one per saved RL step (Orbax CheckpointManager, keep N)
      state/              params, optimizer state, step, skipped-update count, RNG key
      meta/               JSON: data position, RL step, config
  reference/            the frozen reference policy (the warm-start result), saved once

Arrays are saved under flat string keys ("params.layers.0.attn.q_proj.kernel") so that any
pytree (NamedTuples, integer-keyed layer dicts) round-trips; restoring takes an abstract
target (shapes, dtypes, shardings) and places every array directly at its target sharding,
which may be a different mesh from the one that saved it.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from rl_jax.parallel import path_str


class CheckpointError(RuntimeError):
  """A checkpoint is missing, unreadable, or does not match the model being restored."""


def _flatten(tree) -> dict[str, Any]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {path_str(p).replace("/", ".") or "root": x for p, x in leaves}


def _unflatten(target, flat: dict[str, Any]):
  paths, treedef = jax.tree_util.tree_flatten_with_path(target)
  keys = [path_str(p).replace("/", ".") or "root" for p, _ in paths]
  missing = [k for k in keys if k not in flat]
  if missing:
    raise CheckpointError(
      f"checkpoint lacks {len(missing)} arrays the model needs, e.g. "
      f"{missing[:3]} (was it written by a different model config?)"
    )
  return jax.tree_util.tree_unflatten(treedef, [flat[k] for k in keys])


def _abstract(tree):
  def to_struct(x):
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  return jax.tree.map(to_struct, tree)


def _check_shapes(target_flat, restored_flat, where: str):
  for k, t in target_flat.items():
    r = restored_flat[k]
    if tuple(t.shape) != tuple(r.shape):
      raise CheckpointError(
        f"{where}: array {k!r} has shape {tuple(r.shape)} in the "
        f"checkpoint but the model expects {tuple(t.shape)}"
      )


class Checkpointer:
  """Saves and restores RL run state in `<workdir>/checkpoints` (async, keep N)."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.reference_dir = os.path.abspath(os.path.join(workdir, "reference"))
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=async_save
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, rng_key, meta: dict) -> None:
    """Saves asynchronously. Refuses (raises) to write a state with non-finite parameters, so a
    bad state can never replace the last good checkpoint."""
    if not _all_finite(state):
      raise CheckpointError(f"refusing to checkpoint step {step}: the state has non-finite values")
    arrays = _flatten(dict(state=state, rng=jax.random.key_data(rng_key)))
    self.manager.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)),
    )

  def restore(self, step: int | None, target_state, rng_template):
    """Restores (state, rng_key, meta) at `step` (None = latest) onto `target_state`'s shardings."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint found in {self.directory}")
    if step not in self.all_steps():
      raise CheckpointError(
        f"no checkpoint for step {step} in {self.directory}; available: {self.all_steps()}"
      )
    target = _flatten(
      dict(state=_abstract(target_state), rng=_abstract(jax.random.key_data(rng_template)))
    )
    try:
      out = self.manager.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
        ),
      )
    except Exception as e:  # Orbax raises many types for corrupt or partial checkpoints.
      raise CheckpointError(
        f"cannot read checkpoint step {step} in {self.directory}: {type(e).__name__}: {e}"
      ) from e
    _check_shapes(target, out.state, f"checkpoint step {step}")
    tree = _unflatten(dict(state=target_state, rng=jax.random.key_data(rng_template)), out.state)
    rng = jax.random.wrap_key_data(tree["rng"], impl=jax.random.key_impl(rng_template))
    return tree["state"], rng, dict(out.meta)

  def read_meta(self, step: int | None = None) -> dict:
    """The JSON metadata (step, data position, config) saved with checkpoint `step` (latest)."""
    step = self.latest_step() if step is None else step
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001 - Orbax raises many types for unreadable checkpoints
      raise CheckpointError(f"cannot read checkpoint step {step} in {self.directory}: {e}") from e
    return dict(out.meta)

  def save_reference(self, params) -> None:
    """Saves the frozen reference policy once (synchronously)."""
    if os.path.exists(self.reference_dir):
      return
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(self.reference_dir, _flatten(params))

  def has_reference(self) -> bool:
    return os.path.exists(self.reference_dir)

  def restore_reference(self, target_params):
    if not self.has_reference():
      raise CheckpointError(f"no reference policy saved in {self.reference_dir}")
    target = _flatten(_abstract(target_params))
    try:
      with ocp.StandardCheckpointer() as ckptr:
        flat = ckptr.restore(self.reference_dir, target)
    except Exception as e:
      raise CheckpointError(
        f"cannot read the reference policy in {self.reference_dir}: {type(e).__name__}: {e}"
      ) from e
    _check_shapes(target, flat, "reference policy")
    return _unflatten(target_params, flat)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _all_finite(tree) -> bool:
  for x in jax.tree.leaves(tree):
    if hasattr(x, "dtype") and np.issubdtype(x.dtype, np.floating):
      if not bool(jax.numpy.all(jax.numpy.isfinite(x))):
        return False
  return True
