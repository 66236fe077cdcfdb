"""Per-token policy-gradient surrogate losses: PPO clip (with dual clip) and GSPO.

Every loss here returns an *unreduced* per-token array of shape `[..., T]`
(a quantity to minimise). Reducing it to a scalar is a separate, explicit step:
`aggregation.aggregate(loss, mask, mode)`, which zeroes masked tokens with
`where`: finite garbage log-probs on padding then contribute nothing to the
loss or its gradient. `gspo` takes the mask itself (its ratio is a mean over
the valid tokens) and is safe even against NaN on padding; `ppo_clip` is
mask-free, so NaN log-probs on padding would still reach the gradient.
"""

import numbers

import jax
import jax.numpy as jnp

from rl_jax.objectives._checks import as_float, check_same_shape

# Bound on log-ratios before exponentiation (ratio in [e^-20, e^20]).
_LOG_RATIO_CLAMP = 20.0


def _check_broadcastable(adv: jax.Array, shape: tuple[int, ...]) -> None:
  try:
    out = jnp.broadcast_shapes(jnp.shape(adv), shape)
  except ValueError:
    out = None
  if out != tuple(shape):
    raise ValueError(
      f"adv of shape {jnp.shape(adv)} does not broadcast to the log-prob "
      f"shape {tuple(shape)}; for per-sequence advantages pass adv[..., None]."
    )


def _clipped_surrogate(ratio, adv, eps_low, eps_high):
  """-min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)."""
  clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
  return -jnp.minimum(ratio * adv, clipped * adv)


def ppo_clip(
  logp: jax.Array,
  old_logp: jax.Array,
  adv: jax.Array,
  *,
  eps_low: float = 0.2,
  eps_high: float = 0.2,
  dual_clip: float | None = None,
) -> jax.Array:
  """PPO clipped surrogate loss per token, with clip-higher and dual clip.

  Formula, per token:

    rho  = exp(clip(logp - old_logp, -20, 20))
    loss = -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A)
    loss = min(loss, -c * A)   where A < 0, if dual_clip = c  (c > 1)

  Conventions: the log-ratio is clamped to [-20, 20] before `exp`; the clip
  range may be asymmetric (DAPO clip-higher: eps_low=0.2, eps_high=0.28); dual
  clip bounds the loss of negative-advantage tokens whose ratio has exploded.
  At rho = 1 the loss is -A and its gradient is -A * grad(logp), whatever eps.

  Args:
    logp: per-token log-probs under the current policy, `[..., T]`.
    old_logp: per-token log-probs under the behaviour policy, same shape
      (treated as constants; stop their gradient if they come from params).
    adv: advantages broadcastable to `logp.shape`, e.g. `[..., T]` per token or
      `adv_BxG[..., None]` per sequence.
    eps_low: lower clip, the ratio is clipped at `1 - eps_low`.
    eps_high: upper clip, the ratio is clipped at `1 + eps_high`.
    dual_clip: the constant `c > 1` of dual-clip PPO, or None to disable.

  Returns:
    Per-token loss, same shape as `logp`, float32 or wider.

  References:
    Schulman et al., Proximal Policy Optimization Algorithms, arXiv:1707.06347;
    Ye et al., Mastering Complex Control in MOBA Games (dual clip),
    arXiv:1912.09729; Yu et al., DAPO (clip-higher), arXiv:2503.14476.

  Example:
    >>> logp = jnp.log(jnp.array([1.5, 0.5, 5.0]))   # old_logp = 0: rho = p
    >>> ppo_clip(logp, jnp.zeros(3), jnp.array([1., -1., -1.]),
    ...          dual_clip=3.0)
    Array([-1.2,  0.8,  3. ], dtype=float32)
  """
  check_same_shape(logp=logp, old_logp=old_logp)
  _check_broadcastable(adv, jnp.shape(logp))
  if dual_clip is not None and isinstance(dual_clip, numbers.Real):
    if dual_clip <= 1.0:
      raise ValueError(f"dual_clip must be > 1, got {dual_clip}.")
  logp, old_logp, adv = as_float(logp), as_float(old_logp), as_float(adv)
  log_ratio = jnp.clip(logp - old_logp, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
  loss = _clipped_surrogate(jnp.exp(log_ratio), adv, eps_low, eps_high)
  if dual_clip is not None:
    loss = jnp.where(adv < 0, jnp.minimum(loss, -dual_clip * adv), loss)
  return loss


def clip_fraction(
  logp: jax.Array,
  old_logp: jax.Array,
  adv: jax.Array,
  mask: jax.Array,
  *,
  eps_low: float = 0.2,
  eps_high: float = 0.2,
) -> jax.Array:
  """Fraction of valid tokens whose PPO surrogate is clipped (zero gradient).

  Formula: mean over valid tokens of
    1[(A > 0 and rho > 1 + eps_high) or (A < 0 and rho < 1 - eps_low)],
  i.e. the tokens where the clipped term is the active one in `ppo_clip`.
  With no valid token the fraction is 0. A metric: no gradient flows.

  Args:
    logp: per-token log-probs under the current policy, `[..., T]`.
    old_logp: per-token log-probs under the behaviour policy, same shape.
    adv: advantages broadcastable to `logp.shape`.
    mask: 1 on valid tokens, 0 elsewhere, same shape as `logp`.
    eps_low: lower clip of `ppo_clip`.
    eps_high: upper clip of `ppo_clip`.

  Returns:
    Scalar float32 in [0, 1].

  References:
    A standard PPO diagnostic (Schulman et al., arXiv:1707.06347).

  Example:
    >>> logp = jnp.log(jnp.array([1.5, 1.1, 0.5, 3.0]))
    >>> clip_fraction(logp, jnp.zeros(4), jnp.array([1., 1., -1., 1.]),
    ...               jnp.array([1., 1., 1., 0.]))
    Array(0.6666667, dtype=float32)
  """
  check_same_shape(logp=logp, old_logp=old_logp, mask=mask)
  _check_broadcastable(adv, jnp.shape(logp))
  logp, old_logp, adv = as_float(logp), as_float(old_logp), as_float(adv)
  log_ratio = jnp.clip(logp - old_logp, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
  ratio = jax.lax.stop_gradient(jnp.exp(log_ratio))
  clipped = ((adv > 0) & (ratio > 1.0 + eps_high)) | ((adv < 0) & (ratio < 1.0 - eps_low))
  valid = jnp.asarray(mask) != 0
  count = jnp.sum(valid)
  return jnp.sum(clipped & valid) / jnp.maximum(count, 1).astype(jnp.float32)


def gspo(
  logp: jax.Array,
  old_logp: jax.Array,
  adv_BxG_or_B: jax.Array,
  mask: jax.Array,
  *,
  eps_low: float = 3e-4,
  eps_high: float = 4e-4,
  token_level: bool = False,
) -> jax.Array:
  """GSPO loss per token: PPO clipping of a length-normalised sequence ratio.

  Formula, for sequence i with |y_i| valid tokens:

    s_i  = exp(clip((1/|y_i|) sum_t mask_t (logp_t - old_logp_t), -20, 20))
    loss_{i,t} = -min(s_i * A_i, clip(s_i, 1 - eps_low, 1 + eps_high) * A_i)

  on valid tokens and 0 on masked tokens (the sequence loss is broadcast over
  its valid tokens). Aggregate with mode `"seq_mean_token_mean"` to get the
  paper's objective, a mean over sequences of the sequence loss.

  GSPO-token (`token_level=True`):
    s_{i,t} = sg(s_i) * exp(logp_t - sg(logp_t))
  has the value of s_i but a per-token gradient, so token-level advantages
  A_{i,t} are possible. With A_{i,t} = A_i and `"seq_mean_token_mean"` it has
  the same value and gradient as sequence-level GSPO.

  Conventions: the log of the sequence ratio is clamped to [-20, 20]; a
  sequence with no valid token gets ratio 1 and loss 0. Defaults eps 3e-4 /
  4e-4 are the paper's. With one token per sequence this is `ppo_clip`.

  Args:
    logp: per-token log-probs under the current policy, `[..., T]`.
    old_logp: per-token log-probs under the behaviour policy, same shape.
    adv_BxG_or_B: advantages, either per sequence with shape `logp.shape[:-1]`
      (e.g. `[B, G]`), or any shape broadcastable to `logp.shape` (e.g. per
      token `[..., T]`).
    mask: 1 on valid tokens, 0 elsewhere, same shape as `logp`.
    eps_low: lower clip of the sequence ratio.
    eps_high: upper clip of the sequence ratio.
    token_level: use the GSPO-token form.

  Returns:
    Per-token loss, same shape as `logp`, 0 on masked tokens.

  References:
    Zheng et al., Group Sequence Policy Optimization, arXiv:2507.18071.

  Example:
    >>> logp = jnp.array([[0.1, 0.3, 9.0]])   # mean log-ratio 0.2: s = 1.2214
    >>> gspo(logp, jnp.zeros((1, 3)), jnp.array([1.]),
    ...      jnp.array([[1., 1., 0.]]))
    Array([[-1.0004, -1.0004,  0.    ]], dtype=float32)
  """
  check_same_shape(logp=logp, old_logp=old_logp, mask=mask)
  if jnp.ndim(logp) < 1:
    raise ValueError(f"logp must have rank >= 1, got shape {jnp.shape(logp)}.")
  adv = as_float(adv_BxG_or_B)
  if adv.ndim == jnp.ndim(logp) - 1:
    if adv.shape != jnp.shape(logp)[:-1]:
      raise ValueError(
        f"Per-sequence advantages must have shape {jnp.shape(logp)[:-1]}, got {adv.shape}."
      )
    adv = adv[..., None]
  _check_broadcastable(adv, jnp.shape(logp))
  logp, old_logp = as_float(logp), as_float(old_logp)
  valid = jnp.asarray(mask) != 0

  count = jnp.maximum(jnp.sum(valid, axis=-1, keepdims=True), 1)
  log_ratio_sum = jnp.sum(jnp.where(valid, logp - old_logp, 0.0), axis=-1, keepdims=True)
  log_seq_ratio = jnp.clip(
    log_ratio_sum / count.astype(logp.dtype), -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP
  )
  if token_level:
    # Value: s_i; gradient: s_i * grad(logp_t) for each token separately.
    token_offset = jnp.where(valid, logp - jax.lax.stop_gradient(logp), 0.0)
    ratio = jnp.exp(jax.lax.stop_gradient(log_seq_ratio) + token_offset)
  else:
    ratio = jnp.exp(log_seq_ratio)
  loss = _clipped_surrogate(ratio, adv, eps_low, eps_high)
  return jnp.where(valid, jnp.broadcast_to(loss, jnp.shape(logp)), 0.0)
