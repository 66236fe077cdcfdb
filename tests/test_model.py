"""Tests of rl_jax.models.transformer: the model facts RL depends on.

Cached decoding == the full forward pass, causality, left padding, grouped-query attention,
parameter counts. Dimensions are pairwise distinct (mostly prime) so that a mixed-up axis
fails loudly instead of broadcasting silently: V=37, D=41, H=4, K=2, Dh=10 (H*Dh=40), F=53.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax.models import transformer

CFG = transformer.TransformerConfig(
  vocab_size=37, d_model=41, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=10, mlp_dim=53
)


# Every Gemma 2/3 feature at once: a 3-slot window on layer 0 with its own RoPE base, both
# soft-caps (low enough to bend these logits), (1 + w) and sandwich norms, a query scalar.
GEMMA_CFG = dataclasses.replace(
  CFG,
  sliding_window=3,
  sliding_layers=(True, False),
  rope_local_theta=100.0,
  attn_softcap=2.0,
  final_softcap=4.0,
  norm_offset=1.0,
  sandwich_norms=True,
  embed_scale=True,
  activation="gelu",
  query_scalar=7.0,
  qk_norm=True,
  tie_embeddings=True,
)


@pytest.fixture(scope="module", params=[CFG, GEMMA_CFG], ids=["llama", "gemma"])
def model(request):
  return transformer.init_model(request.param, seed=0)


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, params, tokens_NxL, positions_NxL, kv_mask_NxS, cache=None, write_index=0):
  return transformer.merge(graphdef, params)(
    tokens_NxL, positions_NxL, kv_mask_NxS, cache, write_index
  )


def _forward(graphdef, params, tokens_NxL, mask_NxL):
  """Plain (cache-free) forward pass with positions counted over valid tokens."""
  positions = transformer.positions_from_mask(jnp.asarray(mask_NxL))
  logits, _ = _apply(graphdef, params, tokens_NxL, positions, mask_NxL)
  return np.asarray(logits)


def _tokens(seed, shape, vocab=CFG.vocab_size):
  return np.random.default_rng(seed).integers(0, vocab, shape).astype(np.int32)


# --- cache == no cache --------------------------------------------------------


@pytest.mark.parametrize("pads", [(0, 0, 0), (0, 2, 4)], ids=["no_pad", "left_pad"])
def test_cached_decoding_equals_full_forward(model, pads):
  graphdef, params = model
  N, L, prefix, S = 3, 11, 5, 13  # S > L: unwritten slots must be ignored
  tokens = _tokens(1, (N, L))
  mask = np.ones((N, L), bool)
  for n, p in enumerate(pads):
    mask[n, :p] = False
  full = _forward(graphdef, params, tokens, mask)

  positions = transformer.positions_from_mask(jnp.asarray(mask))
  # Slots past L are marked valid on purpose: only causality (slot <= write slot) hides them.
  kv_mask_NxS = jnp.concatenate([jnp.asarray(mask), jnp.ones((N, S - L), bool)], axis=1)
  cache = transformer.init_cache(CFG, N, S)
  assert cache[0].k_NxKxSxDh.shape == (N, CFG.num_kv_heads, S, CFG.head_dim)
  logits, cache = _apply(
    graphdef, params, tokens[:, :prefix], positions[:, :prefix], kv_mask_NxS, cache, 0
  )
  steps = [np.asarray(logits)]
  for i in range(prefix, L):
    # write_index is traced under jit, as in the sampler's decode loop.
    logits, cache = _apply(
      graphdef, params, tokens[:, i : i + 1], positions[:, i : i + 1], kv_mask_NxS, cache, i
    )
    assert logits.shape == (N, 1, CFG.vocab_size)
    steps.append(np.asarray(logits))
  cached = np.concatenate(steps, axis=1)

  assert cached.dtype == np.float32 and full.dtype == np.float32
  # Padded query positions are never used, so compare valid positions only.
  np.testing.assert_allclose(cached[mask], full[mask], atol=1e-5, rtol=1e-5)


@functools.partial(jax.jit, static_argnums=0)
def _apply_with_prefix(
  graphdef, params, tokens_NxL, positions_NxL, kv_mask_NxS, cache, write_index, prefix
):
  return transformer.merge(graphdef, params)(
    tokens_NxL, positions_NxL, kv_mask_NxS, cache, write_index, prefix
  )


@pytest.mark.parametrize("decode", [False, True], ids=["one_call", "token_by_token"])
def test_shared_prefix_equals_the_repeated_prompt(model, decode):
  """G rows attending to their group's prompt as a `SharedPrefix` give the logits of the full
  forward pass over `[prompt ; row tokens]`: as one call over the rows' tokens, and decoded one
  token at a time into a cache of the rows' own slots. Left padding in one prompt and a masked
  (ended) row token are included."""
  graphdef, params = model
  B, G, P, L = 2, 3, 6, 5
  N = B * G
  prompts, prompt_mask = _tokens(7, (B, P)), np.ones((B, P), bool)
  prompt_mask[1, :2] = False
  own = _tokens(8, (N, L))
  own_mask = np.ones((N, L), bool)
  own_mask[4, 3:] = False  # row 4 ended: its later tokens are neither keys nor compared
  full_mask = np.concatenate([np.repeat(prompt_mask, G, 0), own_mask], axis=1)
  full = _forward(graphdef, params, np.concatenate([np.repeat(prompts, G, 0), own], 1), full_mask)[
    :, P:
  ]

  positions = transformer.positions_from_mask(jnp.asarray(full_mask))
  _, prompt_kv = _apply(graphdef, params, prompts, positions[::G, :P], prompt_mask)
  prefix = [
    transformer.SharedPrefix(c.k_NxKxSxDh, c.v_NxKxSxDh, jnp.asarray(prompt_mask))
    for c in prompt_kv
  ]
  assert prefix[0].k_BxKxPxDh.shape == (B, CFG.num_kv_heads, P, CFG.head_dim)
  if not decode:
    shared, _ = _apply_with_prefix(
      graphdef, params, own, positions[:, P:], own_mask, None, 0, prefix
    )
  else:
    cache = transformer.init_cache(CFG, N, L)
    steps = []
    for i in range(L):
      logits, cache = _apply_with_prefix(
        graphdef,
        params,
        own[:, i : i + 1],
        positions[:, P + i : P + i + 1],
        own_mask,
        cache,
        i,
        prefix,
      )
      steps.append(np.asarray(logits))
    shared = np.concatenate(steps, axis=1)
  np.testing.assert_allclose(np.asarray(shared)[own_mask], full[own_mask], atol=1e-5, rtol=1e-5)


# --- causality and padding ----------------------------------------------------


@pytest.mark.parametrize("j", [0, 4, 8])
def test_causality(model, j):
  graphdef, params = model
  N, L = 2, 9
  tokens = _tokens(3, (N, L))
  changed = tokens.copy()
  changed[:, j] = (tokens[:, j] + 1 + np.arange(N)) % CFG.vocab_size
  mask = np.ones((N, L), bool)
  a = _forward(graphdef, params, tokens, mask)
  b = _forward(graphdef, params, changed, mask)
  np.testing.assert_allclose(a[:, :j], b[:, :j], atol=1e-6)
  diff_NxL = np.abs(a - b).max(axis=-1)
  assert np.all(diff_NxL[:, j:] > 1e-4), diff_NxL


def test_left_padding_does_not_change_valid_logits(model):
  graphdef, params = model
  N, L, pads = 2, 8, 3
  tokens = _tokens(4, (N, L))
  unpadded = _forward(graphdef, params, tokens, np.ones((N, L), bool))

  # Garbage (not pad ids) under the pads: anything leaking through the mask shows up.
  padded_tokens = np.concatenate([_tokens(5, (N, pads)), tokens], axis=1)
  padded_mask = np.concatenate([np.zeros((N, pads), bool), np.ones((N, L), bool)], axis=1)
  np.testing.assert_array_equal(
    transformer.positions_from_mask(jnp.asarray(padded_mask))[:, pads:],
    np.broadcast_to(np.arange(L), (N, L)),
  )
  padded = _forward(graphdef, params, padded_tokens, padded_mask)
  np.testing.assert_allclose(padded[:, pads:], unpadded, atol=1e-5, rtol=1e-5)


def test_positions_from_mask_hand_values():
  mask = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]], bool)
  np.testing.assert_array_equal(
    transformer.positions_from_mask(mask), [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]]
  )


# --- grouped-query attention and shapes ---------------------------------------


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
def test_attention_variants_run(num_kv_heads):
  # num_kv_heads=1 also turns on every optional variant, so each code path runs once.
  extra = (
    dict(tie_embeddings=True, embed_scale=True, qkv_bias=True, qk_norm=True, activation="gelu")
    if num_kv_heads == 1
    else {}
  )
  cfg = dataclasses.replace(CFG, num_kv_heads=num_kv_heads, **extra)
  graphdef, params = transformer.init_model(cfg, seed=1)
  assert params["layers"][0]["attn"]["k_proj"]["kernel"].shape == (41, num_kv_heads * 10)
  assert params["layers"][0]["attn"]["q_proj"]["kernel"].shape == (41, 40)
  assert params["layers"][0]["attn"]["o_proj"]["kernel"].shape == (40, 41)
  logits = _forward(graphdef, params, _tokens(6, (3, 5)), np.ones((3, 5), bool))
  assert logits.shape == (3, 5, 37)
  assert np.all(np.isfinite(logits))


def test_gqa_equals_mha_with_repeated_kv_heads():
  """Query head h uses kv head h // (H // K): repeating K/V weights gives plain MHA."""
  gqa_cfg = CFG  # H=4, K=2: heads (0, 1) share kv head 0, heads (2, 3) share kv head 1
  mha_cfg = dataclasses.replace(CFG, num_kv_heads=CFG.num_heads)
  graphdef, params = transformer.init_model(gqa_cfg, seed=2)
  mha_graphdef, mha_params = transformer.init_model(mha_cfg, seed=3)
  group = CFG.num_heads // CFG.num_kv_heads

  def repeat_heads(kernel_DxKDh):
    D = kernel_DxKDh.shape[0]
    k = kernel_DxKDh.reshape(D, CFG.num_kv_heads, CFG.head_dim)
    return jnp.repeat(k, group, axis=1).reshape(D, CFG.num_heads * CFG.head_dim)

  mha_params = jax.tree.map(lambda x: x, params)  # same weights everywhere ...
  for layer in mha_params["layers"].values():  # ... except K/V, repeated per query group
    for name in ("k_proj", "v_proj"):
      layer["attn"][name]["kernel"] = repeat_heads(layer["attn"][name]["kernel"])

  tokens, mask = _tokens(7, (2, 6)), np.ones((2, 6), bool)
  np.testing.assert_allclose(
    _forward(mha_graphdef, mha_params, tokens, mask),
    _forward(graphdef, params, tokens, mask),
    atol=1e-5,
    rtol=1e-5,
  )


@pytest.mark.parametrize(
  "overrides",
  [
    {},
    {"num_kv_heads": 4},
    {"tie_embeddings": True},
    {"qkv_bias": True},
    {"qk_norm": True},
    {
      "tie_embeddings": True,
      "embed_scale": True,
      "qkv_bias": True,
      "qk_norm": True,
      "activation": "gelu",
      "num_kv_heads": 1,
    },
    {f.name: getattr(GEMMA_CFG, f.name) for f in dataclasses.fields(GEMMA_CFG)},
  ],
  ids=["base", "mha", "tied", "qkv_bias", "qk_norm", "all", "gemma"],
)
def test_num_params_matches_param_tree(overrides):
  cfg = dataclasses.replace(CFG, **overrides)
  _, params = transformer.init_model(cfg, seed=0)
  assert sum(x.size for x in jax.tree.leaves(params)) == cfg.num_params()
  assert ("lm_head" in params) == (not cfg.tie_embeddings)


def test_abstract_model_matches_init_model():
  _, params = transformer.init_model(CFG, seed=0)
  _, abstract = transformer.abstract_model(CFG)
  shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
  assert shapes(abstract) == shapes(params)


def test_num_params_of_presets_hand_value():
  # test preset at V=17: per layer 32*32 + 2*32*16 + 32*32 + 3*32*64 + 2*32 = 9280.
  cfg = transformer.preset("test", vocab_size=17)
  assert cfg.num_params() == 2 * 9280 + 2 * 17 * 32 + 32 == 19680
  assert transformer.preset("tiny", 17, num_layers=1).num_layers == 1


# --- config validation ---------------------------------------------------------


def test_heads_not_multiple_of_kv_heads_raises():
  with pytest.raises(ValueError, match="num_heads"):
    dataclasses.replace(CFG, num_heads=4, num_kv_heads=3)


def test_odd_head_dim_raises():
  with pytest.raises(ValueError, match="head_dim"):
    dataclasses.replace(CFG, head_dim=9)


def test_unknown_activation_and_preset_raise():
  with pytest.raises(ValueError, match="activation"):
    dataclasses.replace(CFG, activation="relu")
  with pytest.raises(ValueError, match="preset"):
    transformer.preset("huge", vocab_size=37)


def _numpy_reference_logits(cfg, params, tokens):
  """An independent float64 NumPy forward pass of the same architecture (Llama/Qwen2 block:
  RMSNorm, rotate-half RoPE, grouped-query causal attention, SwiGLU), read straight from the
  parameter dict, for one unpadded batch."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  N, L = tokens.shape
  H, K, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

  def rms(x, scale):
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + cfg.norm_eps) * scale

  def rope(x):  # [N, L, heads, Dh]
    half = Dh // 2
    freq = cfg.rope_theta ** (-np.arange(half) / half)
    ang = np.arange(L)[:, None] * freq[None]
    cos, sin = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

  x = p["embed"]["embedding"][tokens]
  for i in range(cfg.num_layers):
    lp = p["layers"][i]
    h = rms(x, lp["attn_norm"]["scale"])
    a = lp["attn"]
    proj = lambda name: h @ a[name]["kernel"] + (a[name]["bias"] if cfg.qkv_bias else 0.0)
    q = rope(proj("q_proj").reshape(N, L, H, Dh))
    k = rope(proj("k_proj").reshape(N, L, K, Dh))
    v = proj("v_proj").reshape(N, L, K, Dh)
    out = np.zeros((N, L, H, Dh))
    for head in range(H):
      kv = head // (H // K)
      s = np.einsum("nld,nmd->nlm", q[:, :, head], k[:, :, kv]) / np.sqrt(Dh)
      s = np.where(np.tril(np.ones((L, L), bool))[None], s, -np.inf)
      w = np.exp(s - s.max(-1, keepdims=True))
      w /= w.sum(-1, keepdims=True)
      out[:, :, head] = np.einsum("nlm,nmd->nld", w, v[:, :, kv])
    x = x + out.reshape(N, L, H * Dh) @ a["o_proj"]["kernel"]
    h = rms(x, lp["mlp_norm"]["scale"])
    m = lp["mlp"]
    gate = h @ m["gate_proj"]["kernel"]
    x = x + (gate / (1 + np.exp(-gate)) * (h @ m["up_proj"]["kernel"])) @ m["down_proj"]["kernel"]
  return rms(x, p["final_norm"]["scale"]) @ p["lm_head"]["kernel"]


@pytest.mark.parametrize("overrides", [dict(), dict(qkv_bias=True, num_kv_heads=1)])
def test_forward_matches_an_independent_numpy_implementation(overrides):
  cfg = transformer.preset("test", 23, **overrides)
  graphdef, params = transformer.init_model(cfg, 3)
  # Non-trivial norm scales and biases so that every parameter matters.
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(
    treedef, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
  )
  tokens = np.random.default_rng(0).integers(0, 23, (2, 7)).astype(np.int32)
  model = transformer.merge(graphdef, params)
  L = tokens.shape[1]
  positions = np.broadcast_to(np.arange(L), tokens.shape)
  logits, _ = model(tokens, positions, np.ones(tokens.shape, bool))
  np.testing.assert_allclose(
    np.asarray(logits), _numpy_reference_logits(cfg, params, tokens), rtol=2e-4, atol=2e-4
  )
