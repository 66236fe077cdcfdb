"""Segment-level policy gradient (methods.md B7): reductions to token level and to GSPO, the
policy-gradient identity at ratio 1 for any segmentation, padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax.objectives import segments
from rl_jax.objectives.policy_losses import gspo, ppo_clip

RNG = np.random.default_rng(0)
N, T = 6, 10


def _data():
  logp = jnp.asarray(RNG.normal(scale=0.3, size=(N, T)) - 1.0, jnp.float32)
  old = logp + jnp.asarray(RNG.normal(scale=0.2, size=(N, T)), jnp.float32)
  mask = jnp.asarray(np.arange(T)[None, :] < RNG.integers(3, T + 1, (N, 1)), jnp.float32)
  adv = jnp.asarray(RNG.normal(size=N), jnp.float32)
  return logp, old, mask, adv


def _random_segments(k):
  """Sorted random segment ids in [0, k) per row."""
  return jnp.asarray(np.sort(RNG.integers(0, k, (N, T)), axis=-1), jnp.int32)


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_one_token_segments_are_the_token_level_loss(reduce):
  logp, old, mask, adv = _data()
  ids = jnp.broadcast_to(jnp.arange(T), (N, T))
  got = segments.segment_clip(logp, old, adv, mask, ids, num_segments=T, reduce=reduce)
  want = jnp.where(mask > 0, ppo_clip(logp, old, adv[:, None]), 0.0)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_one_segment_with_mean_ratio_is_gspo():
  logp, old, mask, adv = _data()
  one = jnp.zeros((N, T), jnp.int32)
  seg = lambda lp: segments.segment_clip(
    lp, old, adv, mask, one, num_segments=1, eps_low=3e-4, eps_high=4e-4
  )
  ref = lambda lp: gspo(lp, old, adv, mask)
  np.testing.assert_allclose(seg(logp), ref(logp), rtol=1e-6)
  grad = lambda f: jax.grad(lambda lp: jnp.sum(f(lp)))(logp)
  np.testing.assert_allclose(grad(seg), grad(ref), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("reduce", ["mean", "sum"])
@pytest.mark.parametrize("k", [1, 3, T])
def test_gradient_at_ratio_one_is_the_policy_gradient_for_any_segmentation(reduce, k):
  logp, _, mask, adv = _data()
  ids = _random_segments(k)
  loss = lambda lp: jnp.sum(
    segments.segment_clip(
      lp, jax.lax.stop_gradient(lp), adv, mask, ids, num_segments=k, reduce=reduce
    )
  )
  # d/dlogp of sum_t -A * logp_t on valid tokens
  np.testing.assert_allclose(jax.grad(loss)(logp), -adv[:, None] * mask, rtol=1e-6, atol=1e-7)


def test_padding_contributes_nothing():
  logp, old, mask, adv = _data()
  ids = _random_segments(3)
  base = segments.segment_clip(logp, old, adv, mask, ids, num_segments=3)
  junk = jnp.where(mask > 0, logp, 50.0)  # garbage log-probs on padding
  np.testing.assert_array_equal(
    segments.segment_clip(junk, old, adv, mask, ids, num_segments=3), base
  )
  assert np.all(np.asarray(base)[np.asarray(mask) == 0] == 0)


def test_segment_log_ratios_by_hand_and_sum_reduce():
  logp = jnp.array([[0.1, 0.3, 0.5, 0.0]])
  ids, mask = jnp.array([[0, 0, 1, 1]]), jnp.array([[1.0, 1.0, 1.0, 0.0]])
  lr, n = segments.segment_log_ratios(logp, jnp.zeros((1, 4)), ids, mask, num_segments=3)
  np.testing.assert_allclose(lr, [[0.2, 0.5, 0.0]], rtol=1e-6)
  np.testing.assert_array_equal(n, [[2, 1, 0]])
  lr, _ = segments.segment_log_ratios(
    logp, jnp.zeros((1, 4)), ids, mask, num_segments=3, reduce="sum"
  )
  np.testing.assert_allclose(lr, [[0.4, 0.5, 0.0]], rtol=1e-6)
  with pytest.raises(ValueError, match="reduce"):
    segments.segment_log_ratios(logp, logp, ids, mask, num_segments=3, reduce="max")


def test_segment_ids_from_delimiters():
  tokens = jnp.array([[5, 9, 6, 7, 9, 8, 9, 0]])
  mask = jnp.array([[1, 1, 1, 1, 1, 1, 0, 0]])
  np.testing.assert_array_equal(
    segments.segment_ids_from_delimiters(tokens, (9,), mask), [[0, 0, 1, 1, 1, 2, 2, 2]]
  )
  np.testing.assert_array_equal(
    segments.segment_ids_from_delimiters(tokens, (9, 7)), [[0, 0, 1, 1, 2, 3, 3, 4]]
  )
