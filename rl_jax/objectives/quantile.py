"""Quantile regression and its conformal calibration (the math of a UARM reward model).

A quantile reward model predicts, for each (prompt, completion), the quantiles
(alpha/2, 0.5, 1 - alpha/2) of the score a labeller would give; it is trained with the pinball
loss and its interval is then widened by conformalised quantile regression (CQR) so that it
covers a new label with probability >= 1 - alpha.
"""

import math

import jax
import jax.numpy as jnp

from rl_jax.objectives._checks import as_float, check_rank


def quantile_levels(alpha: float) -> jax.Array:
  """The three quantile levels of a UARM reward model: (alpha/2, 0.5, 1 - alpha/2).

  Example:
    >>> quantile_levels(0.1)
    Array([0.05, 0.5 , 0.95], dtype=float32)
  """
  if not 0.0 < alpha < 1.0:
    raise ValueError(f"alpha must be in (0, 1), got {alpha}")
  return jnp.array([alpha / 2.0, 0.5, 1.0 - alpha / 2.0], jnp.float32)


def pinball_loss(pred_NxQ: jax.Array, target_N: jax.Array, taus_Q: jax.Array) -> jax.Array:
  """Pinball (quantile) loss of each predicted quantile, unreduced.

  Formula, with u = y - q (the label minus the predicted tau-quantile):

    rho_tau(u) = u * (tau - 1[u < 0])  =  tau * u        if u >= 0
                                          (tau - 1) * u  if u < 0

  Its expectation over y is minimised by the tau-quantile of y's distribution (over a sample:
  by the sample's tau-quantile), so the mean over a batch trains each output toward its
  quantile. Reduce it with a mean over rows (and a sum or mean over quantiles) separately.

  Args:
    pred_NxQ: predicted quantiles, `[N, Q]` (any leading shape `[..., Q]`).
    target_N: labels y, `[N]` (the leading shape of `pred_NxQ`).
    taus_Q: quantile levels in (0, 1), `[Q]`.

  Returns:
    loss_NxQ, the shape of `pred_NxQ`, >= 0.

  References:
    Koenker & Bassett, Regression quantiles (Econometrica 1978); its use for a reward model's
    interval: UARM, arXiv:2606.19818.

  Example:
    >>> pred = jnp.array([[0.0, 1.0, 2.0]])       # q at taus 0.1, 0.5, 0.9
    >>> pinball_loss(pred, jnp.array([1.5]), jnp.array([0.1, 0.5, 0.9]))
    Array([[0.15, 0.25, 0.05]], dtype=float32)
  """
  check_rank(pred_NxQ, 1, "pred_NxQ")
  pred, y, taus = as_float(pred_NxQ), as_float(target_N), as_float(taus_Q)
  if pred.shape[:-1] != y.shape or pred.shape[-1:] != taus.shape:
    raise ValueError(
      f"pred_NxQ {pred.shape} must be target_N {y.shape} + taus_Q {taus.shape}, e.g. [N, Q]"
    )
  u = y[..., None] - pred
  return u * (taus - (u < 0).astype(u.dtype))


def cqr_scores(q_lo_N: jax.Array, q_hi_N: jax.Array, target_N: jax.Array) -> jax.Array:
  """CQR conformity scores E_j = max(q_lo - y, y - q_hi): how far a label lies outside its
  predicted interval (negative inside it). Shapes `[N]` -> `[N]`.

  Example:
    >>> cqr_scores(jnp.array([0., 0.]), jnp.array([1., 1.]), jnp.array([0.25, 1.5]))
    Array([-0.25,  0.5 ], dtype=float32)
  """
  q_lo, q_hi, y = as_float(q_lo_N), as_float(q_hi_N), as_float(target_N)
  return jnp.maximum(q_lo - y, y - q_hi)


def cqr_rank(n: int, alpha: float) -> int:
  """k = ceil((n + 1)(1 - alpha)): CQR's offset is the k-th smallest of n calibration scores.
  Raises ValueError when k > n (too few calibration records for this alpha: the interval would
  have to be infinite); n >= ceil(1/alpha) - 1 is needed.

  Example:
    >>> cqr_rank(100, 0.1)
    91
  """
  if not 0.0 < alpha < 1.0:
    raise ValueError(f"alpha must be in (0, 1), got {alpha}")
  # The small tolerance keeps (n + 1)(1 - alpha) = 9.000000000000002 from rounding up to 10.
  k = math.ceil((n + 1) * (1.0 - alpha) - 1e-9)
  if k > n:
    need = math.ceil((1.0 - alpha) / alpha)
    raise ValueError(
      f"conformal calibration at alpha={alpha} needs at least {need} calibration records, got {n}"
    )
  return k


def cqr_offset(q_lo_N: jax.Array, q_hi_N: jax.Array, target_N: jax.Array, alpha: float):
  """CQR's calibration offset Q from a held-out calibration set.

  Formula: with scores E_j = max(q_lo_j - y_j, y_j - q_hi_j), j = 1..n,

    Q = the ceil((n + 1)(1 - alpha))-th smallest E_j      (ceil((n+1)(1-alpha))/n quantile)

  and the calibrated interval of a new point is [q_lo - Q, q_hi + Q]. If the calibration and
  test points are exchangeable it covers the new label with probability >= 1 - alpha (and
  < 1 - alpha + 1/(n + 1) without ties), whatever the quantile model. Q < 0 shrinks an
  interval that was too wide.

  Args:
    q_lo_N, q_hi_N: the model's lower and upper quantiles on the calibration set, `[n]`.
    target_N: the calibration labels, `[n]`.
    alpha: the target miscoverage.

  Returns:
    Q, a float32 scalar.

  References:
    Romano, Patterson & Candes, Conformalized Quantile Regression, arXiv:1905.03222.

  Example:
    >>> y = jnp.arange(10.0)                       # intervals [y - 1, y + 1] ...
    >>> cqr_offset(y - 1, y + 1, y.at[9].add(5.0), alpha=0.2)   # ... one label off by 5
    Array(-1., dtype=float32)
  """
  scores = cqr_scores(q_lo_N, q_hi_N, target_N)
  check_rank(scores, 1, "target_N")
  k = cqr_rank(scores.shape[0], alpha)
  return jnp.sort(scores)[k - 1]
