"""The jitted update: policy-gradient identity at ratio 1, skip-on-non-finite, minibatching."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rl_jax import algorithms, trainer
from rl_jax.logprobs import completion_logprobs
from rl_jax.models import transformer
from rl_jax.types import TrainBatch

V = 19


def _setup(seed=0):
  cfg = transformer.preset("test", V)
  graphdef, params = transformer.init_model(cfg, seed)
  return graphdef, params


def _grpo_advantages(rewards_N, group_size):
  """GRPO's sequence advantages [N] of consecutive groups of `group_size` rows."""
  N = len(rewards_N)
  inputs = algorithms.AdvantageInputs(
    rewards_N=jnp.asarray(rewards_N),
    loss_mask_NxT=jnp.ones((N, 1), jnp.float32),
    logp_NxT=jnp.zeros((N, 1)),
    ref_logp_NxT=None,
    values_NxT=None,
    group_index_BxG=jnp.arange(N).reshape(N // group_size, group_size),
  )
  adv, _ = algorithms.compute_advantages(algorithms.grpo(), inputs)
  return np.asarray(adv)[:, 0]


def _cache_size(update, prompt_group_size=1) -> int:
  """Entries in the jit cache of `make_rl_update`'s program for `prompt_group_size`."""
  return update.jitted(prompt_group_size)._cache_size()


def _batch(N=8, P=5, T=4, seed=0, adv=None):
  rng = np.random.default_rng(seed)
  pm = np.ones((N, P), bool)
  pm[::2, :2] = False
  lengths = rng.integers(1, T + 1, N)
  cm = np.arange(T)[None] < lengths[:, None]
  if adv is None:
    adv = _grpo_advantages(rng.random(N).astype(np.float32), group_size=4)
  return TrainBatch(
    rng.integers(3, V, (N, P)).astype(np.int32),
    pm,
    rng.integers(3, V, (N, T)).astype(np.int32),
    cm,
    cm,  # loss mask: every completion token is trained on
    np.broadcast_to(np.asarray(adv, np.float32)[:, None], (N, T)).copy(),
    np.zeros((N, T), np.float32),
    np.zeros((N, T), np.float32),
  )


def test_on_policy_grpo_step_is_the_policy_gradient():
  """At ratio 1 with no KL, the GRPO loss is -mean_seq(mean_t A) and its gradient is the
  REINFORCE gradient -mean_seq(mean_t A grad log pi). If this fails, check that the trainer's
  log-probs come from logprobs.completion_logprobs and that old log-probs are held constant."""
  graphdef, params = _setup()
  batch = _batch()
  algo = dataclasses.replace(algorithms.grpo(kl_coef=0.0), aggregation_constant=4)
  (loss, m), grads = jax.value_and_grad(
    lambda p: trainer.rl_loss(graphdef, p, batch, algo, temperature=1.0, on_policy=True),
    has_aux=True,
  )(params)
  mask = batch.loss_mask_NxT.astype(np.float32)

  def reinforce(p):
    logp = completion_logprobs(
      graphdef,
      p,
      batch.prompt_NxP,
      batch.prompt_mask_NxP,
      batch.completion_NxT,
      batch.completion_mask_NxT,
    ).logp_NxT
    per_seq = (batch.adv_NxT * logp * mask).sum(1) / mask.sum(1)
    return -per_seq.mean()

  ref_grads = jax.grad(reinforce)(params)
  np.testing.assert_allclose(float(loss), -float(batch.adv_NxT[:, 0].mean()), atol=1e-6)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert float(m["clip_frac"]) == 0.0 and float(m["kl"]) == 0.0


def test_kl_term_uses_the_reference_logprobs():
  graphdef, params = _setup()
  batch = _batch()
  logp = completion_logprobs(
    graphdef,
    params,
    batch.prompt_NxP,
    batch.prompt_mask_NxP,
    batch.completion_NxT,
    batch.completion_mask_NxT,
  ).logp_NxT
  batch = batch._replace(ref_logp_NxT=np.asarray(logp) - 0.5)  # pi_ref = pi * e^-0.5 per token
  algo = dataclasses.replace(algorithms.grpo(kl_coef=0.1), aggregation_constant=4)
  loss, m = trainer.rl_loss(graphdef, params, batch, algo, temperature=1.0, on_policy=True)
  k3 = np.exp(-0.5) + 0.5 - 1.0  # exp(x) - x - 1 at x = ref - logp = -0.5
  np.testing.assert_allclose(float(m["kl"]), k3, rtol=1e-5)
  np.testing.assert_allclose(
    float(loss), -float(batch.adv_NxT[:, 0].mean()) + 0.1 * k3, rtol=1e-5, atol=1e-6
  )


def test_non_finite_update_is_skipped_and_counted():
  graphdef, params = _setup()
  tx = trainer.make_optimizer(learning_rate=1e-2)
  algo = algorithms.grpo(kl_coef=0.0)
  update = trainer.make_rl_update(graphdef, algo, tx)
  state = trainer.init_state(params, tx)
  before = [np.asarray(x) for x in jax.tree.leaves(state.params)]
  bad = _batch(adv=[np.nan] + [1.0] * 7)
  state, m = update(state, bad, jax.random.key(0))
  assert int(m["skipped_updates"]) == 1 and int(m["skip_reason"]) == trainer.SKIP_NONFINITE_GRAD
  for a, b in zip(before, jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, np.asarray(b))
  state, m = update(state, _batch(seed=1), jax.random.key(1))
  assert int(m["skipped_updates"]) == 1 and int(m["skip_reason"]) == 0
  assert any(
    not np.array_equal(a, np.asarray(b)) for a, b in zip(before, jax.tree.leaves(state.params))
  )


def test_minibatches_and_iterations_take_that_many_optimizer_steps():
  graphdef, params = _setup()
  tx = trainer.make_optimizer(learning_rate=1e-3)
  algo = algorithms.grpo(kl_coef=0.0)
  batch = _batch(N=8)
  old = completion_logprobs(
    graphdef,
    params,
    batch.prompt_NxP,
    batch.prompt_mask_NxP,
    batch.completion_NxT,
    batch.completion_mask_NxT,
  ).logp_NxT
  batch = batch._replace(old_logp_NxT=np.asarray(old))
  update = trainer.make_rl_update(graphdef, algo, tx, num_minibatches=2, num_iterations=3)
  state, m = update(trainer.init_state(params, tx), batch, jax.random.key(0))
  assert int(state.step) == 6
  # Off-policy epochs move the ratio away from 1, so some tokens can be clipped; the loss of the
  # first minibatch equals -mean(A) of that minibatch, so the average is finite and bounded.
  assert np.isfinite(float(m["loss"]))


def test_sft_step_reduces_the_loss():
  graphdef, params = _setup()
  tx = trainer.make_optimizer(learning_rate=3e-3)
  step = trainer.make_sft_step(graphdef, tx)
  b = _batch()
  state = trainer.init_state(params, tx)
  losses = []
  for _ in range(20):
    state, m = step(state, b.prompt_NxP, b.prompt_mask_NxP, b.completion_NxT, b.completion_mask_NxT)
    losses.append(float(m["loss"]))
  assert losses[-1] < 0.5 * losses[0]


def test_constant_learning_rate_after_warmup():
  tx = trainer.make_optimizer(learning_rate=0.1, warmup_steps=4, max_grad_norm=None)
  p = {"w": jnp.zeros(())}
  s = tx.init(p)
  sizes = []
  for _ in range(8):
    u, s = tx.update({"w": jnp.ones(())}, s, p)
    sizes.append(-float(u["w"]))
  np.testing.assert_allclose(sizes[:4], [0.0, 0.025, 0.05, 0.075], rtol=1e-3, atol=1e-6)
  np.testing.assert_allclose(sizes[4:], [0.1] * 4, rtol=1e-3)


def test_a_second_step_with_other_completion_lengths_compiles_nothing():
  """Shapes are fixed per run (prompt bucket, max new tokens): a step whose completions end
  at other lengths, with other rewards and a new rng, reuses the compiled reference pass and
  update. Counted with the jit caches and with jax's compile events."""
  from jax._src import monitoring  # pylint: disable=import-outside-toplevel

  graphdef, params = _setup()
  algo = dataclasses.replace(algorithms.grpo(kl_coef=0.04), aggregation_constant=4)
  tx = optax.adam(1e-3)
  update = trainer.make_rl_update(graphdef, algo, tx)
  logprob_fn = trainer.make_logprob_fn(graphdef)
  ref_params = jax.tree.map(jnp.copy, params)
  state = trainer.init_state(params, tx)

  def step(state, seed):
    b = _batch(seed=seed)
    b = b._replace(
      prompt_NxP=np.repeat(b.prompt_NxP[::4], 4, 0),
      prompt_mask_NxP=np.repeat(b.prompt_mask_NxP[::4], 4, 0),
    )
    ref = logprob_fn(
      ref_params,
      b.prompt_NxP,
      b.prompt_mask_NxP,
      b.completion_NxT,
      b.completion_mask_NxT,
      prompt_group_size=4,
    )
    state, m = update(
      state, b._replace(ref_logp_NxT=ref), jax.random.key(seed), prompt_group_size=4
    )
    return state, m, b.completion_mask_NxT.sum(1)

  state, _, lengths_1 = step(state, 0)
  sizes = (_cache_size(update, 4), logprob_fn._cache_size())
  events = []
  listener = lambda name, *a, **k: events.append(name)
  monitoring.register_event_duration_secs_listener(listener)
  try:
    state, m, lengths_2 = step(state, 1)
    jax.block_until_ready(m)
  finally:
    monitoring.unregister_event_duration_listener(listener)
  assert not np.array_equal(lengths_1, lengths_2)  # the two steps really differ
  assert (_cache_size(update, 4), logprob_fn._cache_size()) == sizes
  assert not [e for e in events if "backend_compile" in e], events
