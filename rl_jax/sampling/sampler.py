"""Jitted prefill + decode with a per-layer KV cache; G samples share their prompt's prefill.

`generate` runs the prompt batch through the model once (prefill), repeats each prompt's cache
G times, and decodes all B*G continuations in `lax.while_loop`s that write the cache in place
and stop as soon as every sequence has emitted EOS (or at `max_new_tokens`). The decode runs
in a few phases whose cache grows to what the phase needs (`SamplingConfig.cache_phases`), as
reading the cache bounds a decode step. Nothing returns to the host until the end. Shapes are
fixed by (B, P, G, T), so a run compiles once.

Log-probs returned are those of the sampled tokens under softmax(logits / temperature) before
top-k / top-p truncation: at temperature 1 with no truncation they are exactly the policy's
log-probs, which the trainer can reuse as old log-probs.
"""

from __future__ import annotations

import dataclasses
import functools
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
  eos_id: int = 2
  pad_id: int = 0
  # The decode loop runs in up to this many phases (of at least MIN_PHASE tokens), each with a
  # KV cache only as long as that phase needs, padded once between phases. A decode step is
  # bound by reading the cache, so steps then read about P + T/2 slots instead of P + T; each
  # phase compiles its own loop body. 1 = a single phase.
  cache_phases: int = 4

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

  def phase_bounds(self) -> list[int]:
    """[0, t1, t2, ..., T]: decode phase i produces tokens bounds[i] .. bounds[i+1] - 1."""
    T = self.max_new_tokens
    step = max(-(-T // self.cache_phases), MIN_PHASE)
    return list(range(0, T, step)) + [T]


class Samples(NamedTuple):
  """Output of `generate` for N = B*G sequences (row b*G + g is sample g of prompt b)."""
  tokens_NxT: jax.Array  # int32, pad after EOS
  logp_NxT: jax.Array  # float32 log-prob of each sampled token, 0 where mask is 0
  mask_NxT: jax.Array  # bool, True on generated tokens up to and including EOS
  lengths_N: jax.Array  # int32 number of generated tokens (EOS included)


def filter_logits(logits_NxV: jax.Array, top_k: int, top_p: float) -> jax.Array:
  """Sets logits outside the top-k set and outside the top-p nucleus to -inf."""
  if top_k:
    kth = jax.lax.top_k(logits_NxV, top_k)[0][:, -1:]
    logits_NxV = jnp.where(logits_NxV < kth, -jnp.inf, logits_NxV)
  if top_p < 1.0:
    sorted_desc = -jnp.sort(-logits_NxV, axis=-1)
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    # Keep tokens whose preceding cumulative mass is < top_p (the top token always stays).
    before = jnp.cumsum(probs, axis=-1) - probs
    cutoff = jnp.min(jnp.where(before < top_p, sorted_desc, jnp.inf), axis=-1, keepdims=True)
    logits_NxV = jnp.where(logits_NxV < cutoff, -jnp.inf, logits_NxV)
  return logits_NxV


def _choose(rng, logits_NxV, cfg: SamplingConfig):
  if cfg.temperature == 0:
    tok = jnp.argmax(logits_NxV, axis=-1)
    logp_all = jax.nn.log_softmax(logits_NxV, axis=-1)
  else:
    scaled = logits_NxV / cfg.temperature
    logp_all = jax.nn.log_softmax(scaled, axis=-1)
    tok = jax.random.categorical(rng, filter_logits(scaled, cfg.top_k, cfg.top_p), axis=-1)
  logp = jnp.take_along_axis(logp_all, tok[:, None], axis=-1)[:, 0]
  return tok.astype(jnp.int32), logp


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "group_size"))
def generate(graphdef, params, prompt_BxP, prompt_mask_BxP, rng, *, cfg: SamplingConfig,
             group_size: int = 1) -> Samples:
  """Samples `group_size` continuations of each left-padded prompt.

  Args:
    graphdef: the model's NNX graph definition (static).
    params: the model parameters (pure dict).
    prompt_BxP: int32 left-padded prompt tokens.
    prompt_mask_BxP: bool, True on real prompt tokens.
    rng: a PRNG key.
    cfg: sampling settings (static).
    group_size: G, samples per prompt.
  Returns:
    `Samples` with N = B * G rows, prompt b's samples in rows b*G .. b*G + G - 1.
  """
  model = transformer.merge(graphdef, params)
  B, P = prompt_BxP.shape
  G, T = group_size, cfg.max_new_tokens
  N = B * G
  # Decode phases [t0, t1): the cache holds P + t1 slots during a phase.
  bounds = cfg.phase_bounds()
  S0 = P + bounds[1]

  # Prefill once per prompt.
  kv_mask_BxS = jnp.concatenate([prompt_mask_BxP, jnp.zeros((B, S0 - P), bool)], axis=1)
  positions_BxP = transformer.positions_from_mask(prompt_mask_BxP)
  cache = transformer.init_cache(model.cfg, B, S0)
  logits_BxPxV, cache = model(prompt_BxP, positions_BxP, kv_mask_BxS, cache, 0)

  # Share the prompt's cache with its G samples.
  rep = lambda x: jnp.repeat(x, G, axis=0)
  cache = jax.tree.map(rep, cache)
  kv_mask_NxS = rep(kv_mask_BxS)
  next_pos_N = rep(jnp.sum(prompt_mask_BxP, axis=1).astype(jnp.int32))
  logits_NxV = rep(logits_BxPxV[:, -1])

  def body(carry):
    t, rng, logits_NxV, cache, kv_mask_NxS, done_N, tokens, logps, masks = carry
    rng, sub = jax.random.split(rng)
    tok_N, logp_N = _choose(sub, logits_NxV, cfg)
    live_N = ~done_N
    tok_N = jnp.where(live_N, tok_N, cfg.pad_id)
    tokens = tokens.at[:, t].set(tok_N)
    logps = logps.at[:, t].set(jnp.where(live_N, logp_N, 0.0))
    masks = masks.at[:, t].set(live_N)
    done_N = done_N | (tok_N == cfg.eos_id)
    kv_mask_NxS = jax.lax.dynamic_update_slice_in_dim(kv_mask_NxS, live_N[:, None], P + t, axis=1)
    logits_Nx1xV, cache = model(tok_N[:, None], (next_pos_N + t)[:, None], kv_mask_NxS, cache,
                                P + t)
    return (t + 1, rng, logits_Nx1xV[:, 0], cache, kv_mask_NxS, done_N, tokens, logps, masks)

  carry = (jnp.int32(0), rng, logits_NxV, cache, kv_mask_NxS, jnp.zeros((N,), bool),
           jnp.full((N, T), cfg.pad_id, jnp.int32), jnp.zeros((N, T), jnp.float32),
           jnp.zeros((N, T), bool))
  for i, (t0, t1) in enumerate(zip(bounds[:-1], bounds[1:])):
    if i:  # grow the cache (and its mask) to P + t1 slots for this phase
      grow = lambda x, axis: jnp.pad(x, [(0, t1 - t0) if a == axis else (0, 0)
                                         for a in range(x.ndim)])
      cache = [transformer.LayerCache(grow(c.k_NxKxSxDh, 2), grow(c.v_NxKxSxDh, 2))
               for c in carry[3]]
      carry = carry[:3] + (cache, grow(carry[4], 1)) + carry[5:]
    # Decode until t1, or until every sequence has emitted EOS.
    carry = jax.lax.while_loop(lambda c, t1=t1: (c[0] < t1) & ~jnp.all(c[5]), body, carry)
  tokens, logps, masks = carry[6], carry[7], carry[8]
  return Samples(tokens, logps, masks, jnp.sum(masks, axis=1).astype(jnp.int32))
