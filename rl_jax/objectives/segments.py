"""Segment-level policy gradient: actions that are segments of a completion (methods.md B7).

A segment is a run of completion tokens: a step line, a paragraph, a tool call. One token per
segment is the token-level policy gradient; one segment per completion is GRPO / GSPO. Segment
ids are integers per token (0 .. K-1 within each row); padding tokens are masked out.
"""

import jax
import jax.numpy as jnp

from rl_jax.objectives._checks import as_float, check_same_shape
from rl_jax.objectives.policy_losses import _clipped_surrogate

_LOG_RATIO_CLAMP = 20.0
SEGMENT_REDUCTIONS = ("mean", "sum")


def segment_ids_from_delimiters(
  tokens_NxT: jax.Array, delimiter_ids: tuple[int, ...], mask_NxT: jax.Array | None = None
) -> jax.Array:
  """Segment ids from delimiter tokens: a new segment starts after each delimiter (which
  belongs to the segment it ends, as a newline ends its line).

    seg_t = number of delimiters among tokens 0 .. t-1 (that are valid)

  Args:
    tokens_NxT: token ids, `[..., T]`.
    delimiter_ids: the ids that end a segment (e.g. the newline's, a step tag's).
    mask_NxT: optional 1 on valid tokens; masked tokens never end a segment.

  Returns:
    int32 `[..., T]`, starting at 0 in every row.

  Example:
    >>> segment_ids_from_delimiters(jnp.array([[5, 9, 6, 7, 9, 8]]), (9,))
    Array([[0, 0, 1, 1, 1, 2]], dtype=int32)
  """
  tokens = jnp.asarray(tokens_NxT)
  ends = jnp.isin(tokens, jnp.asarray(delimiter_ids))
  if mask_NxT is not None:
    ends = ends & (jnp.asarray(mask_NxT) != 0)
  before = jnp.cumsum(ends.astype(jnp.int32), axis=-1) - ends.astype(jnp.int32)
  return before.astype(jnp.int32)


def segment_log_ratios(
  logp: jax.Array,
  old_logp: jax.Array,
  segment_ids: jax.Array,
  mask: jax.Array,
  *,
  num_segments: int,
  reduce: str = "mean",
) -> tuple[jax.Array, jax.Array]:
  """Per-segment log-ratios and token counts.

    log rho_k = sum_{t in k} mask_t (logp_t - old_logp_t)          (reduce="sum")
              = (1 / n_k) sum_{t in k} mask_t (logp_t - old_logp_t)  (reduce="mean")

  Args:
    logp, old_logp: per-token log-probs, `[..., T]`.
    segment_ids: int `[..., T]` in [0, num_segments); ids of masked tokens are ignored.
    mask: 1 on valid tokens.
    num_segments: K, static.
    reduce: "mean" (length-normalised, GSPO-like) or "sum" (the segment's probability ratio).

  Returns:
    (log_ratio_NxK, count_NxK): log rho clamped to [-20, 20] (0 for empty segments) and n_k.

  Example:
    >>> lr, n = segment_log_ratios(jnp.array([[0.1, 0.3, 0.5]]), jnp.zeros((1, 3)),
    ...                            jnp.array([[0, 0, 1]]), jnp.ones((1, 3)), num_segments=2)
    >>> lr
    Array([[0.2, 0.5]], dtype=float32)
  """
  check_same_shape(logp=logp, old_logp=old_logp, segment_ids=segment_ids, mask=mask)
  if reduce not in SEGMENT_REDUCTIONS:
    raise ValueError(f"reduce must be one of {SEGMENT_REDUCTIONS}, got {reduce!r}")
  logp, old_logp = as_float(logp), as_float(old_logp)
  valid = (jnp.asarray(mask) != 0).astype(logp.dtype)
  onehot = jax.nn.one_hot(segment_ids, num_segments, dtype=logp.dtype) * valid[..., None]
  count = jnp.sum(onehot, axis=-2)
  total = jnp.einsum("...tk,...t->...k", onehot, logp - old_logp)
  if reduce == "mean":
    total = total / jnp.maximum(count, 1.0)
  log_ratio = jnp.where(count > 0, jnp.clip(total, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP), 0.0)
  return log_ratio, count


def segment_clip(
  logp: jax.Array,
  old_logp: jax.Array,
  adv: jax.Array,
  mask: jax.Array,
  segment_ids: jax.Array,
  *,
  num_segments: int,
  reduce: str = "mean",
  eps_low: float = 0.2,
  eps_high: float = 0.2,
) -> jax.Array:
  """Segment-level clipped policy loss, per token.

  Formula, for token t of segment k (n_k valid tokens, ratio rho_k from `segment_log_ratios`):

    loss_t = -c_k min(rho_k A, clip(rho_k, 1 - eps_low, 1 + eps_high) A)
    c_k    = 1 (reduce="mean"),   1 / n_k (reduce="sum")

  so that summed over tokens, at rho = 1 the gradient is sum_t grad logp_t * A whatever the
  segmentation (the policy-gradient theorem for macro-actions). One-token segments give
  `ppo_clip`; one segment per row with reduce="mean" gives `gspo`. With reduce="mean" a
  segment weighs by its length in a token sum (as tokens do in `ppo_clip`); aggregate with any
  mode of `aggregate`. Design choice (methods.md B7): the ratio is per segment, clipped like
  PPO, and the advantage is the sequence's (or a per-token array, read at each token).

  Args:
    logp, old_logp: per-token log-probs, `[..., T]`.
    adv: per-sequence `[...]` or broadcastable to `[..., T]`.
    mask: 1 on valid tokens.
    segment_ids: int `[..., T]` in [0, num_segments).
    num_segments: K, static.
    reduce: "mean" or "sum" (see `segment_log_ratios`).
    eps_low, eps_high: the clip range.

  Returns:
    Per-token loss `[..., T]`, 0 on masked tokens.

  References:
    GPG for Transformers: segment-level policy gradients, arXiv:2512.10365.

  Example:
    >>> logp = jnp.array([[0.1, 0.3, 0.5]])   # segment ratios exp(0.2), exp(0.5)
    >>> segment_clip(logp, jnp.zeros((1, 3)), jnp.array([1.0]), jnp.ones((1, 3)),
    ...              jnp.array([[0, 0, 1]]), num_segments=2)
    Array([[-1.2, -1.2, -1.2]], dtype=float32)
  """
  log_ratio, count = segment_log_ratios(
    logp, old_logp, segment_ids, mask, num_segments=num_segments, reduce=reduce
  )
  adv = as_float(adv)
  if adv.ndim == jnp.ndim(logp) - 1:
    adv = adv[..., None]
  per_segment = jnp.exp(log_ratio)
  ids = jnp.clip(jnp.asarray(segment_ids), 0, num_segments - 1)
  ratio = jnp.take_along_axis(per_segment, ids, axis=-1)
  loss = _clipped_surrogate(ratio, adv, eps_low, eps_high)
  if reduce == "sum":
    loss = loss / jnp.maximum(jnp.take_along_axis(count, ids, axis=-1), 1.0)
  return jnp.where(jnp.asarray(mask) != 0, loss, 0.0)
