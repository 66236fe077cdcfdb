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
  """(count, mean, centred) over the last axis, restricted to `mask` (None = every entry).

  A group whose (valid) rewards are all equal is centred to exactly 0: its float32 mean can
  differ from the value in the last bit (eight rewards of 0.7), which a z-score divided by the
  tiny std plus eps would blow up to advantages of about 0.06."""
  valid = jnp.ones(r.shape, bool) if mask is None else jnp.asarray(mask) > 0
  hi = jnp.max(jnp.where(valid, r, -jnp.inf), axis=-1, keepdims=True)
  lo = jnp.min(jnp.where(valid, r, jnp.inf), axis=-1, keepdims=True)
  constant = hi <= lo
  if mask is None:
    count = jnp.full(r.shape[:-1] + (1,), r.shape[-1], r.dtype)
    mean = jnp.mean(r, axis=-1, keepdims=True)
    return count, mean, jnp.where(constant, 0.0, r - mean)
  m = valid.astype(r.dtype)
  count = jnp.sum(m, axis=-1, keepdims=True)
  mean = jnp.sum(r * m, axis=-1, keepdims=True) / jnp.maximum(count, 1.0)
  return count, mean, jnp.where(valid & ~constant, r - mean, 0.0)


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
  scale = jnp.sqrt(var) + eps
  scale = jnp.where(scale > 0, scale, 1.0)  # a constant group with eps=0: 0 / 1, not 0 / 0
  return jnp.where(defined, centred / scale, 0.0)


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


def papo_advantages(
  outcome_BxG: jax.Array,
  process_BxG: jax.Array,
  *,
  w_proc: float = 1.0,
  correct_BxG: jax.Array | None = None,
  ddof: int = 1,
  eps: float = 1e-6,
  mask_BxG: jax.Array | None = None,
) -> jax.Array:
  """PAPO: decoupled outcome and process advantages.

  Formula, for each group of G samples:

    A_out  = grpo_advantages(outcome)                       over all samples
    A_proc = grpo_advantages(process) over the correct samples only,
             0 for incorrect samples and for groups with fewer than ddof + 1 correct
    A      = A_out + w_proc * A_proc

  The process score is normalised only among correct samples, so an incorrect answer never
  earns process credit and the process term cannot be hacked by wrong-but-verbose answers; an
  all-correct group (whose outcome advantages are all 0) still gets a signal from A_proc.

  Conventions: `correct_BxG` defaults to `outcome > 0.5` (binary outcome rewards);
  `ddof`, `eps` and the masking are `grpo_advantages`'s, so with a constant process score
  PAPO equals `grpo_advantages(outcome_BxG)` at both functions' defaults. `w_proc` (default
  1.0) is a design choice (methods.md B3); the paper adds the two terms.

  Args:
    outcome_BxG: outcome rewards (e.g. 1 correct, 0 not), shape `[..., G]`.
    process_BxG: process scores (e.g. share of correct intermediate steps), same shape.
    w_proc: weight of the process advantage.
    correct_BxG: optional bool/0-1 correctness; default `outcome_BxG > 0.5`.
    ddof, eps: as in `grpo_advantages`.
    mask_BxG: optional 0/1 validity of each entry.

  Returns:
    adv_BxG, the shape of the rewards.

  References:
    PAPO, decoupled advantage normalisation for process rewards, arXiv:2603.26535.

  Example:
    >>> out = jnp.array([[1., 1., 1., 0.]])
    >>> proc = jnp.array([[1.0, 0.5, 0.0, 1.0]])   # the wrong answer's steps look good
    >>> papo_advantages(out, proc)
    Array([[ 1.5, 0.5, -0.5, -1.5]], dtype=float32)
  """
  check_rank(outcome_BxG, 1, "outcome_BxG")
  check_same_shape(outcome_BxG=outcome_BxG, process_BxG=process_BxG)
  outcome = as_float(outcome_BxG)
  correct = outcome > 0.5 if correct_BxG is None else jnp.asarray(correct_BxG) > 0
  valid = correct if mask_BxG is None else correct & (jnp.asarray(mask_BxG) > 0)
  a_out = grpo_advantages(outcome, ddof=ddof, eps=eps, mask_BxG=mask_BxG)
  a_proc = grpo_advantages(process_BxG, ddof=ddof, eps=eps, mask_BxG=valid.astype(outcome.dtype))
  return a_out + w_proc * a_proc


def uarm_advantages(
  reward_median_BxG: jax.Array,
  interval_width_BxG: jax.Array,
  *,
  alpha: float = 0.1,
  eps: float = 1e-6,
  mask_BxG: jax.Array | None = None,
) -> jax.Array:
  """UARM: group advantages that trust each reward by the reward model's uncertainty.

  Formula, for each group of G samples with rewards r (the reward model's median) and
  calibrated interval widths w (at miscoverage `alpha`):

    sigma_i^2 = (w_i / (2 z_{1 - alpha/2}))^2            the noise variance of r_i
    v         = Var_g(r)                                  (population variance)
    s^2       = max(v - mean_g(sigma^2), eps)             the signal variance
    lambda_i  = s^2 / (s^2 + sigma_i^2)                   reliability in (0, 1]
    mu_w      = sum_g(lambda r) / sum_g(lambda)
    A_i       = lambda_i (r_i - mu_w) / sqrt(v + eps)

  A sample whose reward is uncertain gets a smaller advantage and weighs less in the baseline;
  as every width goes to 0 this is GRPO with ddof=0 (eps added to the variance, not the std).
  The noise-to-variance mapping assumes a Gaussian interval: a design choice (methods.md B1).

  Args:
    reward_median_BxG: the reward model's median score, shape `[..., G]`.
    interval_width_BxG: the calibrated interval width (q_hi - q_lo + 2Q), same shape, >= 0.
    alpha: the miscoverage the interval was calibrated for.
    eps: floor of the signal variance and added to the variance in the scale.
    mask_BxG: optional 0/1 validity of each entry (groups padded to a common G): the group
      statistics run over valid entries; padding gets advantage 0.

  Returns:
    adv_BxG, the shape of the rewards.

  References:
    UARM, uncertainty-aware reward normalisation, arXiv:2606.19818.

  Example:
    >>> r = jnp.array([[0.9, 0.3, 0.4, 0.2]])
    >>> w = jnp.array([[1.2, 0.2, 0.2, 0.2]])
    >>> jnp.round(uarm_advantages(r, w), 3)   # GRPO: [1.671, -0.557, -0.186, -0.929]
    Array([[ 0.444, -0.148,  0.189, -0.485]], dtype=float32)
  """
  check_rank(reward_median_BxG, 1, "reward_median_BxG")
  check_same_shape(reward_median_BxG=reward_median_BxG, interval_width_BxG=interval_width_BxG)
  r, w = as_float(reward_median_BxG), as_float(interval_width_BxG)
  m = jnp.ones_like(r) if mask_BxG is None else (jnp.asarray(mask_BxG) > 0).astype(r.dtype)
  count = jnp.maximum(jnp.sum(m, axis=-1, keepdims=True), 1.0)
  mean_g = lambda x: jnp.sum(m * x, axis=-1, keepdims=True) / count
  z = jax.scipy.special.ndtri(1.0 - alpha / 2.0)
  sigma2 = (w / (2.0 * z)) ** 2
  mean = mean_g(r)
  var = mean_g((r - mean) ** 2)
  s2 = jnp.maximum(var - mean_g(sigma2), eps)
  lam = m * s2 / (s2 + sigma2)
  mu_w = jnp.sum(lam * r, axis=-1, keepdims=True) / jnp.maximum(
    jnp.sum(lam, axis=-1, keepdims=True), eps
  )
  return lam * (r - mu_w) / jnp.sqrt(var + eps)


def rcc_advantages(
  rewards_BxG: jax.Array,
  seq_logratio_to_ref_BxG: jax.Array,
  *,
  normalize_std: bool = False,
  eps: float = 1e-6,
  mask_BxG: jax.Array | None = None,
) -> jax.Array:
  """RCC: reward-confidence correction of the group baseline (Right meets wrong).

  Formula, for each group with rewards r and sequence log-ratios to the reference policy
  delta_i = log pi(y_i|x) - log pi_ref(y_i|x) (treated as constants: stop-gradient):

    b   = mean_g(r) + 2 Cov_g(r, delta)          (population covariance)
    A_i = r_i - b                                 (/ (std_g(r) + eps) if normalize_std)

  The covariance term removes the part of the reward the policy already explains by drifting
  from the reference (samples it grew confident in). With a constant delta this is Dr. GRPO
  (`grpo_advantages(r, scale_by_std=False)`); the advantages then sum to 0, in general they
  sum to -2 G Cov.

  Conventions: population statistics (ddof=0) for the covariance and the optional std.

  Args:
    rewards_BxG: rewards, shape `[..., G]`.
    seq_logratio_to_ref_BxG: delta, same shape (sequence log-ratio, summed over tokens).
    normalize_std: divide by the group's reward std (the paper's flag).
    eps: added to that std.
    mask_BxG: optional 0/1 validity of each entry (groups padded to a common G): statistics
      over the valid entries only, 0 on padding.

  Returns:
    adv_BxG, the shape of the rewards.

  References:
    Right meets wrong: bilateral context conditioning and reward-confidence correction,
    arXiv:2603.13134.

  Example:
    >>> rcc_advantages(jnp.array([[1., 1., 0., 0.]]), jnp.array([[2., 0., 1., -1.]]))
    Array([[ 0.,  0., -1., -1.]], dtype=float32)
  """
  check_rank(rewards_BxG, 1, "rewards_BxG")
  check_same_shape(rewards_BxG=rewards_BxG, seq_logratio_to_ref_BxG=seq_logratio_to_ref_BxG)
  r = as_float(rewards_BxG)
  delta = jax.lax.stop_gradient(as_float(seq_logratio_to_ref_BxG))
  m = jnp.ones_like(r) if mask_BxG is None else (jnp.asarray(mask_BxG) > 0).astype(r.dtype)
  count = jnp.maximum(jnp.sum(m, axis=-1, keepdims=True), 1.0)
  mean = lambda x: jnp.sum(x * m, axis=-1, keepdims=True) / count
  r_c = r - mean(r)
  cov = mean(r_c * (delta - mean(delta)))
  adv = r_c - 2.0 * cov
  if normalize_std:
    adv = adv / (jnp.sqrt(mean(r_c**2)) + eps)
  return adv * m


def binary_contrastive_advantages(correct_BxG: jax.Array) -> jax.Array:
  """The contrastive view of GRPO under binary rewards (Right meets wrong).

  Formula, for a group with n+ correct and n- incorrect samples (G = n+ + n-):

    A_i = +sqrt(n- / n+)  if correct,    A_i = -sqrt(n+ / n-)  otherwise

  which are GRPO's advantages with ddof=0 and eps=0; then for any ratios rho,

    (1/G) sum_i A_i rho_i = (sqrt(n+ n-) / G) (mean_{correct} rho - mean_{incorrect} rho),

  a margin between right and wrong answers. A group with a single outcome gets 0.

  Args:
    correct_BxG: bool or 0/1, shape `[..., G]`.

  Returns:
    adv_BxG, float32.

  References:
    Right meets wrong, arXiv:2603.13134.

  Example:
    >>> binary_contrastive_advantages(jnp.array([[1, 0, 0, 0]]))
    Array([[ 1.7320508 , -0.57735026, -0.57735026, -0.57735026]], dtype=float32)
  """
  check_rank(correct_BxG, 1, "correct_BxG")
  c = jnp.asarray(correct_BxG) > 0
  n_pos = jnp.sum(c, axis=-1, keepdims=True).astype(jnp.float32)
  n_neg = c.shape[-1] - n_pos
  mixed = (n_pos > 0) & (n_neg > 0)
  pos = jnp.sqrt(n_neg / jnp.maximum(n_pos, 1.0))
  neg = -jnp.sqrt(n_pos / jnp.maximum(n_neg, 1.0))
  return jnp.where(mixed, jnp.where(c, pos, neg), 0.0)
