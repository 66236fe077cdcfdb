"""Reduction of per-token losses to a scalar, exact under batch splitting.

Every mode is a ratio `numerator / denominator` of sums over the batch:

| mode                  | numerator                               | denominator            |
|-----------------------|-----------------------------------------|------------------------|
| `token_mean`          | sum of x over valid tokens              | number of valid tokens |
| `seq_mean_token_mean` | sum over sequences of the token mean    | number of sequences    |
| `seq_mean_token_sum`  | sum of x over valid tokens              | number of sequences    |
| `seq_sum_const`       | sum of x over valid tokens              | sequences * constant   |

Both are *additive* over sequences (a sequence's token mean only needs that
sequence), so for a global batch split into micro-batches or data-parallel
shards k:

    aggregate(global) == sum_k numerator_k / sum_k denominator_k.

The exact recipe for gradient accumulation or data parallelism is therefore:
compute the global denominator once from the whole batch's mask
(`aggregation_denominator`, or a `psum` of the local ones across shards), and
give every micro-batch the loss `aggregate_with_denominator(x_k, mask_k, mode,
global_denominator)`. The sum of those losses is the global loss and the sum
of their gradients is the global gradient, exactly. Averaging per-micro-batch
`aggregate` values is *not* exact for `token_mean` (micro-batches with fewer
valid tokens get more weight).

"Sequences" are all leading dimensions of `x`: `[B, T]` has B sequences and
`[B, G, T]` has B*G.
"""

import math
import numbers

import jax
import jax.numpy as jnp

AGGREGATION_MODES = (
  "token_mean",
  "seq_mean_token_mean",
  "seq_mean_token_sum",
  "seq_sum_const",
)


def _check_args(x_shape, mask_shape, mode, constant) -> None:
  if mode not in AGGREGATION_MODES:
    raise ValueError(
      f"Unknown aggregation mode {mode!r}; valid modes are {', '.join(AGGREGATION_MODES)}."
    )
  if mode == "seq_sum_const":
    if constant is None:
      raise ValueError(
        "mode 'seq_sum_const' requires constant= (e.g. the maximum completion length), got None."
      )
    if isinstance(constant, numbers.Real) and constant <= 0:
      raise ValueError(f"constant must be positive, got {constant}.")
  if len(x_shape) < 1:
    raise ValueError(f"x must have rank >= 1 ([..., T]), got shape {x_shape}.")
  if tuple(x_shape) != tuple(mask_shape):
    raise ValueError(f"x and mask must have the same shape, got {x_shape} and {mask_shape}.")


def _masked(x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Returns (x * mask with masked entries exactly 0, mask as float weights)."""
  x = jnp.asarray(x)
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  weights = jnp.asarray(mask).astype(x.dtype)
  # `where`, not a product alone: NaN/inf on padding must not leak (0 * nan).
  return jnp.where(weights != 0, x * weights, 0.0), weights


def _safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
  nonzero = denominator != 0
  return jnp.where(nonzero, numerator / jnp.where(nonzero, denominator, 1.0), 0.0)


def aggregation_denominator(
  mask_BxT: jax.Array,
  mode: str,
  *,
  constant: float | None = None,
) -> jax.Array:
  """Denominator of `mode` for a batch, from its mask alone.

  Formula: number of valid tokens (`token_mean`), number of sequences
  (`seq_mean_token_mean`, `seq_mean_token_sum`), or number of sequences times
  `constant` (`seq_sum_const`). Call it on the *whole* batch to get the global
  denominator for `aggregate_with_denominator`.

  Args:
    mask_BxT: 1 on valid tokens, 0 elsewhere, `[..., T]`.
    mode: one of `AGGREGATION_MODES`.
    constant: the normaliser of `seq_sum_const` (required for that mode).

  Returns:
    Scalar float32 denominator.

  Example:
    >>> aggregation_denominator(jnp.array([[1., 1., 0.], [1., 0., 0.]]),
    ...                         "token_mean")
    Array(3., dtype=float32)
  """
  shape = jnp.shape(mask_BxT)
  _check_args(shape, shape, mode, constant)
  return aggregate_parts(jnp.zeros(shape, jnp.float32), mask_BxT, mode, constant=constant)[1]


def aggregate_parts(
  x_BxT: jax.Array,
  mask_BxT: jax.Array,
  mode: str,
  *,
  constant: float | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Numerator and denominator of an aggregation, both additive over sequences.

  Formula, with m the mask, s indexing sequences and N the number of sequences:

    token_mean:          (sum_{s,t} m x,              sum_{s,t} m)
    seq_mean_token_mean: (sum_s [sum_t m x / sum_t m], N)
    seq_mean_token_sum:  (sum_{s,t} m x,              N)
    seq_sum_const:       (sum_{s,t} m x,              N * constant)

  For shards k of one batch, `sum_k num_k / sum_k den_k` is the global value.

  Convention: in `seq_mean_token_mean` a sequence with no valid token adds 0
  to the numerator but still counts in the denominator (so the denominator is
  a shape constant, and a batch's value does not depend on how its empty rows
  are distributed over shards). Non-binary mask values act as token weights.

  Args:
    x_BxT: per-token values (e.g. a loss from `policy_losses`), `[..., T]`.
    mask_BxT: 1 on valid tokens, 0 elsewhere, same shape.
    mode: one of `AGGREGATION_MODES`.
    constant: the normaliser of `seq_sum_const` (required for that mode),
      typically the maximum completion length (Dr. GRPO).

  Returns:
    (numerator, denominator): float32 scalars.

  References:
    Liu et al., Dr. GRPO (constant normaliser), arXiv:2503.20783; Yu et al.,
    DAPO (token-level mean), arXiv:2503.14476.

  Example:
    >>> x = jnp.array([[1., 2., 9.], [4., 9., 9.]])
    >>> m = jnp.array([[1., 1., 0.], [1., 0., 0.]])
    >>> aggregate_parts(x, m, "seq_mean_token_mean")  # (1.5 + 4, 2)
    (Array(5.5, dtype=float32), Array(2., dtype=float32))
  """
  _check_args(jnp.shape(x_BxT), jnp.shape(mask_BxT), mode, constant)
  xm, weights = _masked(x_BxT, mask_BxT)
  num_sequences = jnp.asarray(math.prod(xm.shape[:-1]), xm.dtype)
  if mode == "token_mean":
    return jnp.sum(xm), jnp.sum(weights)
  if mode == "seq_mean_token_mean":
    seq_means = _safe_divide(jnp.sum(xm, axis=-1), jnp.sum(weights, axis=-1))
    return jnp.sum(seq_means), num_sequences
  if mode == "seq_mean_token_sum":
    return jnp.sum(xm), num_sequences
  # seq_sum_const
  return jnp.sum(xm), num_sequences * jnp.asarray(constant, xm.dtype)


def aggregate_with_denominator(
  x_BxT: jax.Array,
  mask_BxT: jax.Array,
  mode: str,
  denominator: jax.Array,
  *,
  constant: float | None = None,
) -> jax.Array:
  """This batch's numerator divided by a given (global) denominator.

  Formula: aggregate_parts(x, mask, mode)[0] / denominator   (0 if it is 0).

  Use it for gradient accumulation and data parallelism: with
  `denominator = aggregation_denominator(global_mask, mode)` the losses of the
  micro-batches (shards) sum to the global `aggregate` value, and their
  gradients sum to the global gradient, exactly.

  Args:
    x_BxT: per-token values of this micro-batch, `[..., T]`.
    mask_BxT: its mask, same shape.
    mode: one of `AGGREGATION_MODES`.
    denominator: the global denominator of `mode`, a scalar.
    constant: the normaliser of `seq_sum_const` (required for that mode, for
      validation; the given denominator already contains it).

  Returns:
    Scalar float32 partial loss.

  Example:
    >>> x, m = jnp.array([[1., 2.], [3., 4.]]), jnp.ones((2, 2))
    >>> den = aggregation_denominator(m, "token_mean")
    >>> (aggregate_with_denominator(x[:1], m[:1], "token_mean", den)
    ...  + aggregate_with_denominator(x[1:], m[1:], "token_mean", den))
    Array(2.5, dtype=float32)
  """
  numerator, _ = aggregate_parts(x_BxT, mask_BxT, mode, constant=constant)
  return _safe_divide(numerator, jnp.asarray(denominator, numerator.dtype))


def aggregate(
  x_BxT: jax.Array,
  mask_BxT: jax.Array,
  mode: str,
  *,
  constant: float | None = None,
) -> jax.Array:
  """Reduces per-token values to a scalar over the valid tokens.

  Formula: numerator / denominator of `aggregate_parts`:

    token_mean:          sum_{s,t} m x / sum_{s,t} m
    seq_mean_token_mean: (1/N) sum_s (sum_t m x / sum_t m)
    seq_mean_token_sum:  (1/N) sum_{s,t} m x
    seq_sum_const:       sum_{s,t} m x / (N * constant)

  Conventions: masked tokens contribute exactly 0 to the value and gradient
  (even if x is NaN there); in `seq_mean_token_mean` an empty sequence adds 0
  but counts in N; a batch with no valid token (`token_mean`) gives 0.

  Args:
    x_BxT: per-token values, `[..., T]` (`[B, T]` or `[B, G, T]`; sequences
      are all leading dimensions).
    mask_BxT: 1 on valid tokens, 0 elsewhere, same shape.
    mode: one of `AGGREGATION_MODES`.
    constant: the normaliser of `seq_sum_const` (required for that mode).

  Returns:
    Scalar float32.

  References:
    Liu et al., Dr. GRPO, arXiv:2503.20783; Yu et al., DAPO, arXiv:2503.14476.

  Example:
    >>> x = jnp.array([[1., 2., 9.], [4., 9., 9.]])
    >>> m = jnp.array([[1., 1., 0.], [1., 0., 0.]])
    >>> aggregate(x, m, "token_mean"), aggregate(x, m, "seq_mean_token_mean")
    (Array(2.3333333, dtype=float32), Array(2.75, dtype=float32))
  """
  numerator, denominator = aggregate_parts(x_BxT, mask_BxT, mode, constant=constant)
  return _safe_divide(numerator, denominator)
