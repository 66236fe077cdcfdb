"""PAPO, UARM, RCC and the binary contrastive form (methods.md B1, B3, B4): values, identities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax.objectives.advantages import (
  binary_contrastive_advantages,
  grpo_advantages,
  papo_advantages,
  rcc_advantages,
  uarm_advantages,
)

RNG = np.random.default_rng(0)


# --- PAPO (B3) ------------------------------------------------------------------------------


def test_papo_hand_computed():
  # outcome GRPO (ddof 1): mean 0.75, std 0.5 -> [0.5, 0.5, 0.5, -1.5]; process among the three
  # correct: [1, 0.5, 0] -> mean 0.5, std 0.5 -> [1, 0, -1]; the wrong answer gets none.
  out = jnp.array([[1.0, 1.0, 1.0, 0.0]])
  proc = jnp.array([[1.0, 0.5, 0.0, 1.0]])
  np.testing.assert_allclose(papo_advantages(out, proc), [[1.5, 0.5, -0.5, -1.5]], rtol=1e-5)
  np.testing.assert_allclose(
    papo_advantages(out, proc, w_proc=0.5), [[1.0, 0.5, 0.0, -1.5]], rtol=1e-5
  )


@pytest.mark.parametrize("ddof", [0, 1])
def test_papo_with_constant_process_score_is_grpo(ddof):
  out = jnp.asarray(RNG.integers(0, 2, (16, 8)), jnp.float32)
  proc = jnp.full((16, 8), 0.7)
  np.testing.assert_allclose(
    papo_advantages(out, proc, ddof=ddof), grpo_advantages(out, ddof=ddof), atol=1e-6
  )
  np.testing.assert_array_equal(papo_advantages(out, proc), grpo_advantages(out))  # defaults


def test_papo_incorrect_samples_never_get_process_credit():
  out = jnp.asarray(RNG.integers(0, 2, (64, 8)), jnp.float32)
  proc = jnp.asarray(RNG.random((64, 8)), jnp.float32)
  extra = papo_advantages(out, proc) - grpo_advantages(out)
  assert np.all(np.asarray(extra)[np.asarray(out) == 0] == 0)
  # ... and the process term of the correct samples sums to zero in every group
  np.testing.assert_allclose(jnp.sum(extra, axis=-1), 0.0, atol=1e-5)


def test_papo_all_correct_group_still_learns_and_one_correct_gets_nothing_extra():
  out = jnp.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
  proc = jnp.array([[0.9, 0.5, 0.1], [0.9, 0.5, 0.1]])
  adv = np.asarray(papo_advantages(out, proc))
  assert np.all(grpo_advantages(out)[0] == 0) and np.abs(adv[0]).sum() > 1  # signal remains
  np.testing.assert_allclose(adv[1], grpo_advantages(out)[1])  # fewer than two correct


def test_papo_respects_the_mask():
  out = jnp.array([[1.0, 1.0, 0.0, 1.0]])
  proc = jnp.array([[1.0, 0.0, 0.3, 5.0]])
  mask = jnp.array([[1.0, 1.0, 1.0, 0.0]])
  adv = papo_advantages(out, proc, mask_BxG=mask)
  expect = grpo_advantages(out[:, :3])[0, :2] + grpo_advantages(proc[:, :2])[0]
  np.testing.assert_allclose(adv[0, :2], expect, rtol=1e-5)
  assert adv[0, 3] == 0


# --- UARM (B1) -------------------------------------------------------------------------------


def test_uarm_methods_example():
  r = jnp.array([[0.9, 0.3, 0.4, 0.2]])
  w = jnp.array([[1.2, 0.2, 0.2, 0.2]])
  np.testing.assert_allclose(uarm_advantages(r, w), [[0.444, -0.148, 0.189, -0.485]], atol=1e-3)
  # the reliabilities of methods.md: lambda ~ [0.215, 0.908, 0.908, 0.908]
  z = 1.6448536
  s2 = 0.0725 - np.mean((np.array([1.2, 0.2, 0.2, 0.2]) / (2 * z)) ** 2)
  lam = s2 / (s2 + (np.array([1.2, 0.2, 0.2, 0.2]) / (2 * z)) ** 2)
  np.testing.assert_allclose(lam, [0.215, 0.908, 0.908, 0.908], atol=1e-3)


def test_uarm_zero_width_is_grpo_ddof0_and_equal_widths_keep_its_order():
  r = jnp.asarray(RNG.random((32, 8)), jnp.float32)
  grpo0 = grpo_advantages(r, ddof=0)
  np.testing.assert_allclose(uarm_advantages(r, jnp.zeros_like(r)), grpo0, atol=1e-4)
  adv = uarm_advantages(r, jnp.full_like(r, 0.3))
  np.testing.assert_array_equal(jnp.argsort(adv, axis=-1), jnp.argsort(grpo0, axis=-1))


def test_uarm_wider_interval_strictly_shrinks_that_samples_advantage():
  for _ in range(20):
    r = jnp.asarray(RNG.random((1, 6)), jnp.float32)
    w = jnp.asarray(RNG.random((1, 6)) * 0.2, jnp.float32)
    i = int(RNG.integers(6))
    wider = w.at[0, i].add(0.3)
    assert abs(float(uarm_advantages(r, wider)[0, i])) < abs(float(uarm_advantages(r, w)[0, i]))


# --- RCC and the contrastive view (B4) ---------------------------------------------------------


def test_rcc_methods_example_and_flag():
  r, delta = jnp.array([[1.0, 1.0, 0.0, 0.0]]), jnp.array([[2.0, 0.0, 1.0, -1.0]])
  np.testing.assert_allclose(rcc_advantages(r, delta), [[0.0, 0.0, -1.0, -1.0]], atol=1e-7)
  # Cov = 0.25, b = 1.0; divided by std(r) = 0.5
  np.testing.assert_allclose(
    rcc_advantages(r, delta, normalize_std=True), [[0.0, 0.0, -2.0, -2.0]], rtol=1e-5
  )


def test_rcc_with_constant_delta_is_dr_grpo_and_delta_gets_no_gradient():
  r = jnp.asarray(RNG.random((8, 6)), jnp.float32)
  np.testing.assert_allclose(
    rcc_advantages(r, jnp.full_like(r, 3.0)), grpo_advantages(r, scale_by_std=False), atol=1e-6
  )
  delta = jnp.asarray(RNG.normal(size=(8, 6)), jnp.float32)
  grad = jax.grad(lambda d: jnp.sum(rcc_advantages(r, d) * r))(delta)
  np.testing.assert_array_equal(grad, 0.0)


def test_binary_contrastive_is_grpo_ddof0_and_the_margin_identity_holds():
  correct = jnp.asarray(RNG.integers(0, 2, (64, 8)), jnp.float32)
  adv = binary_contrastive_advantages(correct)
  mixed = np.asarray((correct.min(-1) == 0) & (correct.max(-1) == 1))
  grpo0 = grpo_advantages(correct, ddof=0, eps=0.0)
  np.testing.assert_allclose(adv[mixed], grpo0[mixed], atol=1e-5)
  rho = jnp.asarray(np.exp(RNG.normal(scale=0.3, size=(64, 8))), jnp.float32)
  G = correct.shape[-1]
  n_pos = jnp.sum(correct, -1)
  n_neg = G - n_pos
  mean_pos = jnp.sum(rho * correct, -1) / jnp.maximum(n_pos, 1)
  mean_neg = jnp.sum(rho * (1 - correct), -1) / jnp.maximum(n_neg, 1)
  margin = jnp.sqrt(n_pos * n_neg) / G * (mean_pos - mean_neg)
  np.testing.assert_allclose(jnp.sum(adv * rho, -1) / G, margin, atol=1e-5)
  uniform = jnp.array([[1, 1, 1], [0, 0, 0]])
  np.testing.assert_array_equal(binary_contrastive_advantages(uniform), 0.0)


def test_constant_groups_of_inexact_rewards_get_exactly_zero():
  # float32: eight rewards of 0.7 have a mean one bit off 0.7; the z-score used to give 0.056
  r = jnp.full((1, 8), 0.7)
  for ddof in (0, 1):
    np.testing.assert_array_equal(grpo_advantages(r, ddof=ddof), 0.0)
  mask = jnp.array([[1.0, 1, 1, 1, 1, 1, 1, 1]]).at[0, 0].set(0)
  np.testing.assert_array_equal(grpo_advantages(r.at[0, 0].set(5.0), mask_BxG=mask), 0.0)


def test_rcc_on_padded_groups_equals_each_group_alone():
  r = jnp.array([[1.0, 0.0, 1.0, 9.0], [0.5, 0.2, 0.1, 0.4]])
  delta = jnp.array([[0.3, -0.2, 1.0, 7.0], [1.0, 2.0, -1.0, 0.0]])
  mask = jnp.array([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
  adv = rcc_advantages(r, delta, mask_BxG=mask, normalize_std=True)
  np.testing.assert_allclose(
    adv[0, :3], rcc_advantages(r[:1, :3], delta[:1, :3], normalize_std=True)[0], rtol=1e-6
  )
  assert adv[0, 3] == 0
  np.testing.assert_allclose(adv[1], rcc_advantages(r[1:], delta[1:], normalize_std=True)[0])


def test_uarm_on_padded_groups_equals_each_group_alone():
  r = jnp.array([[0.9, 0.3, 0.4, 5.0], [0.9, 0.3, 0.4, 0.2]])
  w = jnp.array([[1.2, 0.2, 0.2, 9.0], [1.2, 0.2, 0.2, 0.2]])
  mask = jnp.array([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
  adv = uarm_advantages(r, w, mask_BxG=mask)
  np.testing.assert_allclose(adv[0, :3], uarm_advantages(r[:1, :3], w[:1, :3])[0], rtol=1e-5)
  assert adv[0, 3] == 0
  np.testing.assert_allclose(adv[1], uarm_advantages(r[1:], w[1:])[0], rtol=1e-6)


def test_constant_group_gets_zero_even_with_eps_zero():
  r = jnp.array([[0.7] * 8, [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]])
  adv = grpo_advantages(r, eps=0.0)
  assert np.all(np.isfinite(adv)) and np.all(adv[0] == 0)
  np.testing.assert_allclose(np.abs(adv[1]), np.sqrt(7 / 8) * 2 / 2, rtol=1e-6)
