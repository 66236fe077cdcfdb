"""Orbax checkpoints: train state, RNG key, data position and config, saved asynchronously.

Layout in a workdir:
  checkpoints/<step>/   one per saved RL step (Orbax CheckpointManager, keep N)
      state/              params, optimizer state, step, skipped-update count, RNG key
      meta/               JSON: data position, RL step, config
  warm_start/<step>/    the supervised warm start in progress (keep 1; removed once it is done)
  reference/            the frozen reference policy (the warm-start result), saved once
  corrupt/              checkpoints that could not be read, moved aside on resume

The workdir may be a bucket (`gs://...`): Orbax writes there through TensorStore, and the few
file operations of this module go through `rl_jax.storage`.

A save that fails (a full disk, no permission) raises `CheckpointStorageError` with one line:
the partial directory is removed and the previous checkpoint is left as it was. A checkpoint
that cannot be read on resume is moved to corrupt/ and the newest readable one is used.

Arrays are saved under flat string keys ("params.layers.0.attn.q_proj.kernel") so that any
pytree (NamedTuples, integer-keyed layer dicts) round-trips; restoring takes an abstract
target (shapes, dtypes, shardings) and places every array directly at its target sharding,
which may be a different mesh from the one that saved it.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from rl_jax import distributed, storage
from rl_jax.parallel import path_str


class CheckpointError(RuntimeError):
  """A checkpoint is missing, unreadable, or does not match the model being restored."""


class CheckpointStorageError(CheckpointError):
  """Writing a checkpoint failed for a reason of the storage (no space, no permission)."""


_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)
# How TensorStore (under Orbax) words the same errors in the ValueErrors it raises.
_STORAGE_WORDS = (
  "No space left on device",
  "Disk quota exceeded",
  "Read-only file system",
  "Permission denied",
  "File too large",
)
_TMP_MARK = ".orbax-checkpoint-tmp"


def _storage_problem(error: BaseException) -> str | None:
  """The storage problem behind `error` (its chain searched) in words, or None."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _STORAGE_ERRNOS:
      return os.strerror(error.errno)
    for words in _STORAGE_WORDS:
      if words in str(error):
        return words
    error = error.__cause__ or error.__context__
  return None


def _first_line(error: BaseException, limit: int = 300) -> str:
  text = str(error).strip().splitlines()
  line = (text[0] if text else "").split(" See full TensorStore details")[0]
  return f"{type(error).__name__}: {line[:limit]}"


class _Quiet:
  """Silences what a failed Orbax read leaves behind (its abandoned coroutines and callbacks
  report through Python's unraisable and thread hooks): the caller reports the failure."""

  def __enter__(self):
    self.hooks = sys.unraisablehook, threading.excepthook
    sys.unraisablehook = lambda *a: None
    threading.excepthook = lambda *a: None

  def __exit__(self, *exc):
    gc.collect()  # let the abandoned coroutines go while the hooks are quiet
    sys.unraisablehook, threading.excepthook = self.hooks


class _QuietOrbaxErrors(logging.Filter):
  """Drops the tracebacks Orbax's background save thread logs: the error reaches the caller as
  one CheckpointError line instead (see `Checkpointer._guard`)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname)


_QUIET = _QuietOrbaxErrors()


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
  """Saves and restores RL run state in `<workdir>/checkpoints` (async, keep N), the warm start
  in progress in `<workdir>/warm_start`, and the reference policy in `<workdir>/reference`."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    self.workdir = storage.absolute(workdir)  # a local folder or a bucket (gs://...)
    self.directory = storage.join(self.workdir, "checkpoints")
    self.reference_dir = storage.join(self.workdir, "reference")
    self.warm_dir = storage.join(self.workdir, "warm_start")
    self.corrupt_dir = storage.join(self.workdir, "corrupt")
    self.async_save = async_save
    logging.getLogger("absl").addFilter(_QUIET)
    self.manager = self._manager(self.directory, keep)
    self._warm = None

  def _manager(self, directory: str, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=self.async_save
    )
    return ocp.CheckpointManager(directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def _guard(self, what: str, fn: Callable[[], Any], directory: str | None = None) -> Any:
    """Runs an Orbax write (or a wait for one) and turns its failure into one line: storage
    problems become `CheckpointStorageError` after the partial directory is removed."""
    directory = directory or self.directory
    try:
      return fn()
    except CheckpointError:
      raise
    except Exception as e:  # noqa: BLE001 - Orbax and TensorStore raise many types
      removed = _remove_partial(directory)
      problem = _storage_problem(e)
      steps = sorted(s for s in _complete_steps(directory))
      kept = f"the last complete one (step {steps[-1]}) is intact" if steps else "none is complete"
      failed = f"step {', '.join(removed)}" if removed else what
      if problem:
        raise CheckpointStorageError(
          f"cannot write checkpoints in {directory}: {problem} (saving {failed}; the partial "
          f"save was removed); {kept}. Free space (or fix permissions) and run the same "
          "command again to resume"
        ) from e
      raise CheckpointError(f"writing {what} in {directory} failed: {_first_line(e)}") from e

  def save(self, step: int, state, rng_key, meta: dict) -> None:
    """Saves asynchronously (an earlier save's error surfaces here or in `check`). Refuses
    (raises) to write a state with non-finite parameters, so a bad state can never replace the
    last good checkpoint."""
    if not _all_finite(state):
      raise CheckpointError(f"refusing to checkpoint step {step}: the state has non-finite values")
    arrays = _flatten(dict(state=state, rng=_key_data(rng_key)))
    args = ocp.args.Composite(state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta))
    self._guard(f"checkpoint step {step}", lambda: self.manager.save(step, args=args))

  def check(self) -> None:
    """Raises (one line) if an asynchronous save has failed since the last call."""
    self._guard("the last checkpoint", self.manager.check_for_errors)
    if self._warm is not None:
      self._guard("the warm-start checkpoint", self._warm.check_for_errors, self.warm_dir)

  def restore(self, step: int | None, target_state, rng_template):
    """Restores (state, rng_key, meta) at `step` (None = latest) onto `target_state`'s shardings."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint found in {self.directory}")
    if step not in self.all_steps():
      raise CheckpointError(
        f"no checkpoint for step {step} in {self.directory}; available: {self.all_steps()}"
      )
    target = _flatten(dict(state=_abstract(target_state), rng=_key_data(rng_template)))
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
    tree = _unflatten(dict(state=target_state, rng=_key_data(rng_template)), out.state)
    rng = jax.random.wrap_key_data(np.asarray(tree["rng"]), impl=jax.random.key_impl(rng_template))
    return tree["state"], rng, dict(out.meta)

  def read_meta(self, step: int | None = None) -> dict:
    """The JSON metadata (step, data position, config) saved with checkpoint `step`; by
    default of the newest checkpoint whose metadata reads."""
    if step is None:
      for s in sorted(self.all_steps(), reverse=True)[:-1]:
        try:
          return self.read_meta(s)
        except CheckpointError:
          continue
      step = self.latest_step() if not self.all_steps() else min(self.all_steps())
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001 - Orbax raises many types for unreadable checkpoints
      raise CheckpointError(f"cannot read checkpoint step {step} in {self.directory}: {e}") from e
    return dict(out.meta)

  def save_reference(self, params) -> None:
    """Saves the frozen reference policy once (synchronously)."""
    distributed.barrier("rl_jax.save_reference")  # every process decides on the same folder
    if storage.exists(self.reference_dir):
      return
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(self.reference_dir, _flatten(params))

  def has_reference(self) -> bool:
    return storage.exists(self.reference_dir)

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

  # --- the warm start in progress --------------------------------------------------------

  def _warm_manager(self) -> ocp.CheckpointManager:
    if self._warm is None:
      self._warm = self._manager(self.warm_dir, 1)
    return self._warm

  def latest_warm_step(self) -> int | None:
    """The step of the newest warm-start checkpoint, or None."""
    return self._warm_manager().latest_step() if storage.isdir(self.warm_dir) else None

  def save_warm(self, step: int, state) -> None:
    """Saves the warm start's train state after `step` supervised steps (asynchronously)."""
    if not _all_finite(state):
      raise CheckpointError(f"refusing to checkpoint warm-start step {step}: non-finite values")
    args = ocp.args.Composite(
      state=ocp.args.StandardSave(_flatten(state)), meta=ocp.args.JsonSave(dict(sft_step=step))
    )
    manager = self._warm_manager()
    self._guard(f"warm-start step {step}", lambda: manager.save(step, args=args), self.warm_dir)

  def restore_warm(self, target_state, log: Callable[[str], None]) -> tuple[Any, int] | None:
    """(state, step) of the newest readable warm-start checkpoint, or None."""
    if self.latest_warm_step() is None:
      return None
    manager = self._warm_manager()

    def read(step):
      target = _flatten(_abstract(target_state))
      out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
      _check_shapes(target, out.state, f"warm-start step {step}")
      return _unflatten(target_state, out.state)

    found = self._newest_readable(manager, self.warm_dir, read, "warm-start checkpoint", log)
    return None if found is None else (found[1], found[0])

  def clear_warm(self) -> None:
    """Removes the warm start's checkpoints (once its result is the saved reference)."""
    if self._warm is not None:
      self._guard("the warm-start checkpoint", self._warm.wait_until_finished, self.warm_dir)
      self._warm.close()
      self._warm = None
    distributed.barrier("rl_jax.clear_warm")
    if distributed.is_primary():
      storage.rmtree(self.warm_dir)
    distributed.barrier("rl_jax.clear_warm.done")

  # --- recovery ------------------------------------------------------------------------------

  def _newest_readable(self, manager, directory, read, what, log, move_aside=True):
    """(step, value) of the newest step `read(step)` succeeds on, moving every newer unreadable
    step to `corrupt/` with a one-line warning; None if the manager has no steps. Raises
    CheckpointError (with what to do) when no step is readable."""
    bad = []
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        with _Quiet():
          return step, read(step)
      except Exception as e:  # noqa: BLE001 - Orbax raises many types for corrupt checkpoints
        reason = _first_line(e.__cause__ or e, 160)
        if move_aside:
          moved = self._move_aside(directory, step)
          log(f"warning: {what} step {step} cannot be read ({reason}); moved to {moved}")
          manager.reload()
        else:
          log(f"warning: {what} step {step} cannot be read ({reason}); trying an older one")
        bad.append(step)
    if bad and move_aside:
      raise CheckpointError(
        f"no readable {what} in {directory} (steps {bad} were moved to {self.corrupt_dir}); "
        f"to start this phase over, run the same command again"
      )
    if bad:
      raise CheckpointError(f"no readable {what} in {directory} (steps {bad})")
    return None

  def _move_aside(self, directory: str, step: int) -> str:
    dest = storage.join(
      self.corrupt_dir,
      f"{storage.basename(directory)}-{step}-{time.strftime('%Y%m%d-%H%M%S')}",
    )
    distributed.barrier(f"rl_jax.move_aside.{step}")  # every process has failed to read it
    if distributed.is_primary():
      storage.move(storage.join(directory, str(step)), dest)
    distributed.barrier(f"rl_jax.move_aside.{step}.done")
    return dest

  def restore_newest(self, target_state, rng_template, log: Callable[[str], None], move_aside=True):
    """(state, rng_key, meta, step) of the newest readable RL checkpoint (unreadable newer ones
    moved to corrupt/ with a warning, unless not `move_aside`), or None when there is none."""
    found = self._newest_readable(
      self.manager,
      self.directory,
      lambda step: self.restore(step, target_state, rng_template),
      "checkpoint",
      log,
      move_aside,
    )
    return None if found is None else (*found[1], found[0])

  def wait(self) -> None:
    self._guard("the last checkpoint", self.manager.wait_until_finished)

  def close(self) -> None:
    self.wait()
    self.manager.close()
    if self._warm is not None:
      self._guard("the warm-start checkpoint", self._warm.wait_until_finished, self.warm_dir)
      self._warm.close()
      self._warm = None


def _remove_partial(directory: str) -> list[str]:
  """Deletes the in-progress (temporary) step directories Orbax left in `directory`."""
  removed = []
  for name in storage.listdir(directory):
    if _TMP_MARK in name:
      if distributed.is_primary():  # one process deletes (the folder is shared)
        storage.rmtree(storage.join(directory, name))
      removed.append(name.split(_TMP_MARK)[0] or name)
  return removed


def _complete_steps(directory: str) -> list[int]:
  return [int(n) for n in storage.listdir(directory) if n.isdigit()]


def describe(workdir: str, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """`rl-jax checkpoints`: every checkpoint of a workdir with its state ("complete": every
  array reads back; "corrupt": it does not; "in progress": a save not finished, or cut short),
  reading each one in full. Returns the rows it printed."""
  rows = []
  for phase, sub in (("rl", "checkpoints"), ("warm start", "warm_start")):
    directory = storage.join(workdir, sub)
    for name in sorted(storage.listdir(directory), key=lambda n: (len(n), n)):
      path = storage.join(directory, name)
      if not storage.isdir(path):
        continue
      step = name.split(_TMP_MARK)[0]
      if _TMP_MARK in name:
        row = dict(phase=phase, step=int(step) if step.isdigit() else step, state="in progress")
      elif name.isdigit():
        row = dict(phase=phase, step=int(name), **_verify(path))
      else:
        continue
      row["bytes"] = storage.size(path)
      rows.append(row)
      detail = f" ({row['error']})" if "error" in row else ""
      size = f"{row['bytes'] / 1e6:9.1f} MB"
      log(f"{phase:10s} step {row['step']!s:>7}  {row['state']:11s} {size}{detail}")
  ref = storage.join(workdir, "reference")
  has_ref = storage.isdir(ref)
  if has_ref:
    log(f"{'reference':10s} {'':12s} present     {storage.size(ref) / 1e6:9.1f} MB")
  if not rows and not has_ref:
    log(f"no checkpoints in {workdir}")
  return rows


def _verify(step_dir: str) -> dict[str, Any]:
  """Reads every array of one step directory back (no model needed)."""
  try:
    with _Quiet(), ocp.StandardCheckpointer() as ckptr:
      ckptr.restore(storage.join(step_dir, "state"))
    return dict(state="complete")
  except Exception as e:  # noqa: BLE001 - any failure to read is corruption
    return dict(state="corrupt", error=_first_line(e.__cause__ or e, 160))


def _key_data(key) -> np.ndarray:
  """A PRNG key's raw data on the host: the same value on every process, written once (a
  per-process device array would be ambiguous in a multi-process checkpoint)."""
  return np.asarray(jax.random.key_data(key))


def _all_finite(tree) -> bool:
  for x in jax.tree.leaves(tree):
    if hasattr(x, "dtype") and np.issubdtype(x.dtype, np.floating):
      if not bool(jax.numpy.all(jax.numpy.isfinite(x))):
        return False
  return True
