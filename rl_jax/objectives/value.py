"""Critic losses for PPO-style training."""

import jax
import jax.numpy as jnp

from rl_jax.objectives._checks import as_float


def clipped_value_loss(
  values: jax.Array,
  old_values: jax.Array,
  returns: jax.Array,
  *,
  eps: float,
) -> jax.Array:
  """PPO clipped value loss per token.

  Formula:

    V_clip = V_old + clip(V - V_old, -eps, eps)
    loss   = 0.5 * max((V - R)^2, (V_clip - R)^2)

  The pessimistic max keeps the critic from moving more than `eps` away from
  the values that produced the advantages. Returns the unreduced loss; reduce
  it with `aggregation.aggregate` over the valid tokens.

  Args:
    values: current critic values `V`, `[..., T]`.
    old_values: critic values at rollout time `V_old`, same shape (constants).
    returns: value targets `R` (e.g. from `gae`), same shape (constants).
    eps: clip range of the value change (keyword only, no default: it depends
      on the reward scale).

  Returns:
    Per-token loss, same shape as `values`.

  References:
    Schulman et al., PPO, arXiv:1707.06347 (as implemented in OpenAI
    baselines); Ouyang et al., InstructGPT, arXiv:2203.02155.

  Example:
    >>> clipped_value_loss(jnp.array([1., 1.]), jnp.array([.5, .5]),
    ...                    jnp.array([2., 0.]), eps=0.2)
    Array([0.845, 0.5  ], dtype=float32)
  """
  shapes = {jnp.shape(values), jnp.shape(old_values), jnp.shape(returns)}
  if len(shapes) != 1:
    raise ValueError(
      "values, old_values and returns must have the same shape, got "
      f"{jnp.shape(values)}, {jnp.shape(old_values)}, {jnp.shape(returns)}."
    )
  values, old_values, returns = (as_float(values), as_float(old_values), as_float(returns))
  values_clipped = old_values + jnp.clip(values - old_values, -eps, eps)
  return 0.5 * jnp.maximum(jnp.square(values - returns), jnp.square(values_clipped - returns))
