"""Tests of rl_jax.sampling.sampler: sampler == forward pass, stop ids, groups, key schedule,
no recompiles.

Dimensions are pairwise distinct so shape mix-ups fail: V=37, D=41, H=4, K=2, Dh=10, F=53,
B=3 prompts of P=7 slots (left padded to 7, 4 and 2 real tokens), G=3, T=11.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax.logprobs import completion_logprobs
from rl_jax.models import transformer
from rl_jax.sampling import sampler
from rl_jax.sampling.sampler import SamplingConfig, filter_logits, generate

CFG = transformer.TransformerConfig(
  vocab_size=37, d_model=41, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=10, mlp_dim=53
)
B, P, G, T = 3, 7, 3, 11
LENGTHS = (7, 4, 2)
STOP = (2,)  # CharTokenizer's EOS id, which the random model emits: rows end at different lengths


@pytest.fixture(scope="module")
def model():
  return transformer.init_model(CFG, seed=0)


def _prompts(seed, lengths=LENGTHS, width=P):
  """Left-padded random prompts; pads hold garbage tokens so leaks through the mask show."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, CFG.vocab_size, (len(lengths), width)).astype(np.int32)
  mask = np.arange(width)[None, :] >= width - np.asarray(lengths)[:, None]
  return tokens, mask


def _rep(x, g):
  return np.repeat(np.asarray(x), g, axis=0)


def _check_layout(s, cfg: SamplingConfig, n):
  """Structural invariants of `Samples` that hold for any model."""
  tokens, logp, mask, lengths = map(np.asarray, s)
  assert tokens.shape == logp.shape == mask.shape == (n, cfg.max_new_tokens)
  assert tokens.dtype == np.int32 and logp.dtype == np.float32 and mask.dtype == bool
  assert lengths.shape == (n,) and lengths.dtype == np.int32
  # The mask is a prefix of length `lengths`, ending at the first stop id (if any).
  np.testing.assert_array_equal(mask, np.arange(cfg.max_new_tokens)[None] < lengths[:, None])
  for row, length in zip(tokens, lengths):
    stop_at = np.flatnonzero(np.isin(row[:length], list(cfg.stop_ids)))
    assert (
      stop_at.size == 0
      and length == cfg.max_new_tokens
      or (stop_at.size == 1 and stop_at[0] == length - 1)
    ), (row, length)
  assert np.all(tokens[~mask] == cfg.pad_id)
  assert np.all(logp[~mask] == 0.0)
  assert np.all(logp[mask] <= 0.0)


# --- sampler == trainer log-probs ---------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logp_equals_completion_logprobs(model, temperature):
  graphdef, params = model
  cfg = SamplingConfig(max_new_tokens=T, temperature=temperature, stop_ids=STOP)
  prompt, prompt_mask = _prompts(0)
  s = generate(graphdef, params, prompt, prompt_mask, jax.random.key(1), cfg=cfg, group_size=G)
  _check_layout(s, cfg, B * G)

  stats = completion_logprobs(
    graphdef,
    params,
    _rep(prompt, G),
    _rep(prompt_mask, G),
    s.tokens_NxT,
    s.mask_NxT,
    temperature=temperature,
  )
  mask = np.asarray(s.mask_NxT)
  assert mask.sum() > B * G  # several tokens per row on average: a real comparison
  np.testing.assert_allclose(
    np.asarray(s.logp_NxT)[mask], np.asarray(stats.logp_NxT)[mask], atol=1e-5, rtol=1e-5
  )
  assert np.all(np.asarray(stats.logp_NxT)[~mask] == 0.0)


def test_group_rows_differ_and_rng_is_deterministic(model):
  graphdef, params = model
  cfg = SamplingConfig(max_new_tokens=T, temperature=1.0, stop_ids=STOP)  # same compile as above
  prompt, prompt_mask = _prompts(0)
  s = generate(graphdef, params, prompt, prompt_mask, jax.random.key(2), cfg=cfg, group_size=G)
  tokens = np.asarray(s.tokens_NxT).reshape(B, G, T)
  for b in range(B):
    rows = {tuple(r) for r in tokens[b]}
    assert len(rows) == G, f"prompt {b}: samples of a group are not independent\n{tokens[b]}"
  again = generate(graphdef, params, prompt, prompt_mask, jax.random.key(2), cfg=cfg, group_size=G)
  np.testing.assert_array_equal(again.tokens_NxT, s.tokens_NxT)
  other = generate(graphdef, params, prompt, prompt_mask, jax.random.key(3), cfg=cfg, group_size=G)
  assert np.any(np.asarray(other.tokens_NxT) != np.asarray(s.tokens_NxT))


# --- greedy -------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def _full_logits(graphdef, params, tokens_NxL, mask_NxL):
  positions = transformer.positions_from_mask(mask_NxL)
  return transformer.merge(graphdef, params)(tokens_NxL, positions, mask_NxL)[0]


def _greedy_reference(graphdef, params, prompt, prompt_mask, steps, stop_ids, pad_id):
  """Argmax decoding by re-running the whole sequence without a cache at every step."""
  n = prompt.shape[0]
  tokens = np.concatenate([prompt, np.full((n, steps), pad_id, np.int32)], axis=1)
  mask = np.concatenate([prompt_mask, np.zeros((n, steps), bool)], axis=1)
  for t in range(steps):
    mask[:, P + t] = True
    logits = np.asarray(_full_logits(graphdef, params, tokens, mask))
    tokens[:, P + t] = logits[:, P - 1 + t].argmax(-1)
  out = tokens[:, P:]
  for row in out:  # everything after the first stop id becomes padding
    stop_at = np.flatnonzero(np.isin(row, list(stop_ids)))
    if stop_at.size:
      row[stop_at[0] + 1 :] = pad_id
  return out


def test_greedy_equals_argmax_loop_without_cache(model):
  graphdef, params = model
  cfg = SamplingConfig(max_new_tokens=T, temperature=0.0, stop_ids=STOP)
  prompt, prompt_mask = _prompts(4)
  s = generate(graphdef, params, prompt, prompt_mask, jax.random.key(5), cfg=cfg, group_size=G)
  _check_layout(s, cfg, B * G)
  expected = _greedy_reference(graphdef, params, prompt, prompt_mask, T, cfg.stop_ids, cfg.pad_id)
  # Every sample of a group sees the same prompt: greedy makes them identical.
  np.testing.assert_array_equal(s.tokens_NxT, _rep(expected, G))
  # Greedy log-probs are those of the untempered policy.
  stats = completion_logprobs(
    graphdef, params, _rep(prompt, G), _rep(prompt_mask, G), s.tokens_NxT, s.mask_NxT
  )
  np.testing.assert_allclose(s.logp_NxT, stats.logp_NxT, atol=1e-5, rtol=1e-5)


def test_top_k_1_equals_greedy(model):
  graphdef, params = model
  prompt, prompt_mask = _prompts(6)
  greedy = generate(
    graphdef,
    params,
    prompt,
    prompt_mask,
    jax.random.key(0),
    cfg=SamplingConfig(max_new_tokens=T, temperature=0.0, stop_ids=STOP),
    group_size=G,
  )
  top1 = generate(
    graphdef,
    params,
    prompt,
    prompt_mask,
    jax.random.key(7),
    cfg=SamplingConfig(max_new_tokens=T, temperature=1.0, top_k=1, stop_ids=STOP),
    group_size=G,
  )
  np.testing.assert_array_equal(top1.tokens_NxT, greedy.tokens_NxT)
  np.testing.assert_array_equal(top1.mask_NxT, greedy.mask_NxT)
  # At temperature 1 both report log pi(token), before truncation.
  np.testing.assert_allclose(top1.logp_NxT, greedy.logp_NxT, atol=1e-6)


# --- EOS ----------------------------------------------------------------------


def _bigram_params(params, next_token: dict[int, int], margin=40.0):
  """Turns the transformer into a bigram model: logits depend on the current token only.

  Attention and MLP outputs are zeroed (o_proj, down_proj), so the residual stream is the
  token's embedding; embeddings are one-hot (D >= V) and lm_head maps token v to logits with
  `margin` on `next_token[v]` and 0 elsewhere.
  """
  V, D = CFG.vocab_size, CFG.d_model
  p = jax.tree.map(np.array, params)  # writable copies
  for layer in p["layers"].values():
    layer["attn"]["o_proj"]["kernel"][:] = 0.0
    layer["mlp"]["down_proj"]["kernel"][:] = 0.0
  p["embed"]["embedding"][:] = np.eye(V, D)
  p["final_norm"]["scale"][:] = 1.0
  table_VxV = np.zeros((V, V), np.float32)
  for v, w in next_token.items():
    table_VxV[v, w] = margin
  # RMSNorm turns the one-hot e_v into sqrt(D) * e_v.
  p["lm_head"]["kernel"][:] = np.concatenate([table_VxV, np.zeros((D - V, V))]) / np.sqrt(D)
  return p


EOS_ID, PAD_ID = 3, 1  # not the defaults, so hard-coded ids would show


@pytest.fixture(scope="module")
def bigram(model):
  graphdef, params = model
  chain = {
    10: 11,
    11: 12,
    12: EOS_ID,  # prompt ending in 10: "11 12 EOS"
    20: EOS_ID,  # prompt ending in 20: EOS at once
    30: 31,
    31: 32,
    32: 30,  # prompt ending in 30: a cycle without EOS
    EOS_ID: 5,
    PAD_ID: 5,
  }  # after EOS the model would say 5: the sampler must pad
  return graphdef, _bigram_params(params, chain)


def test_eos_ends_sequences_and_pads_after(bigram):
  graphdef, params = bigram
  cfg = SamplingConfig(max_new_tokens=7, temperature=1.0, stop_ids=(EOS_ID,), pad_id=PAD_ID)
  prompt, prompt_mask = _prompts(8, lengths=(5, 3, 6))
  prompt[:, -1] = [10, 20, 30]
  s = generate(graphdef, params, prompt, prompt_mask, jax.random.key(9), cfg=cfg, group_size=2)
  _check_layout(s, cfg, 6)
  expected_tokens = (
    [[11, 12, EOS_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID]] * 2
    + [[EOS_ID] + [PAD_ID] * 6] * 2
    + [[31, 32, 30, 31, 32, 30, 31]] * 2
  )
  np.testing.assert_array_equal(s.tokens_NxT, expected_tokens)
  np.testing.assert_array_equal(s.lengths_N, [3, 3, 1, 1, 7, 7])  # EOS counted; 7 = max
  np.testing.assert_array_equal(s.mask_NxT, np.asarray(expected_tokens) != PAD_ID)
  logp, mask = np.asarray(s.logp_NxT), np.asarray(s.mask_NxT)
  np.testing.assert_allclose(logp[mask], 0.0, atol=1e-5)  # near-certain tokens
  assert np.all(logp[~mask] == 0.0)


def test_decoding_stops_when_every_row_has_ended(bigram):
  graphdef, params = bigram
  cfg = SamplingConfig(max_new_tokens=7, temperature=0.0, stop_ids=(EOS_ID,), pad_id=PAD_ID)
  prompt, prompt_mask = _prompts(10, lengths=(2, 7))
  prompt[:, -1] = [20, 10]
  s = generate(graphdef, params, prompt, prompt_mask, jax.random.key(0), cfg=cfg, group_size=1)
  _check_layout(s, cfg, 2)
  np.testing.assert_array_equal(
    s.tokens_NxT, [[EOS_ID] + [PAD_ID] * 6, [11, 12, EOS_ID] + [PAD_ID] * 4]
  )
  np.testing.assert_array_equal(s.lengths_N, [1, 3])


def test_a_row_ends_at_the_first_of_several_stop_ids(model):
  """Every id of `stop_ids` ends a row, whichever comes first: the model would say EOS then
  STOP2 after 10, and STOP2 then EOS after 20; with both stop ids each row ends at its first,
  the tokens after it are pad and out of the mask. With one stop id alone the other is an
  ordinary token, so it is the second stop id that ended the row."""
  graphdef, params = model
  stop2 = 4
  chain = {
    10: 11,
    11: EOS_ID,  # prompt ending in 10: "11 EOS STOP2 EOS ..."
    20: 21,
    21: stop2,  # prompt ending in 20: "21 STOP2 EOS STOP2 ..."
    EOS_ID: stop2,
    stop2: EOS_ID,
    30: 31,
    31: 32,
    32: 30,  # prompt ending in 30: a cycle without a stop id
    PAD_ID: 5,
  }
  params = _bigram_params(params, chain)
  prompt, prompt_mask = _prompts(16, lengths=(5, 3, 6))
  prompt[:, -1] = [10, 20, 30]
  cycle = [31, 32, 30, 31, 32, 30, 31]
  pads = lambda n: [PAD_ID] * n
  for stop_ids, expected_tokens in [
    ((EOS_ID, stop2), [[11, EOS_ID] + pads(5), [21, stop2] + pads(5), cycle]),
    ((stop2, EOS_ID), [[11, EOS_ID] + pads(5), [21, stop2] + pads(5), cycle]),
    ((EOS_ID,), [[11, EOS_ID] + pads(5), [21, stop2, EOS_ID] + pads(4), cycle]),
  ]:
    cfg = SamplingConfig(max_new_tokens=7, temperature=1.0, stop_ids=stop_ids, pad_id=PAD_ID)
    s = generate(graphdef, params, prompt, prompt_mask, jax.random.key(17), cfg=cfg, group_size=2)
    _check_layout(s, cfg, 6)
    expected = _rep(expected_tokens, 2)
    np.testing.assert_array_equal(s.tokens_NxT, expected, err_msg=str(stop_ids))
    np.testing.assert_array_equal(s.mask_NxT, expected != PAD_ID, err_msg=str(stop_ids))
    np.testing.assert_array_equal(s.lengths_N, np.sum(expected != PAD_ID, axis=1))


# --- filter_logits --------------------------------------------------------------


def _kept(logits):
  return np.isfinite(np.asarray(logits))


def test_top_k_keeps_exactly_k_largest():
  logits = jnp.array([[0.3, -1.0, 2.5, 0.1, 1.7, -0.2, 0.9], [5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0]])
  out = filter_logits(logits, top_k=3, top_p=1.0)
  np.testing.assert_array_equal(_kept(out), [[0, 0, 1, 0, 1, 0, 1], [1, 1, 1, 0, 0, 0, 0]])
  np.testing.assert_array_equal(np.asarray(out)[_kept(out)], np.asarray(logits)[_kept(out)])
  np.testing.assert_array_equal(filter_logits(logits, top_k=0, top_p=1.0), logits)


@pytest.mark.parametrize(
  "top_p, expected",
  [
    (0.3, [0, 0, 1, 0]),  # the top token alone already reaches 0.3
    (0.7, [1, 0, 1, 0]),  # 0.5 < 0.7 <= 0.5 + 0.25
    (0.8, [1, 0, 1, 1]),  # 0.75 < 0.8 <= 0.75 + 0.15
    (0.95, [1, 1, 1, 1]),
    (1e-4, [0, 0, 1, 0]),  # the top token is always kept
  ],
)
def test_top_p_keeps_smallest_prefix_reaching_p(top_p, expected):
  probs = np.array([0.25, 0.1, 0.5, 0.15])  # sorted: 0.5, 0.25, 0.15, 0.1
  logits = jnp.asarray(np.log(probs) + 3.0, jnp.float32)[None]  # a shift changes nothing
  out = filter_logits(logits, top_k=0, top_p=top_p)
  np.testing.assert_array_equal(_kept(out)[0], np.asarray(expected, bool))


def test_top_p_is_per_row_and_composes_with_top_k():
  probs = np.array([[0.25, 0.1, 0.5, 0.15], [0.05, 0.9, 0.03, 0.02]])
  logits = jnp.asarray(np.log(probs), jnp.float32)
  np.testing.assert_array_equal(_kept(filter_logits(logits, 0, 0.7)), [[1, 0, 1, 0], [0, 1, 0, 0]])
  # top-k first (row 0 keeps 0.5, 0.25, renormalised to 2/3, 1/3), then top-p on what is
  # left: 0.6 keeps one token after top-k although it keeps two without it.
  np.testing.assert_array_equal(_kept(filter_logits(logits, 0, 0.6)), [[1, 0, 1, 0], [0, 1, 0, 0]])
  np.testing.assert_array_equal(_kept(filter_logits(logits, 2, 0.6)), [[0, 0, 1, 0], [0, 1, 0, 0]])
  np.testing.assert_array_equal(_kept(filter_logits(logits, 2, 0.9)), [[1, 0, 1, 0], [0, 1, 0, 0]])


@pytest.mark.parametrize("top_k", [0, 2, 40])
@pytest.mark.parametrize("scale", [3.0, 0.3], ids=["peaked", "flat"])
def test_the_samplers_own_probabilities_give_the_same_nucleus(top_k, scale):
  """The sampler passes exp(log_softmax) it already has instead of a second softmax (renormalised
  after top-k): the same kept set, on rows from peaked to flat, with the hand-made rows too."""
  rng = np.random.default_rng(int(scale * 10) + top_k)
  logits = jnp.asarray(rng.normal(size=(16, 3000)) * scale, jnp.float32)
  probs = jnp.exp(jax.nn.log_softmax(logits, axis=-1))
  widths = []
  for top_p in (0.5, 0.9, 0.99):
    plain = _kept(filter_logits(logits, top_k, top_p))
    given = _kept(filter_logits(logits, top_k, top_p, probs_NxV=probs))
    np.testing.assert_array_equal(given, plain)
    widths.append(plain.sum(-1))
  assert np.max(widths) > 1 and np.min(widths) < 3000  # the nucleus is neither 1 nor all
  hand = jnp.asarray(np.log([[0.25, 0.1, 0.5, 0.15], [0.05, 0.9, 0.03, 0.02]]), jnp.float32)
  hand_probs = jnp.exp(jax.nn.log_softmax(hand, axis=-1))
  got = _kept(filter_logits(hand, 2, 0.6, probs_NxV=hand_probs))
  np.testing.assert_array_equal(got, [[0, 0, 1, 0], [0, 1, 0, 0]])


@pytest.mark.parametrize("scale", [8.0, 0.3], ids=["peaked", "flat"])
@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.95])
def test_top_p_cutoff_equals_the_sorted_cutoff(scale, top_p):
  """Without sorting V entries (from the k largest, or by bisection of the logit value down to
  k candidates: k = 16 of V = 1,000 forces the bisection on the flat rows) the nucleus is the
  one the sorted cumulative mass gives."""
  from rl_jax.sampling.sampler import _cutoff_by_sort, top_p_cutoff

  logits = jax.random.normal(jax.random.key(3), (8, 1000)) * scale
  logits = logits.at[0, :500].set(-jnp.inf)  # a row top-k filtered first
  got = np.asarray(top_p_cutoff(logits, top_p, k=16))
  np.testing.assert_array_equal(got, np.asarray(_cutoff_by_sort(logits, top_p)))
  # By hand: the kept tokens' mass reaches top_p, and without the smallest kept it does not.
  l = np.asarray(logits, np.float64)
  probs = np.exp(l - l.max(axis=1, keepdims=True))
  probs /= probs.sum(axis=1, keepdims=True)
  for n in range(8):
    assert probs[n][l[n] >= got[n]].sum() >= top_p - 1e-6
    assert probs[n][l[n] > got[n]].sum() < top_p


def test_top_p_cutoff_with_ties_beyond_the_candidates():
  """100 tokens share the cutoff value: more than k = 16 candidates can order, so the rows fall
  back to the sort, and every tied token is kept."""
  from rl_jax.sampling.sampler import top_p_cutoff

  logits = jnp.concatenate([jnp.full((2, 100), 1.0), jnp.zeros((2, 50))], axis=1)
  cutoff = np.asarray(top_p_cutoff(logits, 0.5, k=16))
  np.testing.assert_array_equal(cutoff, [1.0, 1.0])


def test_inverse_cdf_sample_equals_the_full_cumulative_sum():
  from rl_jax.sampling.sampler import inverse_cdf_sample

  rng = np.random.default_rng(0)
  probs = rng.random((64, 1000)) * (rng.random((64, 1000)) < 0.3)  # 70% zero mass, V % 128 != 0
  u = rng.random(64)
  got = np.asarray(inverse_cdf_sample(jnp.asarray(probs, jnp.float32), jnp.asarray(u)))
  cdf = np.cumsum(probs, axis=1)
  want = np.array([np.searchsorted(cdf[n], u[n] * cdf[n, -1], side="right") for n in range(64)])
  np.testing.assert_array_equal(got, want)
  assert np.all(probs[np.arange(64), got] > 0)
  # u at the edges: the first and the last token with mass.
  edge = np.asarray(inverse_cdf_sample(jnp.asarray(probs[:2], jnp.float32), jnp.array([0.0, 1.0])))
  assert edge[0] == np.flatnonzero(probs[0])[0] and edge[1] == np.flatnonzero(probs[1])[-1]


# --- compilation ----------------------------------------------------------------


def test_no_recompilation_for_new_prompts_rng_and_params(model):
  graphdef, params = model
  cfg = SamplingConfig(max_new_tokens=T, temperature=1.0, stop_ids=STOP)
  prompt, prompt_mask = _prompts(11)
  generate(graphdef, params, prompt, prompt_mask, jax.random.key(0), cfg=cfg, group_size=G)
  compiled = sampler._generate._cache_size()

  prompt2, prompt_mask2 = _prompts(12, lengths=(1, 6, 3))
  params2 = jax.tree.map(lambda x: x * 1.01, params)  # as after an update step
  s = generate(graphdef, params2, prompt2, prompt_mask2, jax.random.key(1), cfg=cfg, group_size=G)
  s.tokens_NxT.block_until_ready()
  assert sampler._generate._cache_size() == compiled, "generate recompiled for same-shaped inputs"

  # The counter does count: a new group size is a new program.
  generate(graphdef, params, prompt, prompt_mask, jax.random.key(0), cfg=cfg, group_size=1)
  assert sampler._generate._cache_size() == compiled + 1


def test_sampling_config_validation():
  for kwargs, field in [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=4, temperature=-0.1), "temperature"),
    (dict(max_new_tokens=4, top_k=-1), "top_k"),
    (dict(max_new_tokens=4, top_p=0.0), "top_p"),
    (dict(max_new_tokens=4, top_p=1.5), "top_p"),
    (dict(max_new_tokens=4, streams=-1), "streams"),
  ]:
    with pytest.raises(ValueError, match=field):
      SamplingConfig(**kwargs)


def test_cache_phases_do_not_change_the_samples(model):
  """Decoding 40 tokens in phases of 16 with a growing cache ([0, 16, 32, 40]) gives the same
  tokens and log-probs as one phase with the full cache, sampled and greedy, with left-padded
  prompts and an EOS that ends some rows early; and the log-probs still equal the trainer's."""
  graphdef, params = model
  prompt, prompt_mask = _prompts(11)
  for temperature, stops in ((1.0, (5,)), (0.0, ())):
    one, phased = (
      SamplingConfig(max_new_tokens=40, temperature=temperature, stop_ids=stops, cache_phases=k)
      for k in (1, 4)
    )
    assert phased.phase_bounds() == [0, 16, 32, 40] and one.phase_bounds() == [0, 40]
    a = generate(graphdef, params, prompt, prompt_mask, jax.random.key(4), cfg=one, group_size=G)
    b = generate(graphdef, params, prompt, prompt_mask, jax.random.key(4), cfg=phased, group_size=G)
    np.testing.assert_array_equal(a.tokens_NxT, b.tokens_NxT)
    np.testing.assert_array_equal(a.mask_NxT, b.mask_NxT)
    np.testing.assert_allclose(a.logp_NxT, b.logp_NxT, atol=1e-5)
    if temperature:
      assert 0 < int(np.asarray(b.lengths_N).min()) < 40  # some rows ended at EOS
      ref = completion_logprobs(
        graphdef, params, _rep(prompt, G), _rep(prompt_mask, G), b.tokens_NxT, b.mask_NxT
      ).logp_NxT
      np.testing.assert_allclose(b.logp_NxT, ref, atol=1e-5)


# --- decode streams (CPU) ------------------------------------------------------------


def test_streams_do_not_change_the_samples(model):
  """The batch decoded as 2 or 4 concurrent streams of whole groups gives the same tokens, masks
  and (up to float rounding) log-probs as one stream: each row draws from its own key (the step
  key folded with its row index in the whole batch), sampled with an EOS that ends rows early,
  and greedy. A second call with new inputs compiles nothing new."""
  graphdef, params = model
  prompt, prompt_mask = _prompts(13, lengths=(7, 4, 2, 5))
  for temperature, stops in ((1.0, (5,)), (0.0, ())):
    cfgs = [
      SamplingConfig(max_new_tokens=T, temperature=temperature, stop_ids=stops, streams=k)
      for k in (1, 2, 4)
    ]
    one, *split = [
      generate(graphdef, params, prompt, prompt_mask, jax.random.key(6), cfg=c, group_size=G)
      for c in cfgs
    ]
    _check_layout(one, cfgs[0], 4 * G)
    for s in split:
      np.testing.assert_array_equal(one.tokens_NxT, s.tokens_NxT)
      np.testing.assert_array_equal(one.mask_NxT, s.mask_NxT)
      np.testing.assert_array_equal(one.lengths_N, s.lengths_N)
      np.testing.assert_allclose(one.logp_NxT, s.logp_NxT, atol=1e-5)
    if temperature:
      assert 0 < int(np.asarray(one.lengths_N).min()) < T  # some rows ended at EOS
      assert len({tuple(r) for r in np.asarray(one.tokens_NxT)}) > G  # rows differ
  compiled = sampler._generate._cache_size()
  prompt2, prompt_mask2 = _prompts(14, lengths=(3, 7, 1, 2))
  generate(
    graphdef, params, prompt2, prompt_mask2, jax.random.key(8), cfg=cfgs[1], group_size=G
  ).tokens_NxT.block_until_ready()
  assert sampler._generate._cache_size() == compiled


def test_groups_sharing_their_prompt_sample_as_rows_with_repeated_prompts(model):
  """G samples per prompt (the prompt a shared attention prefix, stored once per group) draw
  the same tokens, masks and (up to float rounding) log-probs as one sample each of the
  prompt repeated G times (each row then keeps the prompt in its own cache): row keys depend
  only on the row's index, so any difference is the prefix attention's. With EOS ending rows
  early, over several cache phases."""
  graphdef, params = model
  prompt, prompt_mask = _prompts(15)
  cfg = SamplingConfig(max_new_tokens=40, stop_ids=(5,), cache_phases=3, streams=1)
  assert len(cfg.phase_bounds()) == 4  # three phases
  shared = generate(graphdef, params, prompt, prompt_mask, jax.random.key(9), cfg=cfg, group_size=G)
  per_row = generate(
    graphdef,
    params,
    _rep(prompt, G),
    _rep(prompt_mask, G),
    jax.random.key(9),
    cfg=cfg,
    group_size=1,
  )
  np.testing.assert_array_equal(shared.tokens_NxT, per_row.tokens_NxT)
  np.testing.assert_array_equal(shared.mask_NxT, per_row.mask_NxT)
  np.testing.assert_allclose(shared.logp_NxT, per_row.logp_NxT, atol=1e-5)
  assert 0 < int(np.asarray(shared.lengths_N).min()) < 40  # some rows ended at EOS
  assert int(np.asarray(shared.lengths_N).max()) > 32  # and some reached the last phase


# --- key schedule and continuations ------------------------------------------------


def test_start_n_shifts_each_rows_key_schedule(model):
  """Row n's token at completion position t draws from fold_in(fold_in(key, n), t), and
  `start_N` is each row's first position. With a model whose logits are 0 whatever the input
  (a uniform policy: the draws depend on the keys alone), T tokens from start s_n are tokens
  s_n .. s_n + T - 1 of a run from 0, and both are the documented key schedule; also when the
  batch is decoded as 2 streams, each with its slice of `start_N`."""
  graphdef, params = model
  uniform = _bigram_params(params, {})  # lm_head = 0: every logit is 0
  prompt, prompt_mask = _prompts(18, lengths=(7, 4, 2, 5))
  N, S, key = 4 * G, 5, jax.random.key(19)
  start_N = np.asarray([0, 3, 5, 1, 2, 4, 5, 0, 3, 2, 1, 4], np.int32)
  assert start_N.shape == (N,) and start_N.max() == S
  ref = generate(
    graphdef,
    uniform,
    prompt,
    prompt_mask,
    key,
    cfg=SamplingConfig(max_new_tokens=T + S, streams=1),
    group_size=G,
  )
  shifted = generate(
    graphdef,
    uniform,
    prompt,
    prompt_mask,
    key,
    cfg=SamplingConfig(max_new_tokens=T, streams=2),
    group_size=G,
    start_N=start_N,
  )
  ref_tokens = np.asarray(ref.tokens_NxT)
  window = (start_N[:, None] + np.arange(T)[None]).astype(np.int32)
  np.testing.assert_array_equal(shifted.tokens_NxT, np.take_along_axis(ref_tokens, window, 1))
  np.testing.assert_array_equal(shifted.lengths_N, np.full(N, T))  # no stop ids: never ends
  np.testing.assert_allclose(shifted.logp_NxT, -np.log(CFG.vocab_size), rtol=1e-6)
  # The schedule itself: the uniform draw of key fold_in(fold_in(key, n), t).
  row_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(N))
  keys_NxT = jax.vmap(lambda k, ts: jax.vmap(jax.random.fold_in, in_axes=(None, 0))(k, ts))(
    row_keys, jnp.asarray(window)
  )
  zeros = jnp.zeros((N * T, CFG.vocab_size), jnp.float32)
  tok, _ = sampler._choose(keys_NxT.reshape(N * T), zeros, SamplingConfig(max_new_tokens=1))
  np.testing.assert_array_equal(shifted.tokens_NxT, np.asarray(tok).reshape(N, T))
  # Rows of a group and the positions of a row draw different tokens: the keys differ.
  assert len({tuple(r) for r in ref_tokens}) == N
  assert all(len(set(r)) > 3 for r in ref_tokens.tolist())


def test_start_n_is_reproducible_and_leaves_greedy_unchanged(model):
  """With the real model: the same key and `start_N` give the same samples, other starts give
  other samples, and greedy decoding (no draws) does not depend on `start_N`."""
  graphdef, params = model
  prompt, prompt_mask = _prompts(0)
  run = lambda cfg, start_N: generate(
    graphdef,
    params,
    prompt,
    prompt_mask,
    jax.random.key(2),
    cfg=cfg,
    group_size=G,
    start_N=start_N,
  )
  cfg = SamplingConfig(max_new_tokens=T, temperature=1.0, stop_ids=STOP)  # compiled above
  start_N = np.full(B * G, 4, np.int32)
  a, again = run(cfg, start_N), run(cfg, start_N)
  for x, y in zip(a, again):
    np.testing.assert_array_equal(x, y)
  from_zero = run(cfg, None)
  np.testing.assert_array_equal(
    run(cfg, np.zeros(B * G, np.int32)).tokens_NxT, from_zero.tokens_NxT
  )
  assert np.any(np.asarray(a.tokens_NxT) != np.asarray(from_zero.tokens_NxT))
  greedy = SamplingConfig(max_new_tokens=T, temperature=0.0, stop_ids=STOP)
  g0, g4 = run(greedy, None), run(greedy, np.arange(B * G, dtype=np.int32))
  np.testing.assert_array_equal(g0.tokens_NxT, g4.tokens_NxT)
  np.testing.assert_array_equal(g0.mask_NxT, g4.mask_NxT)


def test_continuations_draw_what_the_row_would_have_drawn(model):
  """`generate_continuations` after a row's first f_n sampled tokens, forced, continues with
  exactly the tokens (and log-probs, up to float rounding) the row sampled next: the forced
  tokens are prefilled at their own positions and the key schedule starts at f_n. Forced
  tokens come first, out of the loss mask, then the sampled ones, then padding."""
  graphdef, params = model
  prompt, prompt_mask = _prompts(20)
  F, N = 4, B * G
  cfg = SamplingConfig(max_new_tokens=T, temperature=1.0)  # no stop ids: rows run to T
  full = generate(graphdef, params, prompt, prompt_mask, jax.random.key(21), cfg=cfg, group_size=G)
  f_N = np.asarray([0, 1, 2, 3, 4, 4, 2, 1, 3])
  forced_mask = np.arange(F)[None] < f_N[:, None]
  forced = np.where(forced_mask, np.asarray(full.tokens_NxT)[:, :F], 5)  # garbage in the pads
  out = sampler.generate_continuations(
    graphdef,
    params,
    _rep(prompt, G),
    _rep(prompt_mask, G),
    forced,
    forced_mask,
    jax.random.key(21),
    cfg=SamplingConfig(max_new_tokens=T - F, temperature=1.0),
  )
  assert out.completion_NxT.shape == (N, T)
  new = np.arange(T)[None]
  valid = new < f_N[:, None] + T - F
  sampled = valid & (new >= f_N[:, None])
  np.testing.assert_array_equal(out.completion_mask_NxT, valid)
  np.testing.assert_array_equal(out.loss_mask_NxT, sampled)
  np.testing.assert_array_equal(
    out.completion_NxT, np.where(valid, np.asarray(full.tokens_NxT), cfg.pad_id)
  )
  np.testing.assert_allclose(
    out.logp_NxT, np.where(sampled, np.asarray(full.logp_NxT), 0.0), atol=1e-5
  )
  assert len({tuple(r) for r in np.asarray(full.tokens_NxT)}) == N  # rows differ


def test_resolve_streams(model, monkeypatch):
  _, params = model
  prompt = np.zeros((64, 3), np.int32)
  monkeypatch.setattr(sampler.os, "cpu_count", lambda: 2)
  assert sampler.resolve_streams(0, 64, prompt, params) == 2  # auto on a 2-core CPU
  assert sampler.resolve_streams(3, 64, prompt, params) == 2  # the largest divisor of 64 <= 3
  assert sampler.resolve_streams(4, 6, prompt[:6], params) == 3
  assert sampler.resolve_streams(8, 3, prompt[:3], params) == 3  # never more than the prompts
  assert sampler.resolve_streams(1, 64, prompt, params) == 1
  monkeypatch.setattr(sampler.os, "cpu_count", lambda: 1)
  assert sampler.resolve_streams(0, 64, prompt, params) == 1  # auto on one core


def test_sampled_frequencies_match_the_distribution():
  """Inverse-transform sampling draws each token with its softmax probability (at temperature
  0.7, and after top-k / top-p, where filtered tokens are never drawn): 40,000 rows of the same
  logits, each row with its own key, against the exact probabilities (5 sigma bands)."""
  V, n = 6, 40_000
  logits = jnp.asarray([[2.0, 0.5, -1.0, 1.0, -3.0, 0.0]])
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.key(3), jnp.arange(n))
  for cfg, keep in (
    (SamplingConfig(max_new_tokens=1, temperature=0.7), np.ones(V, bool)),
    (
      SamplingConfig(max_new_tokens=1, temperature=1.0, top_k=3),
      np.asarray([1, 1, 0, 1, 0, 0], bool),
    ),
    (
      SamplingConfig(max_new_tokens=1, temperature=1.0, top_p=0.75),
      np.asarray([1, 0, 0, 1, 0, 0], bool),
    ),
  ):
    tok, logp = sampler._choose(keys, jnp.repeat(logits, n, axis=0), cfg)
    scaled = np.asarray(logits[0]) / cfg.temperature
    p = np.where(keep, np.exp(scaled), 0.0)
    p /= p.sum()
    freq = np.bincount(np.asarray(tok), minlength=V) / n
    assert np.all(freq[~keep] == 0), (cfg, freq)
    np.testing.assert_array_less(np.abs(freq - p), 5 * np.sqrt(p * (1 - p) / n) + 1e-12)
    # The returned log-prob is the unfiltered softmax's, as the trainer computes it.
    full = scaled - np.log(np.exp(scaled).sum())
    np.testing.assert_allclose(np.asarray(logp), full[np.asarray(tok)], rtol=1e-5)


def test_sampling_a_rematerialised_model_equals_the_plain_one():
  """`model.remat` recomputes blocks for the backward pass; the sampler's decode steps (with a
  cache, inside a while_loop) run the plain blocks, so a remat model samples (it used to fail
  with a trace-level error) and samples exactly what the plain model samples."""
  out = []
  for remat in (False, True):
    cfg = transformer.preset("test", 23, remat=remat)
    graphdef, params = transformer.init_model(cfg, 0)
    prompts = jnp.asarray(np.random.default_rng(0).integers(3, 23, (2, 5)), jnp.int32)
    mask = jnp.ones((2, 5), bool)
    cfg_s = SamplingConfig(max_new_tokens=6, temperature=1.0, stop_ids=())
    out.append(
      generate(graphdef, params, prompts, mask, jax.random.key(0), cfg=cfg_s, group_size=2)
    )
  np.testing.assert_array_equal(out[0].tokens_NxT, out[1].tokens_NxT)
  np.testing.assert_allclose(out[0].logp_NxT, out[1].logp_NxT, rtol=1e-6, atol=1e-6)
