"""Tests of rl_jax.objectives.advantages: hand-computed values and identities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax.objectives import advantages

R = np.array([[1.0, 0.0, 0.0, 0.0]], np.float32)


# --- group-relative estimators ------------------------------------------------


def test_grpo_hand_values_ddof1():
  np.testing.assert_allclose(
    advantages.grpo_advantages(R, ddof=1), [[1.5, -0.5, -0.5, -0.5]], rtol=1e-5
  )


def test_grpo_hand_values_ddof0():
  np.testing.assert_allclose(
    advantages.grpo_advantages(R, ddof=0),
    [[np.sqrt(3.0), -1 / np.sqrt(3.0), -1 / np.sqrt(3.0), -1 / np.sqrt(3.0)]],
    rtol=1e-5,
  )
  np.testing.assert_allclose(
    advantages.grpo_advantages(R, ddof=0), [[1.732, -0.577, -0.577, -0.577]], atol=1e-3
  )


def test_dr_grpo_hand_values():
  np.testing.assert_allclose(
    advantages.grpo_advantages(R, scale_by_std=False), [[0.75, -0.25, -0.25, -0.25]], rtol=1e-6
  )


def test_rloo_hand_values():
  np.testing.assert_allclose(
    advantages.rloo_advantages(R), [[1.0, -1 / 3, -1 / 3, -1 / 3]], rtol=1e-6
  )


def test_rloo_is_reward_minus_mean_of_others():
  r = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
  expected = np.stack([r[:, i] - np.delete(r, i, axis=1).mean(axis=1) for i in range(5)], 1)
  np.testing.assert_allclose(advantages.rloo_advantages(r), expected, rtol=1e-5, atol=1e-6)


def test_nord_example_std_hides_reward_scale():
  """NoRD (2602.21172): z-scores equalise groups; Dr. GRPO keeps the scale."""
  groups = jnp.array([[0.0, 1.0, 0.0, 1.0], [0.49, 0.51, 0.49, 0.51]])
  grpo = advantages.grpo_advantages(groups)
  np.testing.assert_allclose(grpo[0], grpo[1], rtol=1e-3)
  np.testing.assert_allclose(grpo[0], [-0.866, 0.866, -0.866, 0.866], atol=1e-3)
  dr = advantages.grpo_advantages(groups, scale_by_std=False)
  np.testing.assert_allclose(dr[0], [-0.5, 0.5, -0.5, 0.5], atol=1e-6)
  np.testing.assert_allclose(dr[1], [-0.01, 0.01, -0.01, 0.01], atol=1e-6)


@pytest.mark.parametrize(
  "fn",
  [
    lambda r: advantages.grpo_advantages(r),
    lambda r: advantages.grpo_advantages(r, ddof=0),
    lambda r: advantages.grpo_advantages(r, scale_by_std=False),
    advantages.rloo_advantages,
  ],
)
def test_group_advantages_sum_to_zero(fn):
  r = np.random.default_rng(1).uniform(size=(3, 4, 7)).astype(np.float32)
  adv = fn(r)
  assert adv.shape == r.shape
  np.testing.assert_allclose(jnp.sum(adv, axis=-1), 0.0, atol=1e-5)
  assert float(jnp.max(jnp.abs(adv))) > 0.1  # not trivially zero


@pytest.mark.parametrize(
  "fn",
  [
    lambda r: advantages.grpo_advantages(r),
    lambda r: advantages.grpo_advantages(r, ddof=0),
    lambda r: advantages.grpo_advantages(r, scale_by_std=False),
    advantages.rloo_advantages,
  ],
)
def test_singleton_groups_get_exactly_zero(fn):
  adv = fn(jnp.array([[3.0], [-1.0]]))
  np.testing.assert_array_equal(adv, np.zeros((2, 1)))


def test_constant_group_gets_zero_not_nan():
  adv = advantages.grpo_advantages(jnp.ones((2, 8)))
  np.testing.assert_array_equal(adv, np.zeros((2, 8)))


def test_grpo_vmap_over_single_groups_matches_batched():
  r = np.random.default_rng(2).normal(size=(5, 6)).astype(np.float32)
  per_group = jax.vmap(advantages.grpo_advantages)(r)
  np.testing.assert_allclose(per_group, advantages.grpo_advantages(r), rtol=1e-6)
  jitted = jax.jit(advantages.grpo_advantages, static_argnames="ddof")(r, ddof=0)
  np.testing.assert_allclose(jitted, advantages.grpo_advantages(r, ddof=0), rtol=1e-6)


# --- GAE and returns -------------------------------------------------------------

# Hand example, gamma=0.9, lam=0.8, rewards [0, 0, 1], values [.5, .6, .7]:
#   t=2: delta = 1 - .7 = .3                      A = .3
#   t=1: delta = .9*.7 - .6 = .03                 A = .03 + .72*.3 = .246
#   t=0: delta = .9*.6 - .5 = .04                 A = .04 + .72*.246 = .21712
HAND_ADV = [0.21712, 0.246, 0.3]
HAND_RET = [0.71712, 0.846, 1.0]


def test_gae_hand_example():
  adv, ret = advantages.gae(
    jnp.array([[0.0, 0.0, 1.0]]), jnp.array([[0.5, 0.6, 0.7]]), jnp.ones((1, 3)), gamma=0.9, lam=0.8
  )
  np.testing.assert_allclose(adv, [HAND_ADV], rtol=1e-5)
  np.testing.assert_allclose(ret, [HAND_RET], rtol=1e-5)


def test_gae_trailing_padding_is_ignored():
  adv, ret = advantages.gae(
    jnp.array([[0.0, 0.0, 1.0, 7.0, 7.0]]),
    jnp.array([[0.5, 0.6, 0.7, 9.0, 9.0]]),
    jnp.array([[1.0, 1.0, 1.0, 0.0, 0.0]]),
    gamma=0.9,
    lam=0.8,
  )
  np.testing.assert_allclose(adv, [HAND_ADV + [0.0, 0.0]], rtol=1e-5)
  np.testing.assert_allclose(ret, [HAND_RET + [0.0, 0.0]], rtol=1e-5)


def test_gae_interior_masked_positions_are_skipped():
  # Tool-output tokens at positions 1 and 2 (rewards/values there are junk):
  # the recursion bootstraps across them, as if they were not there.
  mask = jnp.array([[1.0, 0.0, 0.0, 1.0, 1.0]])
  adv, ret = advantages.gae(
    jnp.array([[0.0, 5.0, -3.0, 0.0, 1.0]]),
    jnp.array([[0.5, 9.0, -9.0, 0.6, 0.7]]),
    mask,
    gamma=0.9,
    lam=0.8,
  )
  np.testing.assert_allclose(adv, [[HAND_ADV[0], 0.0, 0.0, HAND_ADV[1], HAND_ADV[2]]], rtol=1e-5)
  np.testing.assert_allclose(ret, [[HAND_RET[0], 0.0, 0.0, HAND_RET[1], HAND_RET[2]]], rtol=1e-5)


def test_gae_lambda1_gamma1_zero_values_equals_discounted_returns():
  rng = np.random.default_rng(3)
  rewards = rng.normal(size=(4, 9)).astype(np.float32)
  mask = (rng.uniform(size=(4, 9)) > 0.3).astype(np.float32)
  adv, ret = advantages.gae(rewards, np.zeros_like(rewards), mask, gamma=1.0, lam=1.0)
  expected = advantages.discounted_returns(rewards, mask, gamma=1.0)
  np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ret, expected, rtol=1e-5, atol=1e-6)
  # Undiscounted return-to-go: reverse cumulative sum of valid rewards.
  masked = rewards * mask
  np.testing.assert_allclose(
    expected, np.cumsum(masked[:, ::-1], axis=1)[:, ::-1] * mask, rtol=1e-5, atol=1e-5
  )


def test_gae_lambda1_is_monte_carlo_return_minus_value():
  rng = np.random.default_rng(4)
  rewards = rng.normal(size=(2, 6)).astype(np.float32)
  values = rng.normal(size=(2, 6)).astype(np.float32)
  mask = np.ones((2, 6), np.float32)
  adv, ret = advantages.gae(rewards, values, mask, gamma=0.95, lam=1.0)
  mc = advantages.discounted_returns(rewards, mask, gamma=0.95)
  np.testing.assert_allclose(adv, mc - values, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ret, mc, rtol=1e-5, atol=1e-5)


def test_gae_lambda0_is_td_error():
  rewards = jnp.array([[1.0, 2.0, 3.0]])
  values = jnp.array([[0.5, 1.0, 2.0]])
  adv, _ = advantages.gae(rewards, values, jnp.ones((1, 3)), gamma=0.5, lam=0.0)
  np.testing.assert_allclose(
    adv, [[1.0 + 0.5 * 1.0 - 0.5, 2.0 + 0.5 * 2.0 - 1.0, 3.0 - 2.0]], rtol=1e-6
  )


def test_gae_jit_and_vmap_over_single_streams():
  rng = np.random.default_rng(5)
  rewards = rng.normal(size=(3, 7)).astype(np.float32)
  values = rng.normal(size=(3, 7)).astype(np.float32)
  mask = (rng.uniform(size=(3, 7)) > 0.2).astype(np.float32)
  batched = advantages.gae(rewards, values, mask, gamma=0.99, lam=0.9)
  fn = lambda r, v, m: advantages.gae(r, v, m, gamma=0.99, lam=0.9)
  for got in (jax.jit(fn)(rewards, values, mask), jax.vmap(fn)(rewards, values, mask)):
    for a, b in zip(got, batched):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_gae_on_group_shaped_batches():
  rng = np.random.default_rng(6)
  shape = (2, 3, 5)
  rewards, values = rng.normal(size=(2,) + shape).astype(np.float32)
  mask = np.ones(shape, np.float32)
  adv, _ = advantages.gae(rewards, values, mask)
  flat, _ = advantages.gae(rewards.reshape(6, 5), values.reshape(6, 5), mask.reshape(6, 5))
  np.testing.assert_allclose(adv.reshape(6, 5), flat, rtol=1e-6)


def test_discounted_returns_hand_example_with_interior_mask():
  returns = advantages.discounted_returns(
    jnp.array([[0.0, 4.0, 0.0, 1.0, 2.0]]), jnp.array([[1.0, 0.0, 1.0, 1.0, 0.0]]), gamma=0.9
  )
  # Valid rewards [0, 0, 1] -> [0.81, 0.9, 1]; masked rewards are ignored.
  np.testing.assert_allclose(returns, [[0.81, 0.0, 0.9, 1.0, 0.0]], rtol=1e-6)


# --- whitening -----------------------------------------------------------------


def test_whiten_mean0_var1_on_valid_positions():
  rng = np.random.default_rng(7)
  x = rng.normal(3.0, 2.0, size=(4, 10)).astype(np.float32)
  mask = (rng.uniform(size=(4, 10)) > 0.4).astype(np.float32)
  x_padded = np.where(mask > 0, x, 1e6)  # garbage on padding must not matter
  y = np.asarray(advantages.whiten(x_padded, mask))
  valid = y[mask > 0]
  np.testing.assert_allclose(valid.mean(), 0.0, atol=1e-5)
  np.testing.assert_allclose(valid.var(), 1.0, rtol=1e-4)
  np.testing.assert_array_equal(y[mask == 0], 0.0)
  expected = (x[mask > 0] - x[mask > 0].mean()) / x[mask > 0].std()
  np.testing.assert_allclose(valid, expected, rtol=1e-4, atol=1e-5)


def test_whiten_without_mean_shift_only_rescales():
  x = jnp.array([[1.0, 3.0, 50.0]])
  mask = jnp.array([[1.0, 1.0, 0.0]])
  # mean 2, population std 1: (x - 2) / 1 + 2 = x on valid positions.
  np.testing.assert_allclose(
    advantages.whiten(x, mask, shift_mean=False), [[1.0, 3.0, 0.0]], rtol=1e-6
  )
  x = jnp.array([[2.0, 6.0]])  # mean 4, std 2 -> (x - 4)/2 + 4
  np.testing.assert_allclose(
    advantages.whiten(x, jnp.ones((1, 2)), shift_mean=False), [[3.0, 5.0]], rtol=1e-6
  )


def test_whiten_all_masked_gives_zeros():
  y = advantages.whiten(jnp.ones((2, 3)), jnp.zeros((2, 3)))
  np.testing.assert_array_equal(y, np.zeros((2, 3)))
