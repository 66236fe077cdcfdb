"""Reward shaping applied before advantages: pure functions of per-sample quantities."""

import jax
import jax.numpy as jnp

from rl_jax.objectives.kl import kl_k1


def soft_overlong_penalty(lengths_N: jax.Array, *, max_len: int, cache_len: int) -> jax.Array:
  """DAPO's soft overlong punishment (arXiv:2503.14476, eq. 13), added to the task reward.

  Formula, with L = |y|, L_max = `max_len`, L_cache = `cache_len`:
    0                                   if L <= L_max - L_cache
    ((L_max - L_cache) - L) / L_cache   if L_max - L_cache < L <= L_max
    -1                                  if L > L_max

  Args:
    lengths_N: completion lengths in tokens (any shape).
    max_len: L_max, typically the maximum number of new tokens.
    cache_len: L_cache > 0, the width of the linear ramp before L_max.

  Returns:
    float32 penalties, same shape as `lengths_N`, in [-1, 0].

  Example (the DAPO setting L_max=20480, L_cache=4096):
    >>> soft_overlong_penalty(jnp.array([16384, 18432, 20480]), max_len=20480, cache_len=4096)
    Array([ 0. , -0.5, -1. ], dtype=float32)
  """
  if cache_len <= 0 or cache_len > max_len:
    raise ValueError(f"cache_len must be in (0, max_len={max_len}], got {cache_len}")
  length = jnp.asarray(lengths_N, jnp.float32)
  start = float(max_len - cache_len)
  ramp = (start - length) / float(cache_len)
  return jnp.where(length <= start, 0.0, jnp.where(length <= max_len, ramp, -1.0))


def token_level_rewards(
  rewards_N: jax.Array,
  mask_NxT: jax.Array,
  *,
  kl_NxT: jax.Array | None = None,
  kl_coef: float = 0.0,
) -> jax.Array:
  """Per-token rewards: the sequence reward on its last valid token, minus `kl_coef * KL` on
  every valid token (KL folded into the reward, as in PPO for RLHF and REINFORCE++).

  Formula: r_t = R * 1[t = last valid] - kl_coef * kl_t * m_t.

  Args:
    rewards_N: sequence rewards [N].
    mask_NxT: 1 on valid completion tokens [N, T] (a prefix of each row, as after sampling).
    kl_NxT: per-token KL estimates (e.g. k1 = logp - ref_logp), or None.
    kl_coef: its weight.

  Returns:
    float32 [N, T]; 0 where the mask is 0. A row with no valid token gets no reward.

  Example:
    >>> token_level_rewards(jnp.array([1.0]), jnp.array([[1., 1., 0.]]))
    Array([[0., 1., 0.]], dtype=float32)
  """
  mask = jnp.asarray(mask_NxT, jnp.float32)
  T = mask.shape[-1]
  # Index of the last valid token (valid positions form a prefix after sampling; in general the
  # last position whose mask is 1).
  last = T - 1 - jnp.argmax(mask[..., ::-1], axis=-1)
  has_any = mask.sum(-1) > 0
  onehot = (jnp.arange(T) == last[..., None]) & has_any[..., None]
  r = onehot * jnp.asarray(rewards_N, jnp.float32)[..., None]
  if kl_NxT is not None and kl_coef:
    r = r - kl_coef * jnp.asarray(kl_NxT, jnp.float32) * mask
  return r * mask


def sequence_kl_penalized_rewards(
  rewards_BxG: jax.Array,
  logp_NxT: jax.Array,
  ref_logp_NxT: jax.Array,
  mask_NxT: jax.Array,
  *,
  kl_coef: float,
) -> jax.Array:
  """Sequence rewards with the KL to the reference folded in, for group estimators.

  Formula: R_i - kl_coef * sum_t m_t (logp_t - ref_logp_t), i.e. the k1 estimate of
  KL(pi || pi_ref) of sequence i, summed over its valid tokens. Rows are prompt-major:
  row b*G + g of the [N, T] arrays is sample g of prompt b.

  Args:
    rewards_BxG: task rewards.
    logp_NxT, ref_logp_NxT: behaviour and reference log-probs of the sampled tokens, N = B*G.
    mask_NxT: 1 on valid tokens.
    kl_coef: the KL weight.

  Returns:
    float32 [B, G].

  Example:
    >>> sequence_kl_penalized_rewards(jnp.array([[1.0, 0.0]]), jnp.array([[-1.0], [-1.0]]),
    ...                               jnp.array([[-1.5], [-0.5]]), jnp.ones((2, 1)), kl_coef=0.1)
    Array([[0.95, 0.05]], dtype=float32)
  """
  rewards = jnp.asarray(rewards_BxG, jnp.float32)
  kl_N = jnp.sum(kl_k1(logp_NxT, ref_logp_NxT) * jnp.asarray(mask_NxT, jnp.float32), axis=-1)
  return rewards - kl_coef * kl_N.reshape(rewards.shape)
