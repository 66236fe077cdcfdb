"""Checkpoints: exact round trip, clear errors, and a bad state never replaces a good one."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax import trainer
from rl_jax.checkpoint import Checkpointer, CheckpointError
from rl_jax.models import transformer


def _state(seed=0):
  cfg = transformer.preset("test", 17)
  _, params = transformer.init_model(cfg, seed)
  tx = trainer.make_optimizer(learning_rate=1e-3)
  state = trainer.init_state(params, tx)
  # Make the optimizer moments non-trivial so that restoring them is actually checked.
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  state, _ = trainer.apply_gradients(state, grads, jnp.float32(1.0), tx)
  return state


def _assert_tree_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_roundtrip_state_rng_and_meta(tmp_path):
  state, key = _state(), jax.random.fold_in(jax.random.key(3), 7)
  ck = Checkpointer(str(tmp_path), keep=2)
  ck.save(5, state, key, dict(step=5, data_position=5, config={"a": 1}))
  ck.wait()
  template = _state(seed=1)  # different values, same structure
  restored, rkey, meta = ck.restore(None, template, jax.random.key(0))
  _assert_tree_equal(restored, state)
  np.testing.assert_array_equal(jax.random.key_data(rkey), jax.random.key_data(key))
  assert meta == dict(step=5, data_position=5, config={"a": 1})
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  ck.close()


def test_keeps_only_the_last_n(tmp_path):
  state, key = _state(), jax.random.key(0)
  ck = Checkpointer(str(tmp_path), keep=2)
  for step in (1, 2, 3):
    ck.save(step, state, key, dict(step=step, data_position=step))
  ck.wait()
  assert ck.all_steps() == [2, 3] and ck.latest_step() == 3
  ck.close()


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  ck = Checkpointer(str(tmp_path))
  with pytest.raises(CheckpointError, match="no checkpoint found"):
    ck.restore(None, _state(), jax.random.key(0))
  with pytest.raises(CheckpointError, match="no reference policy"):
    ck.restore_reference(_state().params)
  ck.close()


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
  state, key = _state(), jax.random.key(0)
  ck = Checkpointer(str(tmp_path))
  ck.save(1, state, key, dict(step=1, data_position=1))
  ck.close()
  # Damage the saved arrays: delete the array data but keep the step directory.
  state_dir = os.path.join(str(tmp_path), "checkpoints", "1", "state")
  for entry in os.listdir(state_dir):
    path = os.path.join(state_dir, entry)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
  ck = Checkpointer(str(tmp_path))
  with pytest.raises(CheckpointError, match="cannot read checkpoint step 1"):
    ck.restore(1, state, key)
  ck.close()


def test_wrong_model_shape_is_a_clear_error(tmp_path):
  ck = Checkpointer(str(tmp_path))
  ck.save_reference(_state().params)
  other = transformer.init_model(transformer.preset("test", 23), 0)[1]  # other vocabulary
  with pytest.raises(CheckpointError, match="shape"):
    ck.restore_reference(other)
  ck.close()


def test_refuses_to_save_non_finite_state(tmp_path):
  state, key = _state(), jax.random.key(0)
  ck = Checkpointer(str(tmp_path))
  ck.save(1, state, key, dict(step=1, data_position=1))
  ck.wait()
  bad = state._replace(params=jax.tree.map(lambda p: p * jnp.nan, state.params))
  with pytest.raises(CheckpointError, match="non-finite"):
    ck.save(2, bad, key, dict(step=2, data_position=2))
  ck.wait()
  assert ck.all_steps() == [1]
  restored, _, _ = ck.restore(None, state, key)
  _assert_tree_equal(restored, state)
  ck.close()
