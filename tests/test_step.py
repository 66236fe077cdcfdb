"""Acceptance tests of the step refactor: hyperparameters are read when the loss is computed,
groups and prompt sharing are declared by the rollout (never inferred from shapes), forced
prefixes are attended to but never trained on, and groups of any size get their own
statistics."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rl_jax import algorithms, rollouts, tokenizers, trainer
from rl_jax import policy as policy_lib
from rl_jax.algorithms import AdvantageInputs, compute_advantages
from rl_jax.logprobs import completion_logprobs
from rl_jax.models import transformer
from rl_jax.objectives import aggregate
from rl_jax.objectives.kl import kl_k3
from rl_jax.objectives.policy_losses import ppo_clip
from rl_jax.sampling import SamplingConfig, generate, generate_continuations
from rl_jax.step import Step
from rl_jax.tasks.base import Example
from rl_jax.types import Rollout, TrainBatch

TOK = tokenizers.CharTokenizer("0123456789+=")
V = TOK.vocab_size


def _model(seed=0):
  cfg = transformer.preset("test", V)
  graphdef, params = transformer.init_model(cfg, seed)
  return cfg, graphdef, params


@functools.partial(jax.jit, static_argnums=0, static_argnames="group_size")
def _logp_jit(graphdef, params, prompt, pmask, comp, cmask, group_size=1):
  return completion_logprobs(
    graphdef, params, prompt, pmask, comp, cmask, group_size=group_size
  ).logp_NxT


def _logp(graphdef, params, prompt, pmask, comp, cmask, group_size=1):
  return np.asarray(_logp_jit(graphdef, params, prompt, pmask, comp, cmask, group_size=group_size))


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


# ---------------------------------------------------------------------------------------------
# 1. A hyperparameter changed with dataclasses.replace changes the loss.


def test_replacing_clip_eps_high_changes_the_loss_and_the_clip_fraction():
  grpo = algorithms.grpo(kl_coef=0.0)
  higher = dataclasses.replace(grpo, clip_eps_high=0.28)
  # Per-token ratios rho = exp(logp - old) and per-row advantages A, off-policy.
  rho = np.array(
    [
      [1.25, 1.5, 1.0, 0.7, 1.25, 1.1],
      [1.25, 0.7, 1.0, 1.5, 1.0, 1.0],
      [1.1, 1.25, 1.3, 1.0, 0.5, 1.0],
      [1.5, 1.25, 1.0, 1.0, 1.0, 1.0],
    ],
    np.float32,
  )
  adv_N = np.array([0.5, -1.0, 2.0, 0.8], np.float32)
  lengths = np.array([6, 4, 5, 2])
  N, T = rho.shape
  mask = np.arange(T)[None] < lengths[:, None]
  adv = adv_N[:, None] * mask

  # The per-token loss -min(rho A, clip(rho, 1 - 0.2, 1 + eps_high) A), by hand.
  logp, old = jnp.log(jnp.asarray(rho)), jnp.zeros((N, T))
  per_token = {
    name: np.asarray(algo.policy_loss(algo, logp, old, jnp.asarray(adv), jnp.asarray(mask)))
    for name, algo in (("grpo", grpo), ("higher", higher))
  }
  # Row 0, A = 0.5: rho 1.25 is clipped at 1.2 by GRPO, not at 1.28.
  np.testing.assert_allclose(per_token["grpo"][0, 0], -0.6, rtol=1e-6)
  np.testing.assert_allclose(per_token["higher"][0, 0], -0.625, rtol=1e-6)
  # rho 1.5 is clipped by both, at their own bound: -1.2 * 0.5 and -1.28 * 0.5.
  np.testing.assert_allclose(per_token["grpo"][0, 1], -0.6, rtol=1e-6)
  np.testing.assert_allclose(per_token["higher"][0, 1], -0.64, rtol=1e-6)
  # A < 0 (row 1) never meets the upper bound: rho 1.25 costs 1.25, rho 0.7 is clipped at 0.8.
  for name in per_token:
    np.testing.assert_allclose(per_token[name][1, :4], [1.25, 0.8, 1.0, 1.5], rtol=1e-6)

  def by_hand(eps_high):
    ratio = np.where(rho > 1 + eps_high, 1 + eps_high, np.where(rho < 0.8, 0.8, rho))
    return -np.minimum(rho * adv, ratio * adv)

  for name, eps_high in (("grpo", 0.2), ("higher", 0.28)):
    np.testing.assert_allclose(per_token[name] * mask, by_hand(eps_high) * mask, rtol=1e-6)

  # Through trainer.rl_loss with the test model: old log-probs set so that the ratios are rho.
  _, graphdef, params = _model()
  prompt, pmask = tokenizers.encode_left_padded(TOK, ["1+2=", "34+5=", "6=", "78+90="], 7)
  comp = np.random.default_rng(0).integers(3, V, (N, T)).astype(np.int32)
  model_logp = _logp(graphdef, params, prompt, pmask, comp, mask)
  old_logp = (model_logp - np.log(rho)) * mask
  zeros = np.zeros((N, T), np.float32)
  batch = TrainBatch(prompt, pmask, comp, mask, mask, adv, old_logp, zeros)
  loss_fn = jax.jit(
    lambda algo, on_policy: trainer.rl_loss(
      graphdef, params, batch, algo, temperature=1.0, on_policy=on_policy
    ),
    static_argnums=(0, 1),
  )
  out = {name: loss_fn(algo, False) for name, algo in (("grpo", grpo), ("higher", higher))}
  for name, eps_high in (("grpo", 0.2), ("higher", 0.28)):
    loss, m = out[name]
    expected = (by_hand(eps_high) * mask).sum(1) / mask.sum(1)
    np.testing.assert_allclose(float(loss), expected.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(m["pg_loss"]), expected.mean(), rtol=1e-5)
  # By hand, the rows' differences: row 0 (A 0.5) rho 1.25, 1.5, 1.25 over 6 tokens, row 2
  # (A 2) rho 1.25 and 1.3 over 5, row 3 (A 0.8) rho 1.5 and 1.25 over 2.
  diff = (-0.025 - 0.04 - 0.025) / 6 + (-0.1 - 0.16) / 5 + (-0.064 - 0.04) / 2
  np.testing.assert_allclose(float(out["higher"][0]) - float(out["grpo"][0]), diff / 4, rtol=1e-4)
  # Clipped tokens (A > 0 and rho > 1 + eps_high, or A < 0 and rho < 0.8) of the 17 trained:
  # GRPO: row 0 {1.25, 1.5, 1.25}, row 1 {0.7}, row 2 {1.25, 1.3}, row 3 {1.5, 1.25} = 8;
  # clip-higher: row 0 {1.5}, row 1 {0.7}, row 2 {1.3}, row 3 {1.5} = 4.
  assert mask.sum() == 17
  np.testing.assert_allclose(float(out["grpo"][1]["clip_frac"]), 8 / 17, rtol=1e-6)
  np.testing.assert_allclose(float(out["higher"][1]["clip_frac"]), 4 / 17, rtol=1e-6)
  # On-policy (ratio exactly 1) the clip range does not matter.
  on = [float(loss_fn(a, True)[0]) for a in (grpo, higher)]
  assert on[0] == on[1]


# ---------------------------------------------------------------------------------------------
# 2. Unequal groups of rows that do not share prompts, through Step.learn.


def test_step_learn_with_unequal_groups_and_unshared_prompts_is_the_per_row_update():
  """8 rows, 8 different prompts (left-padded to 10), groups of 3 and 5 declared by
  `group_id_N`, `prompt_group_size=1`. The step's `rl.group_size` is 4, which divides 8: a step
  that inferred groups or prompt sharing from shapes would standardise rewards over rows 0-3
  and 4-7 and compute rows 1-3 and 5-7 after the prompts of rows 0 and 4."""
  cfg, graphdef, params = _model(0)
  _, _, ref_params = _model(1)
  texts = ["1=", "12=", "1+2=", "12+3=", "12+34=", "123+45=", "123+456=", "1234+567="]
  P, T, N = 10, 5, 8
  prompt, pmask = tokenizers.encode_left_padded(TOK, texts, P)
  assert sorted(pmask.sum(1)) == list(range(3, 11))  # 8 different prompt lengths
  rng = np.random.default_rng(0)
  comp = rng.integers(3, V, (N, T)).astype(np.int32)
  cmask = np.arange(T)[None] < np.array([5, 3, 4, 1, 5, 2, 4, 3])[:, None]
  rewards = np.array([1, 0, 0, 1, 1, 0, 0, 0], np.float32)
  group_id = np.array([0, 0, 0, 1, 1, 1, 1, 1], np.int32)
  behaviour = _logp(graphdef, params, prompt, pmask, comp, cmask)
  roll = Rollout(
    prompt_NxP=prompt,
    prompt_mask_NxP=pmask,
    completion_NxT=comp,
    completion_mask_NxT=cmask,
    loss_mask_NxT=cmask,
    behaviour_logp_NxT=behaviour,
    group_id_N=group_id,
    row_valid_N=np.ones(N, bool),
    example_index_N=np.arange(N, dtype=np.int32),
    extras={"reward": rewards},
    prompt_group_size=1,
  )
  policy = policy_lib.Policy("embedded", cfg, graphdef, TOK, stop_ids=TOK.stop_ids)
  settings = rollouts.RolloutSettings(
    SamplingConfig(max_new_tokens=T, stop_ids=TOK.stop_ids), group_size=4, prompt_len=P
  )
  lr = 1e-3
  tx = trainer.make_optimizer(learning_rate=lr, max_grad_norm=None)
  algo = algorithms.grpo()  # KL 0.04 in the loss: the reference pass runs too
  step = Step.create(policy, algo, None, None, None, settings, tx)
  state = trainer.init_state(jax.tree.map(jnp.copy, params), tx)
  new_state, m = step.learn(state, roll, ref_params, params, jax.random.key(0))

  # The reference, by hand. GRPO z-scores (ddof 1) within each declared group:
  # group 0, r = [1, 0, 0]: mean 1/3, std sqrt(1/3): A = 2/sqrt(3), -1/sqrt(3), -1/sqrt(3);
  # group 1, r = [1, 1, 0, 0, 0]: mean 0.4, std sqrt(1.2 / 4): A = 0.6/sqrt(.3), -0.4/sqrt(.3).
  adv_N = np.zeros(N, np.float32)
  for g in (0, 1):
    rows = group_id == g
    r = rewards[rows]
    adv_N[rows] = (r - r.mean()) / (r.std(ddof=1) + 1e-6)
  np.testing.assert_allclose(adv_N[[0, 1]], [2 / np.sqrt(3), -1 / np.sqrt(3)], rtol=1e-5)
  np.testing.assert_allclose(adv_N[[3, 5]], [0.6 / np.sqrt(0.3), -0.4 / np.sqrt(0.3)], rtol=1e-5)
  ref_logp = _logp(graphdef, ref_params, prompt, pmask, comp, cmask)
  zeros = np.zeros((N, T), np.float32)
  batch = TrainBatch(prompt, pmask, comp, cmask, cmask, adv_N[:, None] * cmask, zeros, ref_logp)
  (loss, lm), grads = jax.jit(
    jax.value_and_grad(
      lambda p: trainer.rl_loss(
        graphdef, p, batch, step.algo, temperature=1.0, on_policy=True, group_size=1
      ),
      has_aux=True,
    )
  )(params)
  np.testing.assert_allclose(m["loss"], float(loss), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(m["kl"], float(lm["kl"]), rtol=1e-4, atol=1e-7)
  assert float(lm["kl"]) > 0  # the reference pass really entered the loss
  g_leaves = _leaves(grads)
  grad_norm = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in g_leaves))
  np.testing.assert_allclose(m["grad_norm"], grad_norm, rtol=1e-5)
  # The parameters after one optimizer step of that gradient. Adam's first step is
  # lr * g / (|g| + 1e-8): entries whose gradient is at float-noise level may take either
  # sign, so those (|g| < 1e-6 max|g|) are only checked to move by at most lr.
  expected = jax.jit(lambda p, g: optax.apply_updates(p, tx.update(g, tx.init(p), p)[0]))(
    params, grads
  )
  g_max = max(float(np.abs(g).max()) for g in g_leaves)
  for new, want, g, p0 in zip(
    _leaves(new_state.params), _leaves(expected), g_leaves, _leaves(params)
  ):
    clear = np.abs(g) > 1e-6 * g_max
    np.testing.assert_allclose(new[clear], want[clear], rtol=0, atol=1e-3 * lr)
    assert np.all(np.abs(new - p0) <= lr * (1 + 1e-3))
  assert any(not np.array_equal(a, b) for a, b in zip(_leaves(new_state.params), _leaves(params)))

  # The old inference (a shared prompt per 4 consecutive rows) computes rows 1-3 and 5-7
  # after another row's prompt: their log-probs differ from the per-row ones.
  per_row = _logp(graphdef, params, prompt, pmask, comp, cmask)
  shared = _logp(graphdef, params, prompt, pmask, comp, cmask, group_size=4)
  np.testing.assert_allclose(shared[[0, 4]], per_row[[0, 4]], atol=1e-5)
  for n in (1, 2, 3, 5, 6, 7):
    assert np.max(np.abs(shared[n] - per_row[n])) > 1e-3, n


# ---------------------------------------------------------------------------------------------
# 3. Forced prefixes: continued exactly, attended to, never trained on.


def test_generate_continuations_reproduces_the_samples_after_a_forced_prefix():
  """Sample full completions, force each row's first F_n sampled tokens (F = 0..3), continue
  with the same key: the continuation is the same sample, and only the new tokens are in the
  loss mask."""
  _, graphdef, params = _model()
  texts = ["1+2=", "12+3=", "7=", "123+45=", "9+9=", "1=", "45+6=", "3+21="]
  P, T, N = 8, 6, len(texts)
  prompt, pmask = tokenizers.encode_left_padded(TOK, texts, P)
  cfg = SamplingConfig(max_new_tokens=T, temperature=1.0, stop_ids=TOK.stop_ids)
  key = jax.random.key(3)
  out = jax.device_get(generate(graphdef, params, prompt, pmask, key, cfg=cfg, group_size=1))
  tokens, mask, logp, lengths = out.tokens_NxT, out.mask_NxT, out.logp_NxT, out.lengths_N
  stopped = np.array([n > 0 and tokens[i, n - 1] in TOK.stop_ids for i, n in enumerate(lengths)])
  # The forced prefix holds sampled tokens before any stop token.
  F = np.minimum(np.arange(N) % 4, lengths - stopped)
  assert F.max() > 0
  width = max(int(F.max()), 1)
  forced = np.zeros((N, width), np.int32)
  forced_mask = np.arange(width)[None] < F[:, None]
  forced[forced_mask] = tokens[:, :width][forced_mask]
  cont = jax.device_get(
    generate_continuations(graphdef, params, prompt, pmask, forced, forced_mask, key, cfg=cfg)
  )
  assert cont.completion_NxT.shape == (N, width + T)
  t = np.arange(width + T)[None]
  # The same completion arrays over the original T positions.
  np.testing.assert_array_equal(cont.completion_NxT[:, :T], tokens)
  np.testing.assert_array_equal(cont.completion_mask_NxT[:, :T], mask)
  # Forced tokens are attended to but not trained on; every new token is trained on.
  np.testing.assert_array_equal(cont.loss_mask_NxT, cont.completion_mask_NxT & (t >= F[:, None]))
  np.testing.assert_array_equal(cont.completion_mask_NxT[:, :width][forced_mask], True)
  # The sampler's log-probs of the reproduced tokens are the same; 0 on the forced ones.
  np.testing.assert_allclose(
    cont.logp_NxT[:, :T], np.where(t[:, :T] >= F[:, None], logp, 0), atol=1e-5
  )
  # A row that stopped stops at the same token; one that did not samples F_n more tokens
  # (until a stop token), T new tokens in all at most.
  assert np.all(cont.completion_mask_NxT[t >= F[:, None] + T] == False)  # noqa: E712
  for n in range(N):
    if stopped[n]:
      assert not cont.completion_mask_NxT[n, T:].any()
      assert cont.loss_mask_NxT[n].sum() == lengths[n] - F[n]
    elif F[n]:
      assert cont.completion_mask_NxT[n, T]  # the first token beyond the original sample
  assert np.all(cont.loss_mask_NxT.sum(1) <= T)


def test_forced_prefix_tokens_get_zero_loss_and_zero_gradient():
  _, graphdef, params = _model()
  _, _, ref_params = _model(1)
  texts = ["1+2=", "12+3=", "7=", "123+45="]
  P, T, N = 8, 6, 4
  prompt, pmask = tokenizers.encode_left_padded(TOK, texts, P)
  rng = np.random.default_rng(0)
  comp = rng.integers(3, V, (N, T)).astype(np.int32)
  cmask = np.arange(T)[None] < np.array([6, 5, 4, 6])[:, None]
  F = np.array([0, 1, 2, 3])
  forced = (np.arange(T)[None] < F[:, None]) & cmask
  loss_mask = cmask & ~forced
  logp = _logp(graphdef, params, prompt, pmask, comp, cmask)
  ref = _logp(graphdef, ref_params, prompt, pmask, comp, cmask)
  adv = (rng.normal(size=(N, 1)) * cmask).astype(np.float32)
  old = (logp + rng.normal(scale=0.3, size=(N, T)) * cmask).astype(np.float32)
  batch = TrainBatch(prompt, pmask, comp, cmask, loss_mask, adv, old, ref)
  algo = dataclasses.replace(algorithms.grpo(kl_coef=0.1), entropy_coef=0.01)

  @jax.jit
  def loss_and_grad(b):
    return jax.value_and_grad(
      lambda p: trainer.rl_loss(graphdef, p, b, algo, temperature=1.0, on_policy=False),
      has_aux=True,
    )(params)

  (loss, _), grads = loss_and_grad(batch)
  # Other advantages, old and reference log-probs on the forced tokens: the same loss and the
  # same gradient, exactly.
  noise = lambda scale: (rng.normal(scale=scale, size=(N, T)) * forced).astype(np.float32)
  changed = batch._replace(
    adv_NxT=adv + noise(5.0), old_logp_NxT=old + noise(2.0), ref_logp_NxT=ref + noise(2.0)
  )
  assert np.all(changed.adv_NxT[forced] != adv[forced])
  (loss2, _), grads2 = loss_and_grad(changed)
  assert float(loss2) == float(loss)
  for a, b in zip(_leaves(grads), _leaves(grads2)):
    np.testing.assert_array_equal(a, b)
  # The same change on trained tokens does change the loss (the check can fail).
  moved = batch._replace(adv_NxT=adv + (rng.normal(size=(N, T)) * loss_mask).astype(np.float32))
  assert abs(float(loss_and_grad(moved)[0][0]) - float(loss)) > 1e-4
  # Training the forced tokens too would change the loss: they are really excluded.
  (loss_all, _), _ = loss_and_grad(batch._replace(loss_mask_NxT=cmask))
  assert abs(float(loss_all) - float(loss)) > 1e-4

  # By hand: the per-token terms (clipped surrogate, k3 KL, entropy bonus) averaged over the
  # trained tokens of each row only, i.e. a contribution of exactly 0 from forced tokens.
  def by_hand(p):
    s = completion_logprobs(graphdef, p, prompt, pmask, comp, cmask, with_entropy=True)
    per_token = (
      ppo_clip(s.logp_NxT, old, adv, eps_low=0.2, eps_high=0.2)
      + 0.1 * kl_k3(s.logp_NxT, ref)
      - 0.01 * s.entropy_NxT
    )
    m = jnp.asarray(loss_mask, jnp.float32)
    return aggregate(per_token, m, "seq_mean_token_mean")

  want, want_grads = jax.jit(jax.value_and_grad(by_hand))(params)
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
  for a, b in zip(_leaves(grads), _leaves(want_grads)):
    np.testing.assert_allclose(a, b, atol=1e-5 * float(np.abs(b).max()) + 1e-8)


def test_sample_continuations_starts_each_completion_with_the_forced_text():
  cfg, graphdef, params = _model()
  policy = policy_lib.Policy("embedded", cfg, graphdef, TOK, stop_ids=TOK.stop_ids)
  P, T = 8, 4
  settings = rollouts.RolloutSettings(
    SamplingConfig(max_new_tokens=T, stop_ids=TOK.stop_ids), group_size=1, prompt_len=P
  )
  examples = [Example("1+2=", "3"), Example("12+34=", "46"), Example("5=", "5")]
  forced = ["3", "", "12+"]
  roll = jax.device_get(
    rollouts.sample_continuations(
      policy, params, examples, forced, jax.random.key(0), settings, group_id_N=[0, 0, 1]
    )
  )
  prompt, pmask = tokenizers.encode_left_padded(TOK, [e.prompt for e in examples], P)
  np.testing.assert_array_equal(roll.prompt_NxP, prompt)
  np.testing.assert_array_equal(roll.prompt_mask_NxP, pmask)
  assert roll.completion_NxT.shape == (3, 3 + T) and roll.prompt_group_size == 1
  for n, text in enumerate(forced):
    ids = TOK.encode(text)
    F = len(ids)
    np.testing.assert_array_equal(roll.completion_NxT[n, :F], ids)
    assert roll.completion_mask_NxT[n, :F].all() and not roll.loss_mask_NxT[n, :F].any()
    assert np.all(roll.behaviour_logp_NxT[n, :F] == 0)
    assert roll.loss_mask_NxT[n, F]  # the first sampled token follows the forced text
    assert roll.behaviour_logp_NxT[n, F] < 0
    np.testing.assert_array_equal(
      roll.loss_mask_NxT[n], roll.completion_mask_NxT[n] & (np.arange(3 + T) >= F)
    )
  np.testing.assert_array_equal(roll.group_id_N, [0, 0, 1])
  np.testing.assert_array_equal(roll.example_index_N, [0, 1, 2])
  np.testing.assert_array_equal(roll.lengths_N(), roll.loss_mask_NxT.sum(1))


# ---------------------------------------------------------------------------------------------
# 4. Declared groups of any size.


def test_group_index_of_declared_groups():
  """Groups in order of first appearance, rows in row order, padded with -1; the invalid
  row 4 is in no group (so group 2 keeps only row 2)."""
  valid = np.array([1, 1, 1, 1, 0, 1], bool)
  index = rollouts.group_index([5, 5, 2, 5, 2, 9], valid)
  np.testing.assert_array_equal(index, [[0, 1, 3], [2, -1, -1], [5, -1, -1]])
  assert index.dtype == np.int32
  np.testing.assert_array_equal(rollouts.group_index([1, 1, 0, 0]), [[0, 1], [2, 3]])


def test_group_index_takes_a_0_1_validity():
  index = rollouts.group_index([5, 5, 2, 5, 2, 9], [1, 1, 1, 1, 0, 1])
  np.testing.assert_array_equal(index, [[0, 1, 3], [2, -1, -1], [5, -1, -1]])


def _by_group(fn, rewards, group_id, valid):
  """Each valid row's advantage from its own group's rewards (numpy); 0 for invalid rows."""
  out = np.zeros(len(rewards), np.float64)
  for g in np.unique(group_id[valid]):
    rows = np.flatnonzero((group_id == g) & valid)
    out[rows] = fn(rewards[rows].astype(np.float64))
  return out


def _zscore(r):
  return np.zeros_like(r) if len(r) < 2 else (r - r.mean()) / (r.std(ddof=1) + 1e-6)


def _centred(r):
  return np.zeros_like(r) if len(r) < 2 else r - r.mean()


def _leave_one_out(r):
  return np.zeros_like(r) if len(r) < 2 else len(r) / (len(r) - 1) * (r - r.mean())


@pytest.mark.parametrize(
  "name, fn", [("grpo", _zscore), ("dr_grpo", _centred), ("rloo", _leave_one_out)]
)
def test_advantages_of_unequal_groups_are_computed_group_by_group(name, fn):
  """Non-contiguous groups of 4, 3 and 2 valid rows, a group of one (advantage 0) and an
  invalid row (in no group: advantage 0 whatever its loss mask)."""
  group_id = np.array([3, 0, 3, 1, 0, 3, 1, 1, 2, 0, 3, 4], np.int32)
  valid = np.ones(12, bool)
  valid[9] = False  # group 0 keeps rows 1 and 4
  rng = np.random.default_rng(1)
  rewards = rng.random(12).astype(np.float32)
  T = 4
  mask = np.arange(T)[None] < rng.integers(1, T + 1, 12)[:, None]
  index = rollouts.group_index(group_id, valid)
  assert (index >= 0).sum(1).tolist() == [4, 2, 3, 1, 1]  # groups 3, 0, 1, 2, 4
  inputs = AdvantageInputs(
    rewards_N=jnp.asarray(rewards),
    loss_mask_NxT=jnp.asarray(mask, jnp.float32),
    logp_NxT=jnp.zeros((12, T)),
    ref_logp_NxT=None,
    values_NxT=None,
    group_index_BxG=jnp.asarray(index),
  )
  adv, returns = compute_advantages(algorithms.make_algorithm(name), inputs)
  assert returns is None
  want = _by_group(fn, rewards, group_id, valid)
  np.testing.assert_allclose(adv, want[:, None] * mask, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(adv)[9] == 0) and np.all(np.asarray(adv)[[8, 11]] == 0)
  if name == "grpo":  # group 0 = rows 1 and 4: z-scores of two rewards are +-1/sqrt(2)
    r1, r4 = rewards[1], rewards[4]
    np.testing.assert_allclose(adv[1, 0], np.sign(r1 - r4) / np.sqrt(2), rtol=1e-4)


def test_share_prompt_off_gives_the_same_update(small_config):
  """`train.share_prompt=false` computes each row's prompt itself; the update is the same."""
  from rl_jax import loop

  results = []
  for share in (True, False):
    exp = loop.Experiment.build(small_config(**{"train.share_prompt": share}))
    params = exp.policy.init_params(0, exp.mesh)
    roll, _ = exp.step.collect(params, 1, jax.random.key(0))
    assert roll.prompt_group_size == 4  # declared by the rollout either way
    state, _ = exp.init_state(params)
    state, m = exp.step.learn(state, roll, params, params, jax.random.key(1))
    results.append((m, state.params))
    # The update compiled for the declared group size only with sharing on (per row otherwise).
    used = exp.step.update.jitted(4 if share else 1)._cache_size()
    unused = exp.step.update.jitted(1 if share else 4)._cache_size()
    assert (used, unused) == (1, 0)
  (m_on, p_on), (m_off, p_off) = results
  np.testing.assert_allclose(m_off["loss"], m_on["loss"], rtol=1e-5, atol=1e-7)
  for a, b in zip(jax.tree.leaves(p_on), jax.tree.leaves(p_off)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
