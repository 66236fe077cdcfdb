"""Advantage estimators: group-relative baselines, GAE, returns-to-go, whitening.

All functions are pure functions of arrays: no state, no jit at definition, and
safe under `jax.jit` and `jax.vmap`. Group-relative estimators reduce over the
*last* axis (the group axis `G`); sequence estimators run over the last axis
(the token axis `T`). Any leading dimensions are treated as independent rows.
"""

import jax
import jax.numpy as jnp

from rl_jax.objectives._checks import as_float, check_rank, check_same_shape


def _group_stats(r, mask):
  """(count, mean, centred) over the last axis, restricted to `mask` (None = every entry)."""
  if mask is None:
    count = jnp.full(r.shape[:-1] + (1,), r.shape[-1], r.dtype)
    mean = jnp.mean(r, axis=-1, keepdims=True)
    return count, mean, r - mean
  m = jnp.asarray(mask, r.dtype)
  count = jnp.sum(m, axis=-1, keepdims=True)
  mean = jnp.sum(r * m, axis=-1, keepdims=True) / jnp.maximum(count, 1.0)
  return count, mean, jnp.where(m > 0, r - mean, 0.0)


def grpo_advantages(
  rewards_BxG: jax.Array,
  *,
  scale_by_std: bool = True,
  ddof: int = 1,
  eps: float = 1e-6,
  mask_BxG: jax.Array | None = None,
) -> jax.Array:
  """Group-relative (GRPO) advantages: rewards standardised within each group.

  Formula, for each group `g` of `G` samples:

    A_i = (r_i - mean_g(r)) / (std_g(r) + eps)     if scale_by_std (GRPO)
    A_i =  r_i - mean_g(r)                          otherwise (Dr. GRPO)

  with `std_g = sqrt(sum_g (r - mean_g)^2 / (G - ddof))`.

  Conventions (peers differ here):
    * `ddof=1` (unbiased std, the DeepSeekMath / TRL default); `ddof=0` gives
      the population std.
    * `eps` is added to the std (not to the variance), default 1e-6.
    * A group whose std is undefined (`G <= ddof`, e.g. a group of one sample
      with `ddof=1`) gets advantage exactly 0, never NaN. A group of one
      sample always gets 0 (its centred reward is 0).
    * A constant group gets 0 (numerator is exactly 0).
    * With `mask_BxG`, groups of unequal size padded to a common G: only entries
      where the mask is 1 count (G above is each group's own count), and padded
      entries get 0.

  Args:
    rewards_BxG: rewards, shape `[..., G]`; the group is the last axis.
    scale_by_std: divide by the group std (GRPO); `False` is Dr. GRPO.
    ddof: delta degrees of freedom of the std.
    eps: added to the std before dividing.
    mask_BxG: optional 0/1 validity of each entry (same shape as the rewards).

  Returns:
    adv_BxG: advantages with the shape and (at least float32) dtype of the
    rewards. Each group sums to zero.

  References:
    Shao et al., DeepSeekMath (GRPO), arXiv:2402.03300.
    Liu et al., Understanding R1-Zero-Like Training (Dr. GRPO), arXiv:2503.20783.

  Example:
    >>> r = jnp.array([[1., 0., 0., 0.]])
    >>> grpo_advantages(r)
    Array([[ 1.5, -0.5, -0.5, -0.5]], dtype=float32)
    >>> grpo_advantages(r, scale_by_std=False)
    Array([[ 0.75, -0.25, -0.25, -0.25]], dtype=float32)
    >>> grpo_advantages(r, mask_BxG=jnp.array([[1., 1., 0., 0.]]))
    Array([[ 0.70710576, -0.70710576,  0.        ,  0.        ]], dtype=float32)
  """
  check_rank(rewards_BxG, 1, "rewards_BxG")
  r = as_float(rewards_BxG)
  if mask_BxG is not None:
    check_same_shape(rewards_BxG=rewards_BxG, mask_BxG=mask_BxG)
  count, _, centred = _group_stats(r, mask_BxG)
  defined = count > (max(ddof, 1) if scale_by_std else 1)
  if not scale_by_std:
    return jnp.where(defined, centred, 0.0)
  var = jnp.sum(centred**2, axis=-1, keepdims=True) / jnp.maximum(count - ddof, 1.0)
  return jnp.where(defined, centred / (jnp.sqrt(var) + eps), 0.0)


def rloo_advantages(rewards_BxG: jax.Array, *, mask_BxG: jax.Array | None = None) -> jax.Array:
  """Leave-one-out (RLOO) advantages: each reward minus the mean of the others.

  Formula: A_i = r_i - (1/(G-1)) sum_{j != i} r_j = G/(G-1) * (r_i - mean_g(r)).

  Convention: a group of one sample (`G == 1`) has no other samples to form a
  baseline and gets advantage exactly 0. With `mask_BxG` (groups of unequal
  size padded to a common G) G is each group's own count; padded entries get 0.

  Args:
    rewards_BxG: rewards, shape `[..., G]`; the group is the last axis.
    mask_BxG: optional 0/1 validity of each entry.

  Returns:
    adv_BxG: advantages, same shape; each group sums to zero.

  References:
    Ahmadian et al., Back to Basics: Revisiting REINFORCE Style Optimization
    for Learning from Human Feedback in LLMs, arXiv:2402.14740.

  Example:
    >>> rloo_advantages(jnp.array([[1., 0., 0., 0.]]))
    Array([[ 1.        , -0.33333334, -0.33333334, -0.33333334]], dtype=float32)
  """
  check_rank(rewards_BxG, 1, "rewards_BxG")
  r = as_float(rewards_BxG)
  if mask_BxG is not None:
    check_same_shape(rewards_BxG=rewards_BxG, mask_BxG=mask_BxG)
  count, _, centred = _group_stats(r, mask_BxG)
  return jnp.where(count > 1, centred * count / jnp.maximum(count - 1.0, 1.0), 0.0)


def gae(
  rewards_BxT: jax.Array,
  values_BxT: jax.Array,
  mask_BxT: jax.Array,
  *,
  gamma: float = 1.0,
  lam: float = 0.95,
) -> tuple[jax.Array, jax.Array]:
  """Generalised advantage estimation over the valid tokens of each sequence.

  Formula, over the valid positions t < t' < ... (t' = next valid position):

    delta_t = r_t + gamma * V_{t'} - V_t
    A_t     = delta_t + gamma * lam * A_{t'}
    R_t     = A_t + V_t

  with `V` and `A` after the last valid position equal to 0 (the episode ends
  at the last generated token). Computed with a reverse `lax.scan` over `T`.

  Convention for the mask (peers differ): masked positions are *skipped*. A
  masked position carries nothing into the recursion: the next valid token's
  value and advantage bootstrap straight across it, and `gamma` is applied
  once per valid step, not per position. This matters for interior zeros, such
  as tool-output tokens the policy did not generate. Rewards and values at
  masked positions are ignored (place rewards on valid tokens), and masked
  positions get advantage 0 and return 0. Trailing padding is the special case
  of masked positions after the last valid one.

  Gradients are not stopped; compute advantages outside the loss (or wrap the
  result in `jax.lax.stop_gradient`) when they are used as targets.

  Args:
    rewards_BxT: per-token rewards, shape `[..., T]`.
    values_BxT: critic values `V_t`, shape `[..., T]`.
    mask_BxT: 1 on valid (policy-generated) tokens, 0 elsewhere, `[..., T]`.
    gamma: discount per valid step.
    lam: GAE lambda; `lam=1` gives Monte-Carlo returns minus values, `lam=0`
      one-step TD errors.

  Returns:
    (adv_BxT, returns_BxT): advantages and value targets, shape `[..., T]`,
    both 0 on masked positions.

  References:
    Schulman et al., High-Dimensional Continuous Control Using Generalized
    Advantage Estimation, arXiv:1506.02438.

  Example:
    >>> adv, ret = gae(jnp.array([[0., 0., 1.]]), jnp.array([[.5, .6, .7]]),
    ...                jnp.ones((1, 3)), gamma=0.9, lam=0.8)
    >>> adv
    Array([[0.21712, 0.246, 0.3]], dtype=float32)
  """
  check_rank(rewards_BxT, 1, "rewards_BxT")
  check_same_shape(rewards_BxT=rewards_BxT, values_BxT=values_BxT, mask_BxT=mask_BxT)
  rewards = as_float(rewards_BxT)
  values = as_float(values_BxT).astype(rewards.dtype)
  valid = jnp.asarray(mask_BxT) != 0

  def step(carry, inputs):
    next_value, next_adv = carry
    r_t, v_t, valid_t = inputs
    delta = r_t + gamma * next_value - v_t
    adv_t = jnp.where(valid_t, delta + gamma * lam * next_adv, 0.0)
    carry = (jnp.where(valid_t, v_t, next_value), jnp.where(valid_t, adv_t, next_adv))
    return carry, adv_t

  time_major = lambda x: jnp.moveaxis(x, -1, 0)
  zeros = jnp.zeros(rewards.shape[:-1], rewards.dtype)
  _, adv_TxB = jax.lax.scan(
    step, (zeros, zeros), (time_major(rewards), time_major(values), time_major(valid)), reverse=True
  )
  adv = jnp.moveaxis(adv_TxB, 0, -1)
  returns = jnp.where(valid, adv + values, 0.0)
  return adv, returns


def discounted_returns(
  rewards_BxT: jax.Array,
  mask_BxT: jax.Array,
  *,
  gamma: float = 1.0,
) -> jax.Array:
  """Discounted return-to-go over the valid tokens (REINFORCE++ advantages).

  Formula, over valid positions with t' the next valid position:

    G_t = r_t + gamma * G_{t'},    G after the last valid position = 0.

  Convention: as in `gae`, masked positions are skipped (their rewards are
  ignored, they carry nothing and do not count as a discount step) and get 0.
  Equals `gae(rewards, 0, mask, gamma=gamma, lam=1)[0]`. REINFORCE++ then
  whitens these returns over the batch with `whiten`.

  Args:
    rewards_BxT: per-token rewards (e.g. task reward at EOS minus beta * KL per
      token), shape `[..., T]`.
    mask_BxT: 1 on valid tokens, 0 elsewhere, `[..., T]`.
    gamma: discount per valid step.

  Returns:
    returns_BxT: return-to-go, `[..., T]`, 0 on masked positions.

  References:
    Hu, REINFORCE++: A Simple and Efficient Approach for Aligning Large
    Language Models, arXiv:2501.03262.

  Example:
    >>> discounted_returns(jnp.array([[0., 0., 1.]]), jnp.ones((1, 3)),
    ...                    gamma=0.9)
    Array([[0.81, 0.9 , 1.  ]], dtype=float32)
  """
  check_rank(rewards_BxT, 1, "rewards_BxT")
  check_same_shape(rewards_BxT=rewards_BxT, mask_BxT=mask_BxT)
  rewards = as_float(rewards_BxT)
  valid = jnp.asarray(mask_BxT) != 0

  def step(next_return, inputs):
    r_t, valid_t = inputs
    return_t = r_t + gamma * next_return
    return (jnp.where(valid_t, return_t, next_return), jnp.where(valid_t, return_t, 0.0))

  _, returns_TxB = jax.lax.scan(
    step,
    jnp.zeros(rewards.shape[:-1], rewards.dtype),
    (jnp.moveaxis(rewards, -1, 0), jnp.moveaxis(valid, -1, 0)),
    reverse=True,
  )
  return jnp.moveaxis(returns_TxB, 0, -1)


def whiten(
  x: jax.Array,
  mask: jax.Array,
  *,
  shift_mean: bool = True,
  eps: float = 1e-8,
) -> jax.Array:
  """Whitens `x` with the mean and variance of its valid positions.

  Formula, with mean `mu` and population variance `var` over positions where
  `mask != 0` (all of them, across every axis, i.e. over the whole batch):

    y = (x - mu) / sqrt(var + eps)          if shift_mean
    y = (x - mu) / sqrt(var + eps) + mu     otherwise (rescaled, mean kept)

  Conventions: population variance (ddof=0); `eps` is added to the variance;
  masked positions return 0 and do not influence `mu` or `var`. With no valid
  position the result is all zeros.

  Args:
    x: values to whiten (e.g. advantages), any shape.
    mask: 1 on valid positions, 0 elsewhere, same shape as `x`.
    shift_mean: if False, the mean is added back so only the scale changes.
    eps: added to the variance.

  Returns:
    Whitened values, same shape as `x`, 0 on masked positions.

  References:
    Used for PPO advantages (Ouyang et al., InstructGPT, arXiv:2203.02155) and
    REINFORCE++ (arXiv:2501.03262).

  Example:
    >>> whiten(jnp.array([1., 3., 100.]), jnp.array([1., 1., 0.]))
    Array([-1.,  1.,  0.], dtype=float32)
  """
  check_same_shape(x=x, mask=mask)
  x = as_float(x)
  valid = jnp.asarray(mask) != 0
  count = jnp.maximum(jnp.sum(valid), 1).astype(x.dtype)
  x = jnp.where(valid, x, 0.0)
  mean = jnp.sum(x) / count
  var = jnp.sum(jnp.where(valid, (x - mean) ** 2, 0.0)) / count
  y = (x - mean) * jax.lax.rsqrt(var + eps)
  if not shift_mean:
    y = y + mean
  return jnp.where(valid, y, 0.0)
