"""The `rcc` algorithm preset: the step's advantages are `rcc_advantages` of each group's rewards
and its sequences' log-ratios to the reference, on groups of any size."""

import jax.numpy as jnp
import numpy as np

from rl_jax import algorithms
from rl_jax.algorithms import AdvantageInputs, compute_advantages
from rl_jax.objectives.advantages import rcc_advantages


def test_rcc_preset_advantages_match_the_pure_function_per_group():
  rng = np.random.default_rng(0)
  N, T = 7, 5
  mask = (np.arange(T)[None] < rng.integers(1, T + 1, N)[:, None]).astype(np.float32)
  logp = rng.normal(size=(N, T)).astype(np.float32) * mask
  ref = rng.normal(size=(N, T)).astype(np.float32) * mask
  rewards = rng.integers(0, 2, N).astype(np.float32)
  groups = np.array([[0, 3, 5, -1], [1, 2, 4, 6]], np.int32)  # unequal, non-contiguous
  algo = algorithms.make_algorithm("rcc", normalize_std=True)
  assert algo.requires("ref_logp") and algo.kl_coef == 0
  inputs = AdvantageInputs(
    jnp.asarray(rewards),
    jnp.asarray(mask),
    jnp.asarray(logp),
    jnp.asarray(ref),
    None,
    jnp.asarray(groups),
  )
  adv, _ = compute_advantages(algo, inputs)
  delta = (logp - ref).sum(-1)
  for g in groups:
    rows = g[g >= 0]
    want = rcc_advantages(rewards[rows][None], delta[rows][None], normalize_std=True)[0]
    np.testing.assert_allclose(
      np.asarray(adv)[rows], np.asarray(want)[:, None] * mask[rows], rtol=1e-5, atol=1e-6
    )
