"""Tests of rl_jax.objectives.kl: estimator values, unbiasedness, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax.objectives import kl

ESTIMATORS = [kl.kl_k1, kl.kl_k2, kl.kl_k3]


def test_hand_values_p_half_ref_quarter():
  logp, ref = jnp.log(jnp.array([0.5])), jnp.log(jnp.array([0.25]))
  np.testing.assert_allclose(kl.kl_k1(logp, ref), [np.log(2.0)], rtol=1e-6)
  np.testing.assert_allclose(kl.kl_k2(logp, ref), [0.5 * np.log(2.0) ** 2], rtol=1e-6)
  # x = log(0.25/0.5) = -log 2: exp(x) - x - 1 = 0.5 + 0.693147 - 1.
  np.testing.assert_allclose(kl.kl_k3(logp, ref), [0.19315], atol=1e-5)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_zero_at_equal_log_probs(estimator):
  logp = jnp.array([[-0.1, -2.0, -7.5]])
  np.testing.assert_array_equal(estimator(logp, logp), np.zeros((1, 3)))


@pytest.mark.parametrize("estimator", [kl.kl_k2, kl.kl_k3])
def test_k2_k3_have_zero_gradient_at_equal_log_probs(estimator):
  ref = jnp.array([-0.1, -2.0, -7.5])
  grad = jax.grad(lambda lp: jnp.sum(estimator(lp, ref)))(ref)
  np.testing.assert_array_equal(grad, np.zeros(3))


def test_k1_gradient_is_one_per_sample_but_zero_in_expectation():
  z = jnp.array([0.3, -1.0, 2.0, 0.1])
  ref = jax.nn.log_softmax(z)
  per_sample = jax.grad(lambda lp: jnp.sum(kl.kl_k1(lp, ref)))(ref)
  np.testing.assert_array_equal(per_sample, np.ones(4))

  def expected_k1(logits):  # E_{y ~ sg(pi)}[k1(y)] as a function of logits
    logp = jax.nn.log_softmax(logits)
    return jnp.sum(jax.lax.stop_gradient(jnp.exp(logp)) * kl.kl_k1(logp, ref))

  np.testing.assert_allclose(jax.grad(expected_k1)(z), 0.0, atol=1e-6)


@pytest.mark.parametrize("estimator", [kl.kl_k1, kl.kl_k3])
def test_unbiased_for_exact_kl(estimator):
  rng = np.random.default_rng(0)
  logp = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(3, 11))))
  ref = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(3, 11))))
  exact = jnp.sum(jnp.exp(logp) * (logp - ref), axis=-1)
  expectation = jnp.sum(jnp.exp(logp) * estimator(logp, ref), axis=-1)
  np.testing.assert_allclose(expectation, exact, rtol=1e-5)
  assert float(jnp.min(exact)) > 0.05


def test_k2_k3_nonnegative_and_k3_clamped():
  rng = np.random.default_rng(1)
  logp = jnp.asarray(rng.normal(scale=5.0, size=100), jnp.float32)
  ref = jnp.asarray(rng.normal(scale=5.0, size=100), jnp.float32)
  assert float(jnp.min(kl.kl_k2(logp, ref))) >= 0.0
  assert float(jnp.min(kl.kl_k3(logp, ref))) >= 0.0
  # ref_logp - logp = 100 is clamped to 20: finite value, zero gradient.
  value, grad = jax.value_and_grad(lambda lp: kl.kl_k3(lp, jnp.zeros(1))[0])(jnp.array([-100.0]))
  np.testing.assert_allclose(value, np.expm1(20.0) - 20.0, rtol=1e-6)
  assert grad[0] == 0.0


def test_shape_mismatch_raises():
  with pytest.raises(ValueError, match="same shape"):
    kl.kl_k3(jnp.zeros((2, 3)), jnp.zeros((3,)))


# --- entropy ---------------------------------------------------------------------


def test_entropy_matches_definition():
  rng = np.random.default_rng(2)
  logits = rng.normal(scale=3.0, size=(2, 3, 17)).astype(np.float32)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  expected = -np.sum(p * np.log(p), axis=-1)
  got = kl.entropy_from_logits(logits)
  assert got.shape == (2, 3)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_entropy_uniform_and_peaked_and_stable():
  np.testing.assert_allclose(kl.entropy_from_logits(jnp.zeros(8)), np.log(8.0), rtol=1e-6)
  peaked = kl.entropy_from_logits(jnp.array([1e4, 0.0, 0.0]))
  np.testing.assert_allclose(peaked, 0.0, atol=1e-6)
  huge = kl.entropy_from_logits(jnp.array([1e30, 1e30]))
  np.testing.assert_allclose(huge, np.log(2.0), rtol=1e-6)


def test_entropy_with_banned_tokens_and_bf16():
  logits = jnp.array([0.0, 0.0, -jnp.inf])
  np.testing.assert_allclose(kl.entropy_from_logits(logits), np.log(2.0), rtol=1e-6)
  out = kl.entropy_from_logits(jnp.zeros((2, 4), jnp.bfloat16))
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, np.log(4.0), rtol=1e-6)


def test_entropy_jit_and_vmap():
  logits = np.random.default_rng(3).normal(size=(4, 9)).astype(np.float32)
  eager = kl.entropy_from_logits(logits)
  np.testing.assert_allclose(jax.jit(kl.entropy_from_logits)(logits), eager, rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(kl.entropy_from_logits)(logits), eager, rtol=1e-6)
