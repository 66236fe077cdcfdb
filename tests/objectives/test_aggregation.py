"""Tests of rl_jax.objectives.aggregation, and the docstring examples of objectives."""

import doctest
import importlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax.objectives import aggregation, policy_losses

X = jnp.array([[1.0, 2.0, 9.0], [4.0, 9.0, 9.0], [5.0, 6.0, 7.0]])
MASK = jnp.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])


# --- hand values --------------------------------------------------------------------


def test_token_mean_hand_value():
  np.testing.assert_allclose(
    aggregation.aggregate(X, MASK, "token_mean"), (1 + 2 + 4) / 3, rtol=1e-6
  )


def test_seq_mean_token_mean_counts_empty_sequences():
  # Sequence means 1.5, 4, and 0 for the empty row, which still counts.
  np.testing.assert_allclose(
    aggregation.aggregate(X, MASK, "seq_mean_token_mean"), (1.5 + 4.0) / 3, rtol=1e-6
  )
  num, den = aggregation.aggregate_parts(X, MASK, "seq_mean_token_mean")
  np.testing.assert_allclose([num, den], [5.5, 3.0], rtol=1e-6)


def test_seq_mean_token_sum_hand_value():
  np.testing.assert_allclose(
    aggregation.aggregate(X, MASK, "seq_mean_token_sum"), 7.0 / 3, rtol=1e-6
  )


def test_seq_sum_const_with_constant_t_is_token_sum_over_sequences_times_t():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 7)).astype(np.float32)
  mask = (rng.uniform(size=(4, 7)) > 0.3).astype(np.float32)
  np.testing.assert_allclose(
    aggregation.aggregate(x, mask, "seq_sum_const", constant=7),
    np.sum(x * mask) / (4 * 7),
    rtol=1e-5,
  )
  np.testing.assert_allclose(
    aggregation.aggregate(X, MASK, "seq_sum_const", constant=4.0), 7.0 / 12.0, rtol=1e-6
  )


def test_group_shaped_inputs_treat_all_leading_dims_as_sequences():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 3, 5)).astype(np.float32)
  mask = (rng.uniform(size=(2, 3, 5)) > 0.4).astype(np.float32)
  for mode in aggregation.AGGREGATION_MODES:
    np.testing.assert_allclose(
      aggregation.aggregate(x, mask, mode, constant=5),
      aggregation.aggregate(x.reshape(6, 5), mask.reshape(6, 5), mode, constant=5),
      rtol=1e-6,
    )


def test_masked_nan_does_not_leak_into_value_or_gradient():
  x = jnp.array([[1.0, jnp.nan], [jnp.inf, 3.0]])
  mask = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  for mode in aggregation.AGGREGATION_MODES:
    value, grad = jax.value_and_grad(lambda v: aggregation.aggregate(v, mask, mode, constant=2))(x)
    assert np.isfinite(value), mode
    np.testing.assert_array_equal(np.asarray(grad)[np.asarray(mask) == 0], 0.0)


def test_empty_batch_gives_zero():
  for mode in aggregation.AGGREGATION_MODES:
    value = aggregation.aggregate(jnp.ones((2, 3)), jnp.zeros((2, 3)), mode, constant=3)
    np.testing.assert_array_equal(value, 0.0)


def test_argument_errors():
  with pytest.raises(ValueError, match="token_mean, seq_mean_token_mean"):
    aggregation.aggregate(X, MASK, "sequence_mean")
  with pytest.raises(ValueError, match="requires constant"):
    aggregation.aggregate(X, MASK, "seq_sum_const")
  with pytest.raises(ValueError, match="positive"):
    aggregation.aggregate(X, MASK, "seq_sum_const", constant=0)
  with pytest.raises(ValueError, match="same shape"):
    aggregation.aggregate(X, MASK[:, :2], "token_mean")


def test_aggregate_jit_and_vmap():
  fn = jax.jit(aggregation.aggregate, static_argnames=("mode", "constant"))
  for mode in aggregation.AGGREGATION_MODES:
    np.testing.assert_allclose(
      fn(X, MASK, mode=mode, constant=3),
      aggregation.aggregate(X, MASK, mode, constant=3),
      rtol=1e-6,
    )
  # vmap over independent batches (e.g. per-prompt losses).
  per_prompt = jax.vmap(lambda x, m: aggregation.aggregate(x, m, "token_mean"))(
    X[:, None], MASK[:, None]
  )
  np.testing.assert_allclose(per_prompt, [1.5, 4.0, 0.0], rtol=1e-6)


# --- exactness under micro-batching / data-parallel splits --------------------------

NUM_SEQ, LEN, NUM_MICRO = 8, 6, 4


def _split_problem():
  rng = np.random.default_rng(2)
  logp = jnp.asarray(rng.normal(-1.0, 0.5, size=(NUM_SEQ, LEN)), jnp.float32)
  old = logp + jnp.asarray(rng.normal(0, 0.2, size=(NUM_SEQ, LEN)), jnp.float32)
  adv = jnp.asarray(rng.normal(size=(NUM_SEQ, 1)), jnp.float32)
  # Very unequal lengths per micro-batch, and one empty sequence.
  lengths = np.array([6, 6, 1, 1, 5, 0, 2, 3])
  mask = jnp.asarray(np.arange(LEN) < lengths[:, None], jnp.float32)
  return logp, old, adv, mask


def _per_token_loss(logp, old, adv):
  return policy_losses.ppo_clip(logp, old, adv, eps_high=0.28)


@pytest.mark.parametrize("mode", aggregation.AGGREGATION_MODES)
def test_micro_batches_with_global_denominator_match_whole_batch(mode):
  logp, old, adv, mask = _split_problem()

  def whole(lp):
    return aggregation.aggregate(_per_token_loss(lp, old, adv), mask, mode, constant=LEN)

  global_den = aggregation.aggregation_denominator(mask, mode, constant=LEN)

  def micro_batched(lp):
    total = 0.0
    for idx in np.split(np.arange(NUM_SEQ), NUM_MICRO):
      total += aggregation.aggregate_with_denominator(
        _per_token_loss(lp[idx], old[idx], adv[idx]), mask[idx], mode, global_den, constant=LEN
      )
    return total

  value, grad = jax.value_and_grad(whole)(logp)
  split_value, split_grad = jax.value_and_grad(micro_batched)(logp)
  np.testing.assert_allclose(split_value, value, rtol=1e-5)
  np.testing.assert_allclose(split_grad, grad, rtol=1e-5, atol=1e-8)
  assert float(jnp.max(jnp.abs(grad))) > 1e-3

  # The same global value from summed (numerator, denominator) parts.
  parts = [
    aggregation.aggregate_parts(
      _per_token_loss(logp[idx], old[idx], adv[idx]), mask[idx], mode, constant=LEN
    )
    for idx in np.split(np.arange(NUM_SEQ), NUM_MICRO)
  ]
  np.testing.assert_allclose(sum(p[0] for p in parts) / sum(p[1] for p in parts), value, rtol=1e-5)
  np.testing.assert_allclose(sum(p[1] for p in parts), global_den, rtol=1e-6)


def test_naive_mean_of_micro_batch_token_means_is_not_exact():
  """Guards the test above against passing by construction."""
  logp, old, adv, mask = _split_problem()
  loss = _per_token_loss(logp, old, adv)
  whole = aggregation.aggregate(loss, mask, "token_mean")
  naive = np.mean(
    [
      aggregation.aggregate(loss[idx], mask[idx], "token_mean")
      for idx in np.split(np.arange(NUM_SEQ), NUM_MICRO)
    ]
  )
  assert abs(float(naive) - float(whole)) > 1e-3


# --- docstring examples of every objectives module ---------------------------------

_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?|nan|inf")


class _ApproxChecker(doctest.OutputChecker):
  """Same text up to whitespace, numbers equal to rtol 1e-4 / atol 1e-6."""

  def check_output(self, want, got, optionflags):
    skeleton = lambda s: re.sub(r"\s+", "", _NUMBER.sub("#", s))
    if skeleton(want) != skeleton(got):
      return False
    want_nums = [float(n) for n in _NUMBER.findall(want)]
    got_nums = [float(n) for n in _NUMBER.findall(got)]
    return len(want_nums) == len(got_nums) and np.allclose(
      got_nums, want_nums, rtol=1e-4, atol=1e-6, equal_nan=True
    )


@pytest.mark.parametrize(
  "module",
  ["advantages", "kl", "policy_losses", "value", "aggregation", "shaping", "segments", "quantile"],
)
def test_docstring_examples(module):
  mod = importlib.import_module(f"rl_jax.objectives.{module}")
  finder = doctest.DocTestFinder()
  runner = doctest.DocTestRunner(checker=_ApproxChecker())
  tests = finder.find(mod, globs={"jnp": jnp, **vars(mod)})
  assert sum(len(t.examples) for t in tests) > 0
  for test in tests:
    runner.run(test)
  result = runner.summarize(verbose=False)
  assert result.failed == 0, f"{result.failed} docstring example(s) failed"
