"""The step-lines task, and PAPO and the segment-level loss wired through the step: process
scores and segment ids as extras, segment ids reaching the loss, and the granularity
identities on real updates."""

import dataclasses
import io
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tests_support import make_small_config

from rl_jax import algorithms, loop, rewards, rollouts, tokenizers, trainer
from rl_jax import policy as policy_lib
from rl_jax.metrics import read_jsonl
from rl_jax.models import transformer
from rl_jax.objectives import advantages as adv_lib
from rl_jax.sampling import SamplingConfig
from rl_jax.step import Step
from rl_jax.tasks import StepsTask
from rl_jax.tasks.base import Example
from rl_jax.tasks.steps import SKIP
from rl_jax.types import Rollout, TrainBatch

# --- the steps task ----------------------------------------------------------------------------


def _ex(*terms, slip=-1):
  return StepsTask(num_terms=len(terms))._example(terms, slip)


def test_steps_demonstrations_and_slips():
  task = StepsTask()
  assert _ex(23, 58, 7, 41).prompt == "23+58+7+41="
  assert task.sft_target(_ex(23, 58, 7, 41)) == "81\n88\n129"
  # a slip forgets the carries of one line (58 + 67 -> 15) and continues from there
  assert task.sft_target(_ex(58, 67, 5, 1, slip=0)) == "15\n20\n21"
  assert task.sft_target(_ex(58, 67, 5, 1, slip=1)) == "125\n120\n121"  # 125 + 5 no carry: 120
  assert task.sft_target(_ex(58, 67, 5, 1, slip=2)) == "125\n130\n131"  # 130 + 1 has no carry
  assert task.sft_target(_ex(58, 67, 5, 1, slip=SKIP)) == "131"  # no work shown


def test_steps_verifier_scores_outcome_and_process():
  task = StepsTask()
  ex = _ex(23, 58, 7, 41)
  completions = [
    "81\n88\n129",  # right: outcome 1, process 1
    "129",  # the answer alone: outcome 1, no shown work
    "81\n98\n139",  # one slip: first line right, second wrong
    "81\n88\n130",  # right work, wrong answer
    "81\n88\n5\n129",  # an extra line: 2 right of 3 written
    "",
  ]
  out = task.score([ex] * 6, completions)
  np.testing.assert_array_equal(out["correct"], [1, 1, 0, 0, 1, 0])
  np.testing.assert_array_equal(out["reward"], [1, 1, 0, 0, 1, 0])
  np.testing.assert_allclose(out["process"], [1, 0, 0.5, 1, 2 / 3, 0])
  assert out["reward"].dtype == np.float32 and out["process"].dtype == np.float32


def test_steps_splits_are_disjoint_and_lengths_exact():
  task = StepsTask(sft_slip_prob=0.3, sft_skip_prob=0.5)
  held = {e.prompt for e in task.heldout_examples(300)}
  assert len(held) == 300 and held == {e.prompt for e in task.heldout_examples(300)}
  assert all(e.meta[1] == -1 for e in task.heldout_examples(300))
  train = task.train_examples(np.random.default_rng(0), 5000)
  assert not held & {e.prompt for e in train}
  flaws = np.array([e.meta[1] for e in train])
  assert 0.27 < np.mean(flaws >= 0) < 0.33  # slipped
  assert 0.32 < np.mean(flaws == SKIP) < 0.38  # skipped: half of the 70% that did not slip
  tok = tokenizers.CharTokenizer(task.alphabet())
  # 99+99+99+99= is 12 characters + BOS; 198\n297\n396 is 11 + EOS
  assert task.max_lengths(tok) == (13, 12)
  with pytest.raises(ValueError, match="num_terms"):
    StepsTask(num_terms=2)


# --- PAPO through the step -----------------------------------------------------------------------


def test_papo_preset_reads_the_verifiers_extras():
  """The preset's advantages equal `papo_advantages` of the verifier's outcome and process on
  two groups (an all-correct one whose signal is only the process)."""
  task = StepsTask()
  exs = [_ex(23, 58, 7, 41)] * 4 + [_ex(1, 2, 3, 4)] * 4
  completions = ["81\n88\n129", "129", "81\n98\n139", "81\n88\n130"] + [
    "3\n6\n10",
    "10",
    "3\n7\n10",
    "3\n6\n10",
  ]
  scored = task.score(exs, completions)
  T = 3
  inputs = algorithms.AdvantageInputs(
    rewards_N=jnp.asarray(scored["reward"]),
    loss_mask_NxT=jnp.ones((8, T)),
    logp_NxT=jnp.zeros((8, T)),
    ref_logp_NxT=None,
    values_NxT=None,
    group_index_BxG=jnp.arange(8, dtype=jnp.int32).reshape(2, 4),
    extras={k: jnp.asarray(scored[k]) for k in ("correct", "process")},
  )
  adv, _ = algorithms.compute_advantages(algorithms.papo(), inputs)
  want = adv_lib.papo_advantages(
    jnp.asarray(scored["reward"]).reshape(2, 4), jnp.asarray(scored["process"]).reshape(2, 4)
  )
  np.testing.assert_allclose(adv[:, 0], want.reshape(8), rtol=1e-6)
  # the all-correct group: outcome advantages 0, process z-scores among its rows
  assert np.all(np.asarray(adv[4:, 0]) != 0) and float(jnp.sum(adv[4:, 0])) == pytest.approx(0)
  # the wrong answers (rows 2, 3) get no process credit: their advantage is the outcome's only
  np.testing.assert_allclose(
    adv[2:4, 0], adv_lib.grpo_advantages(jnp.asarray(scored["reward"][:4]))[2:4], rtol=1e-6
  )


def test_papo_preset_needs_its_extras(tmp_path):
  """On the arithmetic task (no process score) the step names what is missing."""
  cfg = make_small_config(**{"algorithm.name": "papo", "train.steps": 1, "sft.steps": 0})
  with pytest.raises(ValueError, match=r"needs the extras \['process'\]"):
    loop.run(cfg, str(tmp_path), log=lambda m: None, stream=io.StringIO())


# --- segments through the step -------------------------------------------------------------------


def _step(algo, tok, T):
  cfg = transformer.preset("test", tok.vocab_size)
  graphdef, _ = transformer.abstract_model(cfg)
  policy = policy_lib.Policy("embedded", cfg, graphdef, tok, stop_ids=tok.stop_ids)
  settings = rollouts.RolloutSettings(
    SamplingConfig(max_new_tokens=T, stop_ids=tok.stop_ids), group_size=2, prompt_len=3
  )
  zero = rewards.Rewards([rewards.Term("zero", lambda ex, c: np.zeros(len(c), np.float32), 1.0)])
  return Step.create(policy, algo, None, zero, None, settings, optax.sgd(1.0))


def test_segment_ids_follow_the_delimiters_of_generated_tokens():
  tok = tokenizers.CharTokenizer(StepsTask().alphabet())
  texts = ["81\n88\n129", "10"]
  T = 12
  comp = np.zeros((2, T), np.int32)
  for i, t in enumerate(texts):
    ids = tok.encode(t, eos=True)
    comp[i, : len(ids)] = ids
  mask = comp != 0
  loss_mask = mask.copy()
  loss_mask[1, 0] = False  # a forced first token: never ends a segment, never trained
  comp[1, 0] = tok.encode("\n")[0]
  roll = Rollout(
    prompt_NxP=np.ones((2, 3), np.int32),
    prompt_mask_NxP=np.ones((2, 3), bool),
    completion_NxT=comp,
    completion_mask_NxT=mask,
    loss_mask_NxT=loss_mask,
    behaviour_logp_NxT=np.zeros((2, T), np.float32),
    group_id_N=np.zeros(2, np.int32),
    row_valid_N=np.ones(2, bool),
    example_index_N=np.zeros(2, np.int32),
  )
  step = _step(algorithms.segment(), tok, T)
  scored = step.score(roll, [Example("1", "1")])
  ids = scored.extras["segment_ids"]
  assert ids.dtype == np.int32
  np.testing.assert_array_equal(ids[0, :10], [0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
  np.testing.assert_array_equal(ids[1, :3], [0, 0, 0])
  # a step tag as a token id, and no delimiters at all
  one = tok.encode("1")[0]  # a step tag given as a token id: here the digit 1
  by_id = _step(algorithms.segment(segment_delimiters="", segment_token_ids=f"{one}"), tok, T)
  assert by_id.segment_ids(roll)[0, :10].tolist() == [0, 0, 1, 1, 1, 1, 1, 2, 2, 2]
  whole = _step(algorithms.segment(segment_delimiters=""), tok, T)
  assert not whole.segment_ids(roll).any()
  assert tokenizers.ids_containing(tok, ["\n", "9"]) == tuple(tok.encode("9\n")) == (12, 15)
  assert algorithms.parse_delimiters("\\n|<step>|a\\|b") == ("\n", "<step>", "a|b")
  with pytest.raises(ValueError, match="segment_token_ids"):
    algorithms.segment(segment_token_ids="1,x")


def _update_params(algo, batch, minibatches, params, graphdef):
  tx = optax.sgd(0.5)
  update = trainer.make_rl_update(graphdef, algo, tx, num_minibatches=minibatches)
  state, m = update(
    trainer.init_state(jax.tree.map(jnp.copy, params), tx), batch, jax.random.key(0)
  )
  return state.params, m


def _batch(seg_ids, rng, N=8, P=3, T=7):
  mask = np.arange(T)[None] < rng.integers(2, T + 1, N)[:, None]
  adv = np.broadcast_to(rng.normal(size=(N, 1)), (N, T)).astype(np.float32) * mask
  return TrainBatch(
    rng.integers(3, 19, (N, P)).astype(np.int32),
    np.ones((N, P), bool),
    rng.integers(3, 19, (N, T)).astype(np.int32),
    mask,
    mask,
    adv,
    (np.log(rng.uniform(0.02, 0.2, (N, T))) * mask).astype(np.float32),  # stale log-probs
    np.zeros((N, T), np.float32),
    token_extras={"segment_ids": seg_ids},
  )


def _close(a, b, **kw):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


def test_segment_granularities_on_real_updates():
  """On the update the loop runs: one on-policy update is the same for every segmentation (the
  ratio is 1); off-policy (two minibatches from stale log-probs), one-token segments equal GRPO's
  token loss, one segment with the mean equals GSPO (same clip), and lines differ from both."""
  graphdef, params = transformer.init_model(transformer.preset("test", 19), 2)
  rng = np.random.default_rng(5)
  N, T = 8, 7
  lines = np.minimum(np.arange(T) // 3, 15)[None].repeat(N, 0).astype(np.int32)
  per_token = np.arange(T, dtype=np.int32)[None].repeat(N, 0)
  batch = _batch(lines, rng)
  seg = dataclasses.replace(algorithms.segment(), aggregation_constant=T)
  grpo = dataclasses.replace(algorithms.grpo(kl_coef=0.0), aggregation_constant=T)
  gspo = dataclasses.replace(algorithms.gspo(clip_eps_low=0.2, clip_eps_high=0.2))

  p_seg, _ = _update_params(seg, batch, 1, params, graphdef)
  p_grpo, _ = _update_params(grpo, batch._replace(token_extras=None), 1, params, graphdef)
  _close(p_seg, p_grpo, rtol=1e-5, atol=1e-6)

  off = dict(minibatches=2, params=params, graphdef=graphdef)
  p_tok, m_tok = _update_params(seg, batch._replace(token_extras={"segment_ids": per_token}), **off)
  p_grpo2, m_grpo2 = _update_params(grpo, batch._replace(token_extras=None), **off)
  _close(p_tok, p_grpo2, rtol=1e-5, atol=1e-6)
  assert m_tok["loss"] == pytest.approx(float(m_grpo2["loss"]), rel=1e-5)
  zeros = np.zeros((N, T), np.int32)
  p_seq, _ = _update_params(seg, batch._replace(token_extras={"segment_ids": zeros}), **off)
  p_gspo, _ = _update_params(gspo, batch._replace(token_extras=None), **off)
  _close(p_seq, p_gspo, rtol=1e-5, atol=1e-6)
  p_lines, _ = _update_params(seg, batch, **off)
  diff = lambda a, b: max(
    float(jnp.max(jnp.abs(x - y))) for x, y in zip(*map(jax.tree.leaves, (a, b)))
  )
  assert diff(p_lines, p_tok) > 1e-4 and diff(p_lines, p_seq) > 1e-4


@pytest.mark.slow
def test_segment_preset_trains_on_the_steps_task(tmp_path):
  cfg = make_small_config(
    **{
      "algorithm.name": "segment",
      "task.name": "steps",
      "train.steps": 2,
      "train.num_minibatches": 2,
      "sft.steps": 10,
      "eval.every": 0,
      "eval.num_prompts": 8,
      "checkpoint.every": 2,
    }
  )
  loop.run(cfg, str(tmp_path), log=lambda m: None, stream=io.StringIO())
  rows = read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
  assert [r["step"] for r in rows] == [1, 2]
  assert all(np.isfinite(r["loss"]) and r["skipped_updates"] == 0 for r in rows)
  assert "process" in rows[0] and "clip_frac" in rows[0]
