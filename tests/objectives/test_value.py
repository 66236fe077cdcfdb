"""Tests of rl_jax.objectives.value."""

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax.objectives import value


def test_clipped_value_loss_hand_values():
  values = jnp.array([1.0, 1.0, 0.6, 0.2])
  old_values = jnp.array([0.5, 0.5, 0.5, 0.5])
  returns = jnp.array([2.0, 0.0, 0.0, 0.0])
  loss = value.clipped_value_loss(values, old_values, returns, eps=0.2)
  # V=1 clipped to .7: R=2 -> .5*max(1, 1.69); R=0 -> .5*max(1, .49).
  # V=.6 is within [.3, .7]: .5*.36. V=.2 is clipped up to .3, further from
  # R=0: .5*max(.04, .09).
  np.testing.assert_allclose(loss, [0.845, 0.5, 0.18, 0.045], rtol=1e-6)


def test_clipped_value_loss_gradient():
  values = jnp.array([1.0, 1.0, 0.6])
  grad = jax.grad(
    lambda v: jnp.sum(
      value.clipped_value_loss(v, jnp.full(3, 0.5), jnp.array([2.0, 0.0, 0.0]), eps=0.2)
    )
  )(values)
  # Clipped term active and flat in V -> 0; else d .5 (V-R)^2 = V - R.
  np.testing.assert_allclose(grad, [0.0, 1.0, 0.6], rtol=1e-6)


def test_large_eps_is_plain_squared_error_and_jit():
  rng = np.random.default_rng(0)
  v, v_old, r = rng.normal(size=(3, 4, 6)).astype(np.float32)
  fn = lambda a, b, c: value.clipped_value_loss(a, b, c, eps=1e6)
  np.testing.assert_allclose(jax.jit(fn)(v, v_old, r), 0.5 * (v - r) ** 2, rtol=1e-5, atol=1e-6)
  loss = value.clipped_value_loss(v, v_old, r, eps=0.1)
  assert np.all(np.asarray(loss) >= 0.5 * (v - r) ** 2 - 1e-6)
