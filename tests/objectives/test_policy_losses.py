"""Tests of rl_jax.objectives.policy_losses: PPO clip, dual clip, GSPO."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax.objectives import aggregation, policy_losses

B, G, T = 2, 3, 5


def _batch(seed=0):
  """logp [B, G, T], per-sequence adv [B, G], mask with padding (no empty row)."""
  rng = np.random.default_rng(seed)
  logp = rng.normal(-2.0, 1.0, size=(B, G, T)).astype(np.float32)
  adv = rng.normal(size=(B, G)).astype(np.float32)
  lengths = rng.integers(1, T + 1, size=(B, G))
  mask = (np.arange(T) < lengths[..., None]).astype(np.float32)
  return jnp.asarray(logp), jnp.asarray(adv), jnp.asarray(mask)


def _ppo(eps_low, eps_high, dual_clip=None):
  def loss(logp, old_logp, adv_BxG, mask):
    del mask
    return policy_losses.ppo_clip(
      logp, old_logp, adv_BxG[..., None], eps_low=eps_low, eps_high=eps_high, dual_clip=dual_clip
    )

  return loss


def _gspo(eps_low, eps_high, token_level):
  return functools.partial(
    policy_losses.gspo, eps_low=eps_low, eps_high=eps_high, token_level=token_level
  )


# --- PPO clip -------------------------------------------------------------------


def test_ppo_clip_hand_values():
  ratio = jnp.array([1.5, 0.5, 1.5, 0.5, 1.1])
  adv = jnp.array([1.0, -1.0, -1.0, 1.0, 1.0])
  loss = policy_losses.ppo_clip(jnp.log(ratio), jnp.zeros(5), adv)
  #  A>0, rho=1.5: -min(1.5, 1.2) = -1.2;   A<0, rho=0.5: -min(-.5, -.8) = .8
  #  A<0, rho=1.5: -min(-1.5, -1.2) = 1.5;  A>0, rho=0.5: -min(.5, .8) = -.5
  np.testing.assert_allclose(loss, [-1.2, 0.8, 1.5, -0.5, -1.1], rtol=1e-6)


def test_ppo_clip_higher_is_asymmetric():
  loss = policy_losses.ppo_clip(
    jnp.log(jnp.array([1.5, 0.5])), jnp.zeros(2), jnp.array([1.0, -1.0]), eps_low=0.2, eps_high=0.28
  )
  np.testing.assert_allclose(loss, [-1.28, 0.8], rtol=1e-6)


def test_ppo_dual_clip_bounds_negative_advantage_loss():
  logp = jnp.log(jnp.array([5.0, 5.0, 2.0, 5.0]))
  adv = jnp.array([-1.0, -2.0, -1.0, 1.0])
  plain = policy_losses.ppo_clip(logp, jnp.zeros(4), adv)
  dual = policy_losses.ppo_clip(logp, jnp.zeros(4), adv, dual_clip=3.0)
  np.testing.assert_allclose(plain, [5.0, 10.0, 2.0, -1.2], rtol=1e-6)
  # min(loss, -c A) for A<0 only: 3, 6, and 2 (< 3, untouched); A>0 untouched.
  np.testing.assert_allclose(dual, [3.0, 6.0, 2.0, -1.2], rtol=1e-6)
  grad = jax.grad(lambda lp: jnp.sum(policy_losses.ppo_clip(lp, jnp.zeros(4), adv, dual_clip=3.0)))(
    logp
  )
  np.testing.assert_allclose(grad, [0.0, 0.0, 2.0, 0.0], rtol=1e-6)


def test_ppo_gradient_is_zero_exactly_where_clipped():
  ratio = jnp.array([1.5, 1.1, 0.5, 0.9, 0.5])
  adv = jnp.array([1.0, 1.0, -1.0, -1.0, 1.0])
  grad = jax.grad(lambda lp: jnp.sum(policy_losses.ppo_clip(lp, jnp.zeros(5), adv)))(jnp.log(ratio))
  # d(-rho A)/d logp = -rho A where the unclipped term is active.
  np.testing.assert_allclose(grad, [0.0, -1.1, 0.0, 0.9, -0.5], rtol=1e-6)


def test_clip_fraction_counts_valid_clipped_tokens():
  ratio = jnp.array([[1.5, 1.1, 0.5, 0.9], [1.3, 0.7, 3.0, 0.1]])
  adv = jnp.array([[1.0], [-1.0]])
  mask = jnp.array([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
  frac = policy_losses.clip_fraction(
    jnp.log(ratio), jnp.zeros((2, 4)), adv, mask, eps_low=0.2, eps_high=0.2
  )
  # Clipped: [1.5 with A>0] and [0.7 with A<0]; 0.5 has A>0 -> not clipped.
  np.testing.assert_allclose(frac, 2.0 / 6.0, rtol=1e-6)
  frac_wide = policy_losses.clip_fraction(
    jnp.log(ratio), jnp.zeros((2, 4)), adv, mask, eps_low=0.35, eps_high=0.6
  )
  np.testing.assert_allclose(frac_wide, 0.0)


def test_ppo_argument_validation():
  with pytest.raises(ValueError, match="dual_clip"):
    policy_losses.ppo_clip(jnp.zeros(3), jnp.zeros(3), jnp.ones(3), dual_clip=0.5)
  with pytest.raises(ValueError, match="broadcast"):
    policy_losses.ppo_clip(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.ones(2))


def test_ppo_jit_and_vmap():
  logp, adv, _ = _batch(1)
  old = logp + 0.3 * jnp.sin(logp)
  fn = lambda lp, olp, a: policy_losses.ppo_clip(
    lp, olp, a[..., None], eps_high=0.28, dual_clip=3.0
  )
  eager = fn(logp, old, adv)
  np.testing.assert_allclose(jax.jit(fn)(logp, old, adv), eager, rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(fn)(logp, old, adv), eager, rtol=1e-6)


# --- invariants shared by every clipped loss ---------------------------------------

CLIPPED_LOSS_FAMILIES = {
  "ppo": [_ppo(0.2, 0.2), _ppo(0.1, 0.3), _ppo(0.2, 0.28, dual_clip=3.0)],
  "gspo": [_gspo(3e-4, 4e-4, False), _gspo(0.2, 0.2, False)],
  "gspo_token": [_gspo(3e-4, 4e-4, True), _gspo(0.2, 0.2, True)],
}


def _reference_pg_loss(logp, adv_BxG, mask):
  """Vanilla policy gradient surrogate: value -A, gradient -A grad(logp)."""
  ratio = jnp.exp(logp - jax.lax.stop_gradient(logp))
  return aggregation.aggregate(-ratio * adv_BxG[..., None], mask, "seq_mean_token_mean")


@pytest.mark.parametrize("family", sorted(CLIPPED_LOSS_FAMILIES))
def test_at_ratio_one_loss_is_minus_mean_adv_and_grad_independent_of_eps(family):
  logp, adv, mask = _batch(2)
  expected_grad = jax.grad(_reference_pg_loss)(logp, adv, mask)
  assert float(jnp.max(jnp.abs(expected_grad))) > 1e-2
  for loss_fn in CLIPPED_LOSS_FAMILIES[family]:

    def objective(lp):
      per_token = loss_fn(lp, jax.lax.stop_gradient(logp), adv, mask)
      return aggregation.aggregate(per_token, mask, "seq_mean_token_mean")

    value, grad = jax.value_and_grad(objective)(logp)
    np.testing.assert_allclose(value, -jnp.mean(adv), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("family", sorted(CLIPPED_LOSS_FAMILIES))
@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean"])
def test_masked_tokens_and_empty_sequences_contribute_nothing(family, mode):
  logp, adv, mask = _batch(3)
  mask = mask.at[1, 2].set(0.0)  # one fully masked sequence
  old = logp - 0.05
  loss_fn = CLIPPED_LOSS_FAMILIES[family][-1]
  # Finite garbage on masked positions (e.g. large log-ratios).
  junk = jnp.where(mask > 0, 0.0, 40.0)

  def objective(lp):
    return aggregation.aggregate(loss_fn(lp, old, adv, mask), mask, mode)

  value, grad = jax.value_and_grad(objective)(logp)
  value_junk, grad_junk = jax.value_and_grad(objective)(logp + junk)
  np.testing.assert_allclose(value_junk, value, rtol=1e-6)
  np.testing.assert_allclose(grad_junk, grad, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(grad)[np.asarray(mask) == 0], 0.0)
  assert float(jnp.max(jnp.abs(grad))) > 1e-3
  num, _ = aggregation.aggregate_parts(loss_fn(logp, old, adv, mask), mask, mode)
  num_without, _ = aggregation.aggregate_parts(
    loss_fn(logp, old, adv.at[1, 2].set(0.0), mask), mask, mode
  )
  np.testing.assert_allclose(num, num_without, rtol=1e-6)


# --- GSPO ---------------------------------------------------------------------------


def test_gspo_hand_example_sequence_ratio_is_length_normalised():
  logp = jnp.array([[0.01, 0.03, 5.0]])
  mask = jnp.array([[1.0, 1.0, 0.0]])
  adv = jnp.array([2.0])

  def objective(lp, token_level):
    loss = policy_losses.gspo(
      lp, jnp.zeros((1, 3)), adv, mask, eps_low=0.2, eps_high=0.2, token_level=token_level
    )
    return aggregation.aggregate(loss, mask, "seq_mean_token_mean"), loss

  s = np.exp(0.02)  # mean log-ratio over the two valid tokens
  for token_level in (False, True):
    (value, loss), grad = jax.value_and_grad(objective, has_aux=True)(logp, token_level)
    np.testing.assert_allclose(loss, [[-2 * s, -2 * s, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(value, -2 * s, rtol=1e-6)
    # d(-A s)/d logp_t = -A s / |y| = -s on valid tokens.
    np.testing.assert_allclose(grad, [[-s, -s, 0.0]], rtol=1e-6)


def test_gspo_default_clip_is_tight():
  logp = jnp.array([[0.1, 0.3, 9.0]])
  loss = policy_losses.gspo(logp, jnp.zeros((1, 3)), jnp.array([1.0]), jnp.array([[1.0, 1.0, 0.0]]))
  np.testing.assert_allclose(loss, [[-1.0004, -1.0004, 0.0]], rtol=1e-6)


@pytest.mark.parametrize("token_level", [False, True])
def test_gspo_with_one_token_per_sequence_equals_ppo_clip(token_level):
  rng = np.random.default_rng(4)
  logp = jnp.asarray(rng.normal(size=(4, 6, 1)), jnp.float32)
  old = logp + jnp.asarray(rng.uniform(-0.5, 0.5, size=(4, 6, 1)), jnp.float32)
  adv = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
  mask = jnp.ones((4, 6, 1))

  def gspo_sum(lp):
    return jnp.sum(
      policy_losses.gspo(lp, old, adv, mask, eps_low=0.2, eps_high=0.28, token_level=token_level)
    )

  def ppo_sum(lp):
    return jnp.sum(policy_losses.ppo_clip(lp, old, adv[..., None], eps_low=0.2, eps_high=0.28))

  np.testing.assert_allclose(
    policy_losses.gspo(logp, old, adv, mask, eps_low=0.2, eps_high=0.28, token_level=token_level),
    policy_losses.ppo_clip(logp, old, adv[..., None], eps_low=0.2, eps_high=0.28),
    rtol=1e-6,
  )
  grad_ppo = jax.grad(ppo_sum)(logp)
  assert int(jnp.sum(grad_ppo == 0)) > 0  # some tokens are clipped
  np.testing.assert_allclose(jax.grad(gspo_sum)(logp), grad_ppo, rtol=1e-5)


def test_gspo_token_matches_sequence_gspo_value_and_gradient():
  logp, adv, mask = _batch(5)
  rng = np.random.default_rng(5)
  old = logp + jnp.asarray(rng.uniform(-0.3, 0.3, size=logp.shape), jnp.float32)

  def objective(lp, token_level):
    loss = policy_losses.gspo(
      lp, old, adv, mask, eps_low=0.1, eps_high=0.1, token_level=token_level
    )
    return aggregation.aggregate(loss, mask, "seq_mean_token_mean")

  seq_value, seq_grad = jax.value_and_grad(objective)(logp, False)
  tok_value, tok_grad = jax.value_and_grad(objective)(logp, True)
  np.testing.assert_allclose(tok_value, seq_value, rtol=1e-6)
  np.testing.assert_allclose(tok_grad, seq_grad, rtol=1e-5, atol=1e-7)
  assert int(jnp.sum(jnp.any(seq_grad != 0, axis=-1))) > 0


def test_gspo_token_accepts_per_token_advantages():
  logp = jnp.log(jnp.array([[1.0, 1.0]]))
  adv = jnp.array([[1.0, -3.0]])
  grad = jax.grad(
    lambda lp: jnp.sum(
      policy_losses.gspo(lp, jnp.zeros((1, 2)), adv, jnp.ones((1, 2)), token_level=True)
    )
  )(logp)
  np.testing.assert_allclose(grad, -adv, rtol=1e-6)


def test_gspo_is_nan_safe_on_padding():
  logp = jnp.array([[0.0, jnp.nan]])
  mask = jnp.array([[1.0, 0.0]])
  for token_level in (False, True):
    value, grad = jax.value_and_grad(
      lambda lp: aggregation.aggregate(
        policy_losses.gspo(lp, jnp.zeros((1, 2)), jnp.array([1.0]), mask, token_level=token_level),
        mask,
        "token_mean",
      )
    )(logp)
    np.testing.assert_allclose(value, -1.0)
    np.testing.assert_array_equal(grad, [[-1.0, 0.0]])


def test_gspo_jit_and_vmap():
  logp, adv, mask = _batch(6)
  old = logp - 0.01
  fn = lambda lp, m, a: policy_losses.gspo(lp, old[0], a, m, token_level=True)
  eager = jnp.stack([fn(logp[i], mask[i], adv[i]) for i in range(B)])
  np.testing.assert_allclose(jax.jit(jax.vmap(fn))(logp, mask, adv), eager, rtol=1e-6)
