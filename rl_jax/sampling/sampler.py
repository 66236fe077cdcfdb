"""Jitted prefill + decode with a per-layer KV cache; G samples share their prompt's prefill.

`generate` runs the prompt batch through the model once (prefill); with G > 1 the prompt's keys
and values are a prefix shared by its G samples (`transformer.SharedPrefix`, stored and read
once per group, never repeated per row). It decodes all B*G continuations in
`lax.while_loop`s that write the cache of the generated tokens in place and stop as soon as
every sequence has emitted a stop token (or at `max_new_tokens`). The decode runs in a few
phases whose cache grows to what the phase needs (`SamplingConfig.cache_phases`), as reading
the cache bounds a decode step. Nothing returns to the host until the end. Shapes are
fixed by (B, P, G, T), so a run compiles once.

On a single-device CPU backend the batch is split into `SamplingConfig.streams` parts of whole
prompt groups, decoded concurrently from threads (one XLA execution per thread and core): XLA:CPU
runs a decode step's small ops on one core, so one stream leaves the other cores idle. Every row
draws its noise from its own key (the step key folded with the row's index in the whole batch),
so the samples do not depend on the number of streams. The key of row n's token at completion
position t is `fold_in(fold_in(key, n), t)`: a row continued from a forced prefix of F tokens
(`generate_continuations`) draws exactly what it would have drawn had it sampled those F tokens
itself.

Log-probs returned are those of the sampled tokens under softmax(logits / temperature) before
top-k / top-p truncation: at temperature 1 with no truncation they are exactly the policy's
log-probs, which the trainer can reuse as old log-probs.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import threading
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rl_jax.models import transformer

MIN_PHASE = 16  # decode tokens per cache phase, at least


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int
  temperature: float = 1.0  # 0 = greedy
  top_k: int = 0  # 0 = off
  top_p: float = 1.0  # 1 = off
  stop_ids: tuple[int, ...] = ()  # a row ends after emitting any of these (EOS, end of turn)
  pad_id: int = 0
  # The decode loop runs in up to this many phases (of at least MIN_PHASE tokens), each with a
  # KV cache only as long as that phase needs, padded once between phases. A decode step is
  # bound by reading the cache, so steps then read about P + T/2 slots instead of P + T; each
  # phase compiles its own loop body. 1 = a single phase.
  cache_phases: int = 4
  # CPU only: decode the batch as this many concurrent streams of whole prompt groups (threads,
  # one per core). 0 = auto: 2 on a single-device CPU backend with >= 2 cores, else 1. Other
  # backends and multi-device inputs always use 1 (one device runs the whole batch).
  streams: int = 0

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"sampling.max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if self.temperature < 0:
      raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"sampling.top_k must be >= 0, got {self.top_k}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
    if self.cache_phases < 1:
      raise ValueError(f"sampling.cache_phases must be >= 1, got {self.cache_phases}")
    if self.streams < 0:
      raise ValueError(f"sampling.streams must be >= 0 (0 = auto), got {self.streams}")

  def phase_bounds(self) -> list[int]:
    """[0, t1, t2, ..., T]: decode phase i produces tokens bounds[i] .. bounds[i+1] - 1."""
    T = self.max_new_tokens
    step = max(-(-T // self.cache_phases), MIN_PHASE)
    return list(range(0, T, step)) + [T]


class Samples(NamedTuple):
  """Output of `generate` for N = B*G sequences (row b*G + g is sample g of prompt b)."""

  tokens_NxT: jax.Array  # int32, pad after the stop token
  logp_NxT: jax.Array  # float32 log-prob of each sampled token, 0 where mask is 0
  mask_NxT: jax.Array  # bool, True on generated tokens up to and including the stop token
  lengths_N: jax.Array  # int32 number of generated tokens (stop token included)


TOP_P_CANDIDATES = 256  # see `top_p_cutoff`


def _cutoff_among(vals_NxK, probs_NxK, mass_above_N, top_p):
  """The smallest of the descending candidates `vals_NxK` whose preceding mass (the mass above
  them plus the candidates before them) is below top_p; +inf where none is."""
  before = mass_above_N[:, None] + jnp.cumsum(probs_NxK, axis=-1) - probs_NxK
  keep = (before < top_p) & (vals_NxK > -jnp.inf)
  return jnp.min(jnp.where(keep, vals_NxK, jnp.inf), axis=-1)


def _cutoff_by_sort(logits_NxV, top_p):
  sorted_desc = -jnp.sort(-logits_NxV, axis=-1)
  probs = jax.nn.softmax(sorted_desc, axis=-1)
  return _cutoff_among(sorted_desc, probs, jnp.zeros(logits_NxV.shape[0]), top_p)


def _cutoff_by_bisection(logits_NxV, probs_NxV, top_p, k: int):
  """Bisects the logit value until at most k tokens lie in (lo, hi], keeping the invariant
  mass(l > lo) >= top_p > mass(l > hi) (so the cutoff lies in (lo, hi]), then orders just those
  k. Rows where 30 halvings leave more than k tokens (ties) fall back to the sort."""
  finite = jnp.isfinite(logits_NxV)
  lo = jnp.min(jnp.where(finite, logits_NxV, jnp.inf), axis=-1) - 1.0
  hi = jnp.max(logits_NxV, axis=-1)
  zero = jnp.zeros_like(hi)
  n = jnp.sum(finite, axis=-1)

  def body(c):
    i, lo, hi, n_lo, n_hi, m_hi = c
    mid = lo + (hi - lo) * 0.5
    above = logits_NxV > mid[:, None]
    m = jnp.sum(jnp.where(above, probs_NxV, 0.0), axis=-1)
    cnt = jnp.sum(above, axis=-1)
    big = m >= top_p
    return (
      i + 1,
      jnp.where(big, mid, lo),
      jnp.where(big, hi, mid),
      jnp.where(big, cnt, n_lo),
      jnp.where(big, n_hi, cnt),
      jnp.where(big, m_hi, m),
    )

  cond = lambda c: (c[0] < 30) & jnp.any(c[3] - c[4] > k)  # noqa: E731
  _, lo, hi, n_lo, n_hi, m_hi = jax.lax.while_loop(cond, body, (0, lo, hi, n, 0 * n, zero))
  inside = (logits_NxV > lo[:, None]) & (logits_NxV <= hi[:, None])
  vals, idx = jax.lax.top_k(jnp.where(inside, logits_NxV, -jnp.inf), k)
  c = _cutoff_among(vals, jnp.take_along_axis(probs_NxV, idx, -1), m_hi, top_p)
  return jax.lax.cond(
    jnp.all(n_lo - n_hi <= k), lambda: c, lambda: _cutoff_by_sort(logits_NxV, top_p)
  )


def top_p_cutoff(logits_NxV, top_p: float, k: int = TOP_P_CANDIDATES, probs_NxV=None) -> jax.Array:
  """The smallest logit of each row's top-p nucleus [N]: the tokens kept are those whose
  preceding mass in the descending order is below top_p (the top token always; ties of the
  cutoff value all). The same set as sorting the row, without sorting V entries: from the k
  largest tokens when they hold top_p of the mass (a peaked distribution), else by bisection
  on the logit value (a flat one). Sorting 64 x 151,936 logits took 2 s a decode step on the
  2-core CPU; the bisection about 0.25 s, the k largest 0.02 s. `probs_NxV`: the rows'
  softmax when the caller has it (the sampler does), so it is not computed twice."""
  k = min(k, logits_NxV.shape[-1])
  probs = jax.nn.softmax(logits_NxV, axis=-1) if probs_NxV is None else probs_NxV
  vals, idx = jax.lax.top_k(logits_NxV, k)
  top = jnp.take_along_axis(probs, idx, -1)
  fast = _cutoff_among(vals, top, jnp.zeros(vals.shape[0]), top_p)
  done = jnp.sum(top, axis=-1) >= top_p
  return jax.lax.cond(
    jnp.all(done), lambda: fast, lambda: _cutoff_by_bisection(logits_NxV, probs, top_p, k)
  )


def filter_logits(logits_NxV: jax.Array, top_k: int, top_p: float, probs_NxV=None) -> jax.Array:
  """Sets logits outside the top-k set and outside the top-p nucleus to -inf. `probs_NxV`:
  softmax(logits_NxV) when the caller has it (saves one exp over the vocabulary)."""
  if top_k:
    kth = jax.lax.top_k(logits_NxV, top_k)[0][:, -1:]
    logits_NxV = jnp.where(logits_NxV < kth, -jnp.inf, logits_NxV)
    if probs_NxV is not None:  # the nucleus is taken among the top k: renormalise
      probs_NxV = jnp.where(logits_NxV > -jnp.inf, probs_NxV, 0.0)
      probs_NxV = probs_NxV / jnp.sum(probs_NxV, axis=-1, keepdims=True)
  if top_p < 1.0:
    cutoff = top_p_cutoff(logits_NxV, top_p, probs_NxV=probs_NxV)
    logits_NxV = jnp.where(logits_NxV < cutoff[:, None], -jnp.inf, logits_NxV)
  return logits_NxV


def _first_above(cdf_NxB, target_N, weights_NxB):
  """Index of the first entry whose cumulative mass exceeds target; where rounding leaves none
  above it, the last entry with mass (never one of zero mass)."""
  above = cdf_NxB > target_N[:, None]
  last = weights_NxB.shape[-1] - 1 - jnp.argmax(weights_NxB[:, ::-1] > 0, axis=-1)
  return jnp.where(jnp.any(above, axis=-1), jnp.argmax(above, axis=-1), last)


def inverse_cdf_sample(probs_NxV, u_N, block: int = 128) -> jax.Array:
  """The token whose interval of the cumulative distribution holds u * total, found in two
  levels (the block, then the token in it) instead of a cumulative sum over V, which cost
  90 ms a decode step at V = 151,936 on the 2-core CPU. Zero-mass tokens are never drawn."""
  N, V = probs_NxV.shape
  pad = -V % block
  p = jnp.pad(probs_NxV, ((0, 0), (0, pad))).reshape(N, -1, block)
  block_mass = p.sum(-1)
  block_cdf = jnp.cumsum(block_mass, axis=-1)
  target = u_N * block_cdf[:, -1]
  b = _first_above(block_cdf, target, block_mass)
  inside = jnp.take_along_axis(p, b[:, None, None], axis=1)[:, 0]
  start = jnp.take_along_axis(block_cdf - block_mass, b[:, None], axis=1)[:, 0]
  t = _first_above(start[:, None] + jnp.cumsum(inside, axis=-1), target, inside)
  return b * block + t


def _choose(row_keys_N, logits_NxV, cfg: SamplingConfig):
  """Samples one token per row, row n with its own key `row_keys_N[n]`, by inverse-transform
  sampling: one uniform u per row, the token whose interval of the cumulative distribution
  holds u. (Gumbel-max would draw V uniforms per row; on CPU drawing them cost more than the
  rest of the sampling step.) Tokens filtered out have empty intervals and are never drawn."""
  if cfg.temperature == 0:
    tok = jnp.argmax(logits_NxV, axis=-1)
    logp_all = jax.nn.log_softmax(logits_NxV, axis=-1)
  else:
    scaled = logits_NxV / cfg.temperature
    logp_all = jax.nn.log_softmax(scaled, axis=-1)
    probs = jnp.exp(logp_all)
    if cfg.top_k or cfg.top_p < 1.0:  # unnormalised: the draw scales u by the total
      kept = jnp.isfinite(filter_logits(scaled, cfg.top_k, cfg.top_p, probs_NxV=probs))
      probs = jnp.where(kept, probs, 0.0)
    u_N = jax.vmap(lambda key: jax.random.uniform(key, ()))(row_keys_N)
    tok = inverse_cdf_sample(probs, u_N)
  logp = jnp.take_along_axis(logp_all, tok[:, None], axis=-1)[:, 0]
  return tok.astype(jnp.int32), logp


def generate(
  graphdef,
  params,
  prompt_BxP,
  prompt_mask_BxP,
  rng,
  *,
  cfg: SamplingConfig,
  group_size: int = 1,
  start_N=None,
) -> Samples:
  """Samples `group_size` continuations of each left-padded prompt.

  Args:
    graphdef: the model's NNX graph definition.
    params: the model parameters (pure dict).
    prompt_BxP: int32 left-padded prompt tokens.
    prompt_mask_BxP: bool, True on real prompt tokens.
    rng: a PRNG key.
    cfg: sampling settings.
    group_size: G, samples per prompt.
    start_N: int32 [B * G], the completion position of each row's first new token (its key
      schedule starts there; `generate_continuations` passes the forced prefix's length).
      None = 0.
  Returns:
    `Samples` with N = B * G rows, prompt b's samples in rows b*G .. b*G + G - 1.
  """
  B = prompt_BxP.shape[0]
  if start_N is None:
    start_N = jnp.zeros((B * group_size,), jnp.int32)
  jit_cfg = dataclasses.replace(cfg, streams=1)  # one compiled program whatever the streams
  streams = resolve_streams(cfg.streams, B, prompt_BxP, params)
  if streams == 1:
    return _generate(
      graphdef,
      params,
      prompt_BxP,
      prompt_mask_BxP,
      rng,
      0,
      start_N,
      cfg=jit_cfg,
      group_size=group_size,
    )
  b = B // streams
  call = lambda i: _generate(
    graphdef,
    params,
    prompt_BxP[i * b : (i + 1) * b],
    prompt_mask_BxP[i * b : (i + 1) * b],
    rng,
    i * b * group_size,
    start_N[i * b * group_size : (i + 1) * b * group_size],
    cfg=jit_cfg,
    group_size=group_size,
  )
  leaves = tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(params))
  key = (
    graphdef,
    jit_cfg,
    group_size,
    b,
    prompt_BxP.shape[1],
    str(prompt_BxP.dtype),
    jax.tree.structure(params),
    leaves,
  )
  with _COMPILED_LOCK:
    first = key not in _COMPILED
    _COMPILED.add(key)
  run = lambda i: jax.block_until_ready(call(i))
  with concurrent.futures.ThreadPoolExecutor(streams - 1) as pool:
    # On a program's first call, stream 0 compiles it in this thread before the others start.
    first_part = run(0) if first else None
    rest = pool.map(run, range(1, streams))
    parts = [first_part if first else run(0)] + list(rest)
  return Samples(*(jnp.concatenate(xs, axis=0) for xs in zip(*parts)))


_COMPILED: set = set()  # stream-call signatures already compiled (see `generate`)
_COMPILED_LOCK = threading.Lock()


def resolve_streams(requested: int, num_prompts: int, prompt_BxP, params) -> int:
  """The number of decode streams `generate` uses: `requested` (0 = auto), capped to a divisor
  of the prompt count, and 1 unless the backend is CPU and every input is on a single device."""
  arrays = [prompt_BxP] + jax.tree.leaves(params)
  devices = set()
  for x in arrays:
    if isinstance(x, jax.Array):
      devices |= x.sharding.device_set
  platform = next(iter(devices)).platform if devices else jax.default_backend()
  if platform != "cpu" or len(devices) > 1:
    return 1
  n = requested or (2 if (os.cpu_count() or 1) >= 2 else 1)
  n = min(n, num_prompts)
  while num_prompts % n:
    n -= 1
  return n


def _prefill(model, prompt_BxP, prompt_mask_BxP, G: int, slots: int):
  """Runs the prompts once: (the logits of each prompt's last position [B, V], cache of the
  first `slots` generated tokens, its key mask, the shared prefix or None, the cache slot of
  generated token 0). Only the last position goes through the LM head: the logits of every
  prompt position were [B, P, V] (W5's stream: 4 x 64 x 151,936 floats, 156 MB of scratch)."""
  B, P = prompt_BxP.shape
  positions_BxP = transformer.positions_from_mask(prompt_mask_BxP)
  if G > 1:
    # Prefill once per prompt. The G samples of a prompt attend to its keys and values as a
    # shared prefix, stored and read once per group; the cache holds their own slots.
    h_BxPxD, prompt_kv = model.hidden(prompt_BxP, positions_BxP, prompt_mask_BxP)
    prefix = [
      transformer.SharedPrefix(c.k_NxKxSxDh, c.v_NxKxSxDh, prompt_mask_BxP) for c in prompt_kv
    ]
    cache = transformer.init_cache(model.cfg, B * G, slots)
    return _last_logits(model, h_BxPxD), cache, jnp.zeros((B * G, slots), bool), prefix, 0
  # One sample per prompt: the prompt's keys open the row's own cache of P + slots slots.
  kv_mask_NxS = jnp.concatenate([prompt_mask_BxP, jnp.zeros((B, slots), bool)], axis=1)
  cache = transformer.init_cache(model.cfg, B, P + slots)
  h_BxPxD, cache = model.hidden(prompt_BxP, positions_BxP, kv_mask_NxS, cache, 0)
  return _last_logits(model, h_BxPxD), cache, kv_mask_NxS, None, P


def _last_logits(model, h_BxPxD):
  return model.logits(h_BxPxD[:, -1:])[:, 0]


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "group_size"))
def _generate(
  graphdef,
  params,
  prompt_BxP,
  prompt_mask_BxP,
  rng,
  row_offset,
  start_N,
  *,
  cfg: SamplingConfig,
  group_size: int,
) -> Samples:
  """`generate` for one stream: rows row_offset .. row_offset + B*G - 1 of the whole batch."""
  model = transformer.merge(graphdef, params)
  B, P = prompt_BxP.shape
  G, T = group_size, cfg.max_new_tokens
  N = B * G
  bounds = cfg.phase_bounds()  # decode phases [t0, t1)
  rep = lambda x: jnp.repeat(x, G, axis=0)
  logits_BxV, cache, kv_mask_NxS, prefix, base = _prefill(
    model, prompt_BxP, prompt_mask_BxP, G, bounds[1]
  )
  next_pos_N = rep(jnp.sum(prompt_mask_BxP, axis=1).astype(jnp.int32))
  logits_NxV = rep(logits_BxV)
  row_ids_N = row_offset + jnp.arange(N, dtype=jnp.int32)
  # Row n's token at completion position t draws from fold_in(fold_in(rng, n), t).
  row_keys_N = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, row_ids_N)

  def body(carry):
    t, logits_NxV, cache, kv_mask_NxS, done_N, tokens, logps, masks = carry
    step_keys_N = jax.vmap(jax.random.fold_in)(row_keys_N, start_N + t)
    tok_N, logp_N = _choose(step_keys_N, logits_NxV, cfg)
    live_N = ~done_N
    tok_N = jnp.where(live_N, tok_N, cfg.pad_id)
    tokens = tokens.at[:, t].set(tok_N)
    logps = logps.at[:, t].set(jnp.where(live_N, logp_N, 0.0))
    masks = masks.at[:, t].set(live_N)
    for stop in cfg.stop_ids:  # a handful at most (EOS, end of turn)
      done_N = done_N | (tok_N == stop)
    kv_mask_NxS = jax.lax.dynamic_update_slice_in_dim(
      kv_mask_NxS, live_N[:, None], base + t, axis=1
    )
    logits_Nx1xV, cache = model(
      tok_N[:, None], (next_pos_N + t)[:, None], kv_mask_NxS, cache, base + t, prefix
    )
    return (t + 1, logits_Nx1xV[:, 0], cache, kv_mask_NxS, done_N, tokens, logps, masks)

  carry = (
    jnp.int32(0),
    logits_NxV,
    cache,
    kv_mask_NxS,
    jnp.zeros((N,), bool),
    jnp.full((N, T), cfg.pad_id, jnp.int32),
    jnp.zeros((N, T), jnp.float32),
    jnp.zeros((N, T), bool),
  )
  for i, (t0, t1) in enumerate(zip(bounds[:-1], bounds[1:])):
    if i:  # grow the cache (and its mask) by the phase's t1 - t0 slots
      grow = lambda x, axis: jnp.pad(
        x, [(0, t1 - t0) if a == axis else (0, 0) for a in range(x.ndim)]
      )
      cache = [
        transformer.LayerCache(grow(c.k_NxKxSxDh, 2), grow(c.v_NxKxSxDh, 2)) for c in carry[2]
      ]
      carry = carry[:2] + (cache, grow(carry[3], 1)) + carry[4:]
    # Decode until t1, or until every sequence has emitted a stop token.
    carry = jax.lax.while_loop(lambda c, t1=t1: (c[0] < t1) & ~jnp.all(c[4]), body, carry)
  tokens, logps, masks = carry[5], carry[6], carry[7]
  return Samples(tokens, logps, masks, jnp.sum(masks, axis=1).astype(jnp.int32))


class Continuations(NamedTuple):
  """Output of `generate_continuations`: each row's forced prefix followed by its new tokens."""

  completion_NxT: jax.Array  # int32 [N, F + T]: forced tokens, then sampled tokens, then pad
  completion_mask_NxT: jax.Array  # bool, True on forced and sampled tokens
  loss_mask_NxT: jax.Array  # bool, True on the sampled tokens only
  logp_NxT: jax.Array  # float32 sampler log-probs of the sampled tokens, 0 elsewhere


def _pack(valid_NxL, *arrays_NxL, first: bool):
  """Moves each row's valid entries to the front (`first`) or the back, keeping their order."""
  order = jnp.argsort(~valid_NxL if first else valid_NxL, axis=1, stable=True)
  take = lambda x: jnp.take_along_axis(x, order, axis=1)
  return take(valid_NxL), *(take(x) for x in arrays_NxL)


def generate_continuations(
  graphdef, params, prompt_NxP, prompt_mask_NxP, forced_NxF, forced_mask_NxF, rng, *, cfg
) -> Continuations:
  """Continues each row after a forced prefix: `[prompt ; forced]` is prefilled as the row's
  context and `cfg.max_new_tokens` tokens are sampled after it. The forced tokens keep their
  RoPE positions (valid tokens are counted, as everywhere) and row n's key schedule starts at
  position F_n, so a row continues exactly as it would have had it sampled its forced tokens
  itself. Rows do not share prompts here (one row per context).

  Args:
    prompt_NxP, prompt_mask_NxP: left-padded prompts, one per row.
    forced_NxF, forced_mask_NxF: each row's forced tokens (valid ones first or anywhere: their
      order is kept, padding dropped).
    rng, cfg: as in `generate`.
  Returns:
    `Continuations` of width F + T, the forced tokens first and out of the loss mask.
  """
  forced_mask_NxF = jnp.asarray(forced_mask_NxF, bool)
  context = jnp.concatenate([jnp.asarray(prompt_NxP), jnp.asarray(forced_NxF)], axis=1)
  context_mask = jnp.concatenate([jnp.asarray(prompt_mask_NxP, bool), forced_mask_NxF], axis=1)
  context_mask, context = _pack(context_mask, context, first=False)  # left-padded again
  start_N = jnp.sum(forced_mask_NxF, axis=1).astype(jnp.int32)
  out = generate(graphdef, params, context, context_mask, rng, cfg=cfg, start_N=start_N)
  _, forced = _pack(forced_mask_NxF, jnp.asarray(forced_NxF), first=True)
  tokens = jnp.concatenate([forced, out.tokens_NxT], axis=1)
  valid = jnp.concatenate([jnp.sort(forced_mask_NxF, axis=1)[:, ::-1], out.mask_NxT], axis=1)
  sampled = jnp.concatenate([jnp.zeros_like(forced_mask_NxF), out.mask_NxT], axis=1)
  logp = jnp.concatenate([jnp.zeros(forced.shape, jnp.float32), out.logp_NxT], axis=1)
  valid, tokens, sampled, logp = _pack(valid, tokens, sampled, logp, first=True)
  return Continuations(jnp.where(valid, tokens, cfg.pad_id), valid, sampled, logp)
