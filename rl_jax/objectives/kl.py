"""Per-token KL estimators (k1, k2, k3) and the entropy of a categorical policy.

The estimators take the log-probabilities of the *sampled* tokens under the
policy (`logp`) and the reference model (`ref_logp`) and return one value per
token, same shape as the inputs. Reduce them with `aggregation.aggregate`.
With tokens sampled from the policy, k1 and k3 are unbiased estimators of
KL(pi_theta || pi_ref); k2 is biased but has low variance.
"""

import jax
import jax.numpy as jnp

from rl_jax.objectives._checks import as_float, check_same_shape

# Bound on the log-ratio inside k3, so that exp() can neither overflow nor
# produce infinite gradients when the policy and reference disagree wildly.
_K3_LOG_RATIO_CLAMP = 20.0


def kl_k1(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """k1 KL estimator: the log-ratio of policy to reference.

  Formula: k1 = log pi_theta(y_t) - log pi_ref(y_t).

  Unbiased for KL(pi_theta || pi_ref) when y_t ~ pi_theta, but high variance
  and can be negative. At `logp == ref_logp` the value is 0; its pathwise
  gradient is d k1 / d logp = 1 (not 0), whose expectation under the policy,
  E_{y~pi}[grad log pi(y)], is 0.

  Args:
    logp: log-probs of the sampled tokens under the policy, any shape `[...]`.
    ref_logp: log-probs of the same tokens under the reference, same shape.

  Returns:
    Per-token estimates, same shape.

  References:
    Schulman, Approximating KL Divergence (2020), http://joschu.net/blog/kl-approx.html;
    used per token in Ouyang et al., InstructGPT, arXiv:2203.02155.

  Example:
    >>> kl_k1(jnp.log(jnp.array([0.5])), jnp.log(jnp.array([0.25])))
    Array([0.6931472], dtype=float32)
  """
  check_same_shape(logp=logp, ref_logp=ref_logp)
  return as_float(logp) - as_float(ref_logp)


def kl_k2(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """k2 KL estimator: half the squared log-ratio.

  Formula: k2 = 0.5 * (log pi_theta(y_t) - log pi_ref(y_t))^2.

  Non-negative, low variance, biased (exact to second order for nearby
  distributions). At `logp == ref_logp` value and gradient are 0.

  Args:
    logp: log-probs of the sampled tokens under the policy, any shape `[...]`.
    ref_logp: log-probs of the same tokens under the reference, same shape.

  Returns:
    Per-token estimates, same shape.

  References:
    Schulman, Approximating KL Divergence (2020), http://joschu.net/blog/kl-approx.html.

  Example:
    >>> kl_k2(jnp.log(jnp.array([0.5])), jnp.log(jnp.array([0.25])))
    Array([0.2402265], dtype=float32)
  """
  check_same_shape(logp=logp, ref_logp=ref_logp)
  return 0.5 * jnp.square(as_float(logp) - as_float(ref_logp))


def kl_k3(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """k3 KL estimator (GRPO's): exp(x) - x - 1 with x the reference log-ratio.

  Formula: x = clip(log pi_ref(y_t) - log pi_theta(y_t), -20, 20),
           k3 = exp(x) - x - 1     (computed as expm1(x) - x).

  Unbiased for KL(pi_theta || pi_ref) when y_t ~ pi_theta (before clamping)
  and always >= 0. Convention: `x` is clamped to [-20, 20] (gradient 0 beyond
  the clamp), as in several peers, to avoid overflow. At `logp == ref_logp`
  value and gradient are 0.

  Args:
    logp: log-probs of the sampled tokens under the policy, any shape `[...]`.
    ref_logp: log-probs of the same tokens under the reference, same shape.

  Returns:
    Per-token estimates, same shape.

  References:
    Shao et al., DeepSeekMath (GRPO), arXiv:2402.03300;
    Schulman, Approximating KL Divergence (2020).

  Example:
    >>> kl_k3(jnp.log(jnp.array([0.5])), jnp.log(jnp.array([0.25])))
    Array([0.19314718], dtype=float32)
  """
  check_same_shape(logp=logp, ref_logp=ref_logp)
  x = jnp.clip(as_float(ref_logp) - as_float(logp), -_K3_LOG_RATIO_CLAMP, _K3_LOG_RATIO_CLAMP)
  return jnp.expm1(x) - x


def entropy_from_logits(logits_xV: jax.Array) -> jax.Array:
  """Entropy of the categorical distribution softmax(logits) at each position.

  Formula: H = logsumexp(z) - sum_v softmax(z)_v * z_v.

  Computed in float32 whatever the input dtype, on logits shifted by their
  maximum (the entropy is shift invariant), so large logits lose no precision.
  Logits of -inf (banned tokens)
  are allowed: they have probability 0 and contribute 0, not NaN.

  Args:
    logits_xV: logits, shape `[..., V]`.

  Returns:
    Entropy in nats, float32, shape `[...]`.

  References:
    Standard; logged as an exploration diagnostic in PPO (Schulman et al.,
    arXiv:1707.06347) and DAPO (arXiv:2503.14476).

  Example:
    >>> entropy_from_logits(jnp.zeros((1, 4)))  # log(4)
    Array([1.3862944], dtype=float32)
  """
  if jnp.ndim(logits_xV) < 1:
    raise ValueError(f"logits must have rank >= 1, got shape {jnp.shape(logits_xV)}.")
  z = jnp.asarray(logits_xV).astype(jnp.float32)
  # Entropy is shift invariant; centring on the max avoids cancellation
  # between two huge terms when the logits are large.
  z = z - jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
  log_norm = jax.nn.logsumexp(z, axis=-1)
  probs = jax.nn.softmax(z, axis=-1)
  z_finite = jnp.where(jnp.isfinite(z), z, 0.0)
  return log_norm - jnp.sum(probs * z_finite, axis=-1)
