"""Algorithm presets: composition, token-level advantages, reward shaping, dynamic sampling."""

import dataclasses

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rl_jax import algorithms, trainer
from rl_jax.algorithms import AdvantageInputs, compute_advantages
from rl_jax.components import Component, ComponentError
from rl_jax.models import transformer
from rl_jax.objectives import AGGREGATION_MODES
from rl_jax.types import TrainBatch

PRESETS = sorted(algorithms.PRESETS)


def _inputs(rewards_N, mask, logp, ref=None, values=None, group_size=None, extras=None):
  """AdvantageInputs of consecutive groups of `group_size` rows (default: one group)."""
  rewards_N = jnp.asarray(rewards_N, jnp.float32)
  N = rewards_N.shape[0]
  G = group_size or N
  return AdvantageInputs(
    extras=extras or {},
    rewards_N=rewards_N,
    loss_mask_NxT=jnp.asarray(mask, jnp.float32),
    logp_NxT=jnp.asarray(logp),
    ref_logp_NxT=None if ref is None else jnp.asarray(ref),
    values_NxT=None if values is None else jnp.asarray(values),
    group_index_BxG=jnp.arange(N, dtype=jnp.int32).reshape(N // G, G),
  )


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_builds_and_is_loss_minus_mean_adv_at_ratio_one(name):
  algo = algorithms.make_algorithm(name)
  graphdef, params = transformer.init_model(transformer.preset("test", 19), 0)
  rng = np.random.default_rng(0)
  N, P, T = 8, 4, 5
  mask = np.arange(T)[None] < rng.integers(1, T + 1, N)[:, None]
  rewards = rng.random(N).astype(np.float32)
  values = rng.normal(size=(N, T)) * mask
  extras = {name: jnp.asarray(rng.random(N), jnp.float32) for name in algo.required_extras}
  token_extras = {}
  if "segment_ids" in extras:  # per-token: non-decreasing segment ids along each row
    token_extras["segment_ids"] = np.sort(rng.integers(0, 3, (N, T)), axis=1).astype(np.int32)
    extras["segment_ids"] = jnp.asarray(token_extras["segment_ids"])
  inputs = _inputs(rewards, mask, np.zeros((N, T)), np.zeros((N, T)), values, 4, extras)
  adv, _ = compute_advantages(algo, inputs)
  assert adv.shape == (N, T) and np.all(np.asarray(adv)[~mask] == 0)
  batch = TrainBatch(
    rng.integers(3, 19, (N, P)).astype(np.int32),
    np.ones((N, P), bool),
    rng.integers(3, 19, (N, T)).astype(np.int32),
    mask,
    mask,
    adv,
    np.zeros((N, T), np.float32),
    np.zeros((N, T), np.float32),
    token_extras=token_extras,
  )
  no_kl = dataclasses.replace(algo, kl_coef=0.0, aggregation_constant=T)
  loss, m = trainer.rl_loss(graphdef, params, batch, no_kl, temperature=1.0, on_policy=True)
  from rl_jax.objectives import aggregate

  expected = aggregate(-adv, jnp.asarray(mask, jnp.float32), algo.aggregation, constant=T)
  np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5, atol=1e-6)
  assert float(m["clip_frac"]) == 0.0


def test_unknown_preset_and_unsupported_field_name_the_field():
  with pytest.raises(ValueError, match="algorithm.name"):
    algorithms.make_algorithm("ppo_plus_plus")
  with pytest.raises(ValueError, match="algorithm.name"):
    algorithms.check(Component.of("ppo_plus_plus"))
  # Presets take explicit keyword arguments: an unknown one is a TypeError in Python, and the
  # config layer names the field (and the preset's arguments).
  with pytest.raises(TypeError, match="std_ddof"):
    algorithms.make_algorithm("rloo", std_ddof=0)
  with pytest.raises(ComponentError, match="algorithm.std_ddof"):
    algorithms.check(Component.of("rloo", std_ddof=0))
  with pytest.raises(ValueError, match="algorithm.aggregation"):
    algorithms.make_algorithm("grpo", aggregation="sum_of_squares")
  with pytest.raises(ValueError, match="algorithm.aggregation"):
    algorithms.check(Component.of("grpo", aggregation="sum_of_squares"))
  # A value from the command line is converted to the preset's annotated type.
  checked = algorithms.check(Component.of("grpo", kl_coef="0.5", std_ddof="0"))
  assert checked.args == dict(kl_coef=0.5, std_ddof=0)
  built = algorithms.build(checked)
  assert (built.name, built.kl_coef, built.std_ddof) == ("grpo", 0.5, 0)


def test_preset_defaults_match_the_method_table():
  dapo = algorithms.make_algorithm("dapo")
  assert (
    dapo.clip_eps_low,
    dapo.clip_eps_high,
    dapo.aggregation,
    dapo.kl_coef,
    dapo.dynamic_sampling,
  ) == (0.2, 0.28, "token_mean", 0.0, True)
  assert not algorithms.make_algorithm("dapo", dynamic_sampling=False).dynamic_sampling
  grpo = algorithms.make_algorithm("grpo")
  assert (grpo.kl_coef, grpo.aggregation) == (0.04, "seq_mean_token_mean")
  gspo = algorithms.make_algorithm("gspo")
  assert (gspo.clip_eps_low, gspo.clip_eps_high) == (3e-4, 4e-4)
  assert algorithms.make_algorithm("dr_grpo").aggregation == "seq_sum_const"
  rpp = algorithms.make_algorithm("reinforce_pp")
  assert rpp.kl_in_reward and rpp.advantages is algorithms.reinforce_pp_returns
  assert grpo.advantages is algorithms.group_zscore
  assert algorithms.make_algorithm("rloo").advantages is algorithms.leave_one_out
  assert algorithms.make_algorithm("dr_grpo").advantages is algorithms.group_centred
  assert algorithms.make_algorithm("ppo").advantages is algorithms.gae_advantages
  # What the step must compute: reference log-probs iff a KL weight (or an explicit need).
  assert grpo.requires("ref_logp") and not dapo.requires("ref_logp")
  assert dataclasses.replace(dapo, needs=frozenset({"ref_logp"})).requires("ref_logp")
  assert algorithms.make_algorithm("ppo").requires("values") and not grpo.requires("values")


def test_group_advantages_broadcast_and_masked():
  r = jnp.array([1.0, 0.0, 0.0, 0.0])
  mask = jnp.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]], jnp.float32)
  adv, returns = compute_advantages(algorithms.grpo(), _inputs(r, mask, jnp.zeros((4, 3))))
  assert returns is None
  np.testing.assert_allclose(adv, [[1.5, 1.5, 0], [-0.5, 0, 0], [-0.5] * 3, [0, 0, 0]], rtol=1e-5)


def _whiten(x, m):
  v = x[m > 0]
  return np.where(m > 0, (x - v.mean()) / np.sqrt(v.var() + 1e-8), 0.0)


def test_reinforce_pp_hand_example():
  """r = [1, 0]; masks [1,1,0], [1,0,0]; no KL: token rewards [[0,1,0],[0,0,0]], returns
  [[1,1,0],[0,0,0]], whitened over the 3 valid tokens (mean 2/3, std sqrt(2)/3)."""
  mask = jnp.array([[1, 1, 0], [1, 0, 0]], jnp.float32)
  inputs = _inputs([1.0, 0.0], mask, jnp.zeros((2, 3)))
  adv, _ = compute_advantages(algorithms.reinforce_pp(kl_coef=0.0), inputs)
  np.testing.assert_allclose(adv, [[0.70711, 0.70711, 0], [-1.41421, 0, 0]], rtol=1e-4)


def test_reinforce_pp_baseline_and_kl_in_reward():
  mask = np.array([[1, 1, 1], [1, 1, 0]], np.float32)
  logp = np.array([[-1.0, -2.0, -0.5], [-0.3, -1.0, 0.0]], np.float32)
  ref = np.array([[-1.5, -2.0, -0.1], [-0.3, -0.2, 0.0]], np.float32)
  inputs = _inputs([1.0, 0.0], mask, logp, ref)
  adv, _ = compute_advantages(algorithms.reinforce_pp_baseline(kl_coef=0.1), inputs)
  # By hand: R - mean_g(R) = [0.5, -0.5] on the last valid token; minus 0.1 * (logp - ref).
  tok = -0.1 * (logp - ref) * mask
  tok[0, 2] += 0.5
  tok[1, 1] += -0.5
  returns = np.cumsum(tok[:, ::-1], axis=1)[:, ::-1] * mask
  np.testing.assert_allclose(adv, _whiten(returns, mask), rtol=1e-4, atol=1e-6)


def test_dapo_overlong_penalty_shapes_rewards():
  """The step scores a rollout: reward 1 for every row, DAPO's soft overlong penalty (L_max 8,
  L_cache 4) on generated lengths 2, 6, 7, 8: 0, -0.5, -0.75, -1."""
  from rl_jax import policy as policy_lib
  from rl_jax import rewards, rollouts, tokenizers
  from rl_jax.sampling import SamplingConfig
  from rl_jax.step import Step
  from rl_jax.tasks.base import Example
  from rl_jax.types import Rollout

  tok = tokenizers.CharTokenizer("0123456789")
  cfg = transformer.preset("test", tok.vocab_size)
  graphdef, _ = transformer.abstract_model(cfg)
  policy = policy_lib.Policy("embedded", cfg, graphdef, tok, stop_ids=tok.stop_ids)
  T, lengths = 8, np.array([2, 6, 7, 8])
  settings = rollouts.RolloutSettings(
    SamplingConfig(max_new_tokens=T, stop_ids=tok.stop_ids), group_size=4, prompt_len=3
  )
  ones = rewards.Rewards([rewards.Term("one", lambda ex, c: np.ones(len(c), np.float32), 1.0)])
  mask = np.arange(T)[None] < lengths[:, None]
  roll = Rollout(
    prompt_NxP=np.full((4, 3), 4, np.int32),
    prompt_mask_NxP=np.ones((4, 3), bool),
    completion_NxT=np.where(mask, 5, 0).astype(np.int32),
    completion_mask_NxT=mask,
    loss_mask_NxT=mask,
    behaviour_logp_NxT=np.zeros((4, T), np.float32),
    group_id_N=np.zeros(4, np.int32),
    row_valid_N=np.ones(4, bool),
    example_index_N=np.zeros(4, np.int32),
  )
  examples = [Example("1", "2")]
  tx = optax.sgd(1.0)
  dapo = Step.create(policy, algorithms.dapo(overlong_cache_len=4), None, ones, None, settings, tx)
  scored = dapo.score(roll, examples)
  np.testing.assert_allclose(scored.extras["reward"], [1.0, 0.5, 0.25, 0.0])
  np.testing.assert_allclose(scored.extras["reward/overlong"], [0.0, -0.5, -0.75, -1.0])
  np.testing.assert_allclose(scored.extras["total_reward"], [1.0] * 4)
  grpo = Step.create(policy, algorithms.grpo(), None, ones, None, settings, tx)
  scored = grpo.score(roll, examples)
  assert scored.extras["reward"].tolist() == [1.0] * 4 and "reward/overlong" not in scored.extras


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
def test_microbatch_accumulation_equals_one_batch(mode):
  """Split invariance: 4 micro-batches with the global denominator == the whole batch."""
  graphdef, params = transformer.init_model(transformer.preset("test", 19), 1)
  N, P, T = 16, 4, 6
  algo = dataclasses.replace(
    algorithms.grpo(kl_coef=0.04), aggregation=mode, aggregation_constant=T
  )
  rng = np.random.default_rng(3)
  mask = np.arange(T)[None] < rng.integers(1, T + 1, N)[:, None]
  mask[5] = False  # one empty completion
  adv = np.broadcast_to(rng.normal(size=(N, 1)), (N, T)).astype(np.float32) * mask
  batch = TrainBatch(
    rng.integers(3, 19, (N, P)).astype(np.int32),
    np.ones((N, P), bool),
    rng.integers(3, 19, (N, T)).astype(np.int32),
    mask,
    mask,
    adv,
    np.zeros((N, T), np.float32),
    (-1.0 - rng.random((N, T))).astype(np.float32),
  )
  # Plain SGD with rate 1: the parameter change *is* the gradient (Adam's first step,
  # g / (|g| + eps), would amplify float noise in near-zero gradient entries).
  tx = optax.sgd(1.0)
  results = []
  for micro in (1, 4):
    update = trainer.make_rl_update(graphdef, algo, tx, num_microbatches=micro)
    state, m = update(
      trainer.init_state(jax.tree.map(jnp.copy, params), tx), batch, jax.random.key(0)
    )
    results.append((m, state.params))
  (m1, p1), (m4, p4) = results
  np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(m4["pg_loss"], m1["pg_loss"], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=1e-5)
  for a, b, p0 in zip(jax.tree.leaves(p1), jax.tree.leaves(p4), jax.tree.leaves(params)):
    g1, g4 = np.asarray(p0) - np.asarray(a), np.asarray(p0) - np.asarray(b)
    np.testing.assert_allclose(g4, g1, rtol=1e-5, atol=1e-5 * np.abs(g1).max())


def test_dynamic_sampling_keeps_only_informative_groups():
  """Prompts whose first operand is even get the same reward for every sample (no signal);
  dynamic sampling must drop them, draw more rounds, and fill only when rounds run out."""
  from tests_support import make_small_config

  from rl_jax import loop, rollouts

  def score(examples, completions):
    rewards = np.array(
      [0.5 if ex.meta[0] % 2 == 0 else float(i % 2) for i, ex in enumerate(examples)], np.float32
    )
    return dict(reward=rewards, correct=rewards == 1.0)

  config = make_small_config(**{"algorithm.name": "dapo", "rl.prompts_per_step": 4})
  exp = loop.Experiment.build(config, rewards={"task": (score, 1.0)})
  assert exp.step.algo.dynamic_sampling and exp.step.algo.overlong_cache_len is None
  params = exp.policy.init_params(0)
  roll, metrics = exp.step.collect(params, 1, jax.random.key(0))
  G = config.rl.group_size
  index = rollouts.group_index(roll.group_id_N)
  assert index.shape == (4, G) and np.all(index >= 0)
  groups = np.asarray(roll.extras["reward"])[index]
  informative = np.ptp(groups, axis=1) > 0
  assert informative.sum() == 4 - metrics["ds_filled_groups"]
  assert metrics["ds_rounds"] >= 1 and metrics["ds_dropped_groups"] >= 0
  # The kept groups are exactly the odd-first-operand prompts (every row of a group has its
  # group's prompt).
  decode = exp.policy.tokenizer.decode
  for rows, keep in zip(index, informative):
    texts = {decode(np.asarray(roll.prompt_NxP)[n]) for n in rows}
    assert len(texts) == 1
    first = int(texts.pop().split("+")[0])
    assert keep == (first % 2 == 1)
  # Without dynamic sampling every group is kept as drawn, in one round.
  exp.step.algo = dataclasses.replace(exp.step.algo, dynamic_sampling=False)
  roll2, metrics2 = exp.step.collect(params, 1, jax.random.key(0))
  assert "ds_rounds" not in metrics2 and roll2.extras["reward"].shape == (4 * G,)


def test_ppo_with_zero_values_and_lambda_one_is_reinforce_pp():
  """GAE with V = 0, gamma = lam = 1 is the return-to-go, so PPO's whitened advantages equal
  REINFORCE++'s, and PPO's value targets are the returns themselves."""
  rng = np.random.default_rng(0)
  mask = jnp.asarray(np.arange(5)[None] < rng.integers(1, 6, 8)[:, None], jnp.float32)
  logp, ref = (jnp.asarray(-rng.random((8, 5)), jnp.float32) for _ in range(2))
  inputs = _inputs(rng.random(8), mask, logp, ref, jnp.zeros((8, 5)), group_size=4)
  ppo_adv, returns = compute_advantages(algorithms.ppo(kl_coef=0.05, gae_lambda=1.0), inputs)
  rpp_adv, _ = compute_advantages(algorithms.reinforce_pp(kl_coef=0.05), inputs)
  np.testing.assert_allclose(ppo_adv, rpp_adv, rtol=1e-5, atol=1e-6)
  from rl_jax.objectives import discounted_returns
  from rl_jax.objectives.kl import kl_k1
  from rl_jax.objectives.shaping import token_level_rewards

  tok = token_level_rewards(inputs.rewards_N, mask, kl_NxT=kl_k1(logp, ref), kl_coef=0.05)
  np.testing.assert_allclose(returns, discounted_returns(tok, mask), rtol=1e-5, atol=1e-6)


def _ppo_batch(graphdef, critic, seed=0):
  from rl_jax.logprobs import completion_values

  rng = np.random.default_rng(seed)
  N, P, T = 8, 4, 5
  mask = np.arange(T)[None] < rng.integers(1, T + 1, N)[:, None]
  prompts = rng.integers(3, 19, (N, P)).astype(np.int32)
  comps = rng.integers(3, 19, (N, T)).astype(np.int32)
  values = completion_values(graphdef, critic, prompts, np.ones((N, P), bool), comps, mask)
  inputs = _inputs(rng.random(N), mask, jnp.zeros((N, T)), None, values, group_size=4)
  adv, returns = compute_advantages(algorithms.ppo(kl_coef=0.0), inputs)
  return TrainBatch(
    prompts,
    np.ones((N, P), bool),
    comps,
    mask,
    mask,
    adv,
    np.zeros((N, T)),
    np.zeros((N, T)),
    values,
    returns,
  )


def test_ppo_critic_learns_and_does_not_touch_the_policy_update():
  from rl_jax.logprobs import init_critic

  cfg = transformer.preset("test", 19)
  graphdef, params = transformer.init_model(cfg, 0)
  critic = init_critic(params, cfg.d_model)
  batch = _ppo_batch(graphdef, critic)
  algo = algorithms.ppo(kl_coef=0.0)
  tx = trainer.make_optimizer(learning_rate=1e-3)
  critic_tx = trainer.make_optimizer(learning_rate=3e-3)
  update = trainer.make_rl_update(graphdef, algo, tx, critic_tx=critic_tx)
  state = trainer.init_state(
    jax.tree.map(jnp.copy, params), tx, jax.tree.map(jnp.copy, critic), critic_tx
  )
  losses = []
  for i in range(15):
    # Fixed targets; old values = the current critic's (fresh each step) so clipping allows
    # steady progress towards the returns.
    from rl_jax.logprobs import completion_values

    v = completion_values(
      graphdef,
      state.critic_params,
      batch.prompt_NxP,
      batch.prompt_mask_NxP,
      batch.completion_NxT,
      batch.completion_mask_NxT,
    )
    state, m = update(state, batch._replace(old_values_NxT=v), jax.random.key(i))
    losses.append(float(m["value_loss"]))
  assert losses[-1] < 0.3 * losses[0], losses
  # The policy's trajectory is the same with or without the critic: the losses are independent.
  no_critic = dataclasses.replace(algo, critic=False)
  update_pg = trainer.make_rl_update(graphdef, no_critic, tx)
  state_pg = trainer.init_state(jax.tree.map(jnp.copy, params), tx)
  state_joint = trainer.init_state(
    jax.tree.map(jnp.copy, params), tx, jax.tree.map(jnp.copy, critic), critic_tx
  )
  state_pg, _ = update_pg(state_pg, batch, jax.random.key(0))
  state_joint, _ = update(state_joint, batch, jax.random.key(0))
  for a, b in zip(jax.tree.leaves(state_pg.params), jax.tree.leaves(state_joint.params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_kl_placement_is_a_choice_for_group_estimators():
  """kl_in_reward=True: the sequence reward becomes R - beta * sum_t k1_t and the loss carries no
  KL term; False (GRPO's default): rewards untouched, k3 in the loss."""
  mask = jnp.array([[1, 1, 0], [1, 1, 1]], jnp.float32)
  logp = jnp.array([[-1.0, -1.0, 0.0], [-1.0, -1.0, -1.0]])
  ref = jnp.array([[-1.2, -1.3, 0.0], [-0.8, -0.9, -0.8]])  # sum k1: +0.5 and -0.5
  r = jnp.array([1.0, 0.0])
  folded = algorithms.grpo(kl_coef=0.1, kl_in_reward=True)
  adv, _ = compute_advantages(folded, _inputs(r, mask, logp, ref))
  from rl_jax.objectives import grpo_advantages

  shaped = grpo_advantages(jnp.array([[1.0 - 0.05, 0.0 + 0.05]]))
  np.testing.assert_allclose(adv[:, 0], shaped[0], rtol=1e-5)
  in_loss = algorithms.grpo(kl_coef=0.1)
  adv2, _ = compute_advantages(in_loss, _inputs(r, mask, logp, ref))
  np.testing.assert_allclose(adv2[:, 0], grpo_advantages(r[None])[0], rtol=1e-5)
  # PPO / REINFORCE++ can move the KL into the loss too.
  assert not algorithms.make_algorithm("reinforce_pp", kl_in_reward=False).kl_in_reward
  assert not algorithms.make_algorithm("ppo", kl_in_reward=False).kl_in_reward


def test_shared_trunk_value_head_trains_the_policy_trunk_too():
  from rl_jax.logprobs import critic_view, init_critic

  cfg = transformer.preset("test", 19)
  graphdef, params = transformer.init_model(cfg, 0)
  head = init_critic(params, cfg.d_model, shared_trunk=True)
  assert set(head) == {"value_head"}
  # A zero-initialised head passes no gradient to the trunk; give it weights.
  kernel = jax.random.normal(jax.random.key(1), (cfg.d_model, 1)) * 0.1
  head = dict(value_head=dict(kernel=kernel, bias=jnp.zeros((1,))))
  own = init_critic(params, cfg.d_model)
  own["value_head"] = dict(kernel=jnp.copy(kernel), bias=jnp.zeros((1,)))
  batch = _ppo_batch(graphdef, critic_view(params, head))
  batch = batch._replace(returns_NxT=batch.returns_NxT + 1.0)  # a value error to learn from
  tx = trainer.make_optimizer(learning_rate=1e-3)
  shared = algorithms.ppo(kl_coef=0.0, shared_trunk=True)
  separate = algorithms.ppo(kl_coef=0.0)
  s_shared = trainer.init_state(jax.tree.map(jnp.copy, params), tx, head, tx)
  s_sep = trainer.init_state(jax.tree.map(jnp.copy, params), tx, own, tx)
  s_shared, m1 = trainer.make_rl_update(graphdef, shared, tx, critic_tx=tx)(
    s_shared, batch, jax.random.key(0)
  )
  s_sep, m2 = trainer.make_rl_update(graphdef, separate, tx, critic_tx=tx)(
    s_sep, batch, jax.random.key(0)
  )
  np.testing.assert_allclose(m1["value_loss"], m2["value_loss"], rtol=1e-5)  # same start
  diff = max(
    float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
    for a, b in zip(jax.tree.leaves(s_shared.params), jax.tree.leaves(s_sep.params))
  )
  assert diff > 0  # the value loss moved the shared trunk
  assert set(s_shared.critic_params) == {"value_head"}


def _jitted_update(update, prompt_group_size: int):
  """The jitted program behind `make_rl_update`'s function for one declared prompt group size."""
  return update.jitted(prompt_group_size)


def _count_dots(jaxpr) -> int:
  n = 0
  for eqn in jaxpr.eqns:
    n += eqn.primitive.name == "dot_general"
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      n += _count_dots(sub)
  return n


def test_shared_trunk_runs_the_trunk_once_for_both_heads():
  """`completion_logprobs_and_values` equals the two separate calls (values, log-probs,
  entropies and the gradient of a mix of them), and the PPO update with a shared trunk has the
  matmuls of one trunk pass (forward and backward) plus the value head's, not two passes."""
  from rl_jax.logprobs import (
    completion_logprobs,
    completion_logprobs_and_values,
    completion_values,
    critic_view,
    init_critic,
  )

  cfg = transformer.preset("test", 19)
  graphdef, params = transformer.init_model(cfg, 0)
  head = dict(
    kernel=jax.random.normal(jax.random.key(1), (cfg.d_model, 1)) * 0.1, bias=jnp.ones((1,)) * 0.3
  )
  batch = _ppo_batch(graphdef, critic_view(params, dict(value_head=head)))
  args = (batch.prompt_NxP, batch.prompt_mask_NxP, batch.completion_NxT, batch.completion_mask_NxT)

  def joint(p, h):
    stats, values = completion_logprobs_and_values(graphdef, p, h, *args, with_entropy=True)
    return jnp.sum(stats.logp_NxT) + 0.5 * jnp.sum(stats.entropy_NxT) + jnp.sum(values**2)

  def separate(p, h):
    stats = completion_logprobs(graphdef, p, *args, with_entropy=True)
    values = completion_values(graphdef, critic_view(p, dict(value_head=h)), *args)
    return jnp.sum(stats.logp_NxT) + 0.5 * jnp.sum(stats.entropy_NxT) + jnp.sum(values**2)

  (a, ga), (b, gb) = [
    jax.value_and_grad(f, argnums=(0, 1))(params, head) for f in (joint, separate)
  ]
  np.testing.assert_allclose(a, b, rtol=1e-6)
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):  # float32 summation order differs
    np.testing.assert_allclose(x, y, atol=1e-4 * float(np.abs(y).max()) + 1e-7)

  tx = trainer.make_optimizer(learning_rate=1e-3)
  dots = {}
  for name, algo, critic in (
    ("policy only", algorithms.grpo(kl_coef=0.0), None),
    ("shared", algorithms.ppo(kl_coef=0.0, shared_trunk=True), dict(value_head=head)),
    ("separate", algorithms.ppo(kl_coef=0.0), init_critic(params, cfg.d_model)),
  ):
    state = trainer.init_state(params, tx, critic, tx if critic else None)
    update = trainer.make_rl_update(graphdef, algo, tx, critic_tx=tx)
    jitted = _jitted_update(update, prompt_group_size=1)
    dots[name] = _count_dots(
      jitted.trace(state, batch, jax.random.key(0), None, jnp.inf).jaxpr.jaxpr
    )
  trunk = dots["separate"] - dots["policy only"]  # a second trunk's passes (and its head)
  assert trunk > 10, dots
  assert dots["shared"] - dots["policy only"] <= 3, dots  # the head: forward, 2 in backward


@pytest.mark.parametrize("name", sorted(algorithms.PRESETS))
def test_every_preset_argument_converts_from_command_line_strings(name):
  """Each preset's keyword arguments arrive as strings from the command line and come back with
  the annotated type (presets sharing another's signature included)."""
  import inspect

  from rl_jax.components import Component

  params = inspect.signature(algorithms.PRESETS[name]).parameters.values()
  for p in params:
    if isinstance(p.default, bool | int | float) and p.default is not None:
      checked = algorithms.check(Component.of(name, **{p.name: str(p.default)}))
      value = checked.args[p.name]
      assert value == p.default and type(value) is type(p.default), (name, p.name, value)
