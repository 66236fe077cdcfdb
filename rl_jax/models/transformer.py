"""A Flax NNX decoder-only transformer with a functional per-layer KV cache.

Llama/Qwen/Gemma-style blocks selected by `TransformerConfig`: RoPE, RMSNorm, grouped-query
attention, SwiGLU (or GeGLU) MLP, optional qkv bias (Qwen2), q/k norm (Qwen3), tied embeddings;
and Gemma 2/3's embedding scaling, (1 + w) norms, norms after attention and MLP, query scalar,
attention and final-logit soft-capping, sliding-window layers and a local RoPE base.

One code path serves training, prefill and decoding. The caller passes the tokens, their
RoPE positions, a key-validity mask over *cache slots* and, optionally, a cache and a write
index. Token `i` of the call sits in cache slot `write_index + i`; it attends to every slot
`j <= write_index + i` whose mask bit is set. Without a cache the call's own keys form the
cache (`write_index = 0`), which is the ordinary causal forward pass. A `SharedPrefix` adds keys
and values that groups of G consecutive rows attend to before their slots (a prompt shared by
its G samples: computed, stored and differentiated once per group).

Shape legend: N sequences, L tokens in this call, S cache slots, D model width,
H query heads, K kv heads, Dh head dim, F mlp width, V vocabulary.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx, struct

ATTENTION_IMPLS = ("einsum", "fused")  # see TransformerConfig.attention


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Architecture of the decoder. Frozen so it can key jit caches."""

  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  rope_theta: float = 10_000.0
  # Scaled RoPE of the global layers (`rope_frequencies`): ("llama3", factor, low_freq_factor,
  # high_freq_factor, original_max_position_embeddings), ("linear", factor), or None (plain).
  rope_scaling: tuple | None = None
  norm_eps: float = 1e-6
  tie_embeddings: bool = False
  embed_scale: bool = False  # Gemma multiplies embeddings by sqrt(d_model)
  qkv_bias: bool = False  # Qwen2
  qk_norm: bool = False  # Qwen3, Gemma 3
  activation: str = "silu"  # "silu" (SwiGLU) or "gelu" (GeGLU, tanh approximation)
  # Gemma 2/3: norms scale by (norm_offset + w), their weights stored as w (zero at init).
  norm_offset: float = 0.0
  sandwich_norms: bool = False  # Gemma 2/3: also normalise the attention and MLP outputs
  query_scalar: float | None = None  # queries scaled by query_scalar**-0.5 (None: head_dim)
  attn_softcap: float | None = None  # attention logits -> c * tanh(logits / c) (Gemma 2)
  final_softcap: float | None = None  # output logits -> c * tanh(logits / c) (Gemma 2)
  # Sliding-window attention: a token attends to the `sliding_window` cache slots up to and
  # including its own, on the layers marked in `sliding_layers` (all layers when empty).
  sliding_window: int | None = None
  sliding_layers: tuple[bool, ...] = ()
  rope_local_theta: float | None = None  # Gemma 3: the RoPE base of sliding layers (unscaled)
  dtype: str = "float32"  # activation dtype
  param_dtype: str = "float32"
  remat: bool = False  # recompute each block's activations in the backward pass (less memory)
  # "einsum": attention as two einsums (fastest on CPU). "fused": jax.nn.dot_product_attention
  # for every call with more than one query (training, log-prob and prefill passes), which takes
  # the backend's fused kernel where it has one (cuDNN flash attention on GPUs). Calls with a
  # `SharedPrefix` (a group's shared prompt) use their own two-block einsum attention either way.
  attention: str = "einsum"

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
        f"model.num_heads={self.num_heads} must be a multiple of "
        f"model.num_kv_heads={self.num_kv_heads}"
      )
    if self.head_dim % 2:
      raise ValueError(f"model.head_dim={self.head_dim} must be even for RoPE")
    if self.activation not in ("silu", "gelu"):
      raise ValueError(f"model.activation must be 'silu' or 'gelu', got {self.activation!r}")
    if self.attention not in ATTENTION_IMPLS:
      raise ValueError(f"model.attention must be 'einsum' or 'fused', got {self.attention!r}")
    if self.sliding_layers and len(self.sliding_layers) != self.num_layers:
      raise ValueError(
        f"model.sliding_layers has {len(self.sliding_layers)} entries for {self.num_layers} layers"
      )
    if self.sliding_window is not None and self.sliding_window < 1:
      raise ValueError(f"model.sliding_window must be >= 1, got {self.sliding_window}")
    if self.rope_scaling is not None and self.rope_scaling[0] not in ("llama3", "linear"):
      raise ValueError(f"model.rope_scaling kind must be llama3 or linear: {self.rope_scaling}")

  def window(self, layer: int) -> int | None:
    """The sliding window of layer `layer`, or None where it attends to every slot."""
    if self.sliding_window is None or (self.sliding_layers and not self.sliding_layers[layer]):
      return None
    return self.sliding_window

  def num_params(self) -> int:
    D, H, K, Dh, F, V = (
      self.d_model,
      self.num_heads,
      self.num_kv_heads,
      self.head_dim,
      self.mlp_dim,
      self.vocab_size,
    )
    attn = D * H * Dh + 2 * D * K * Dh + H * Dh * D
    if self.qkv_bias:
      attn += H * Dh + 2 * K * Dh
    if self.qk_norm:
      attn += 2 * Dh
    per_layer = attn + 3 * D * F + (4 if self.sandwich_norms else 2) * D
    emb = V * D * (1 if self.tie_embeddings else 2)
    return self.num_layers * per_layer + emb + D


PRESETS: dict[str, dict[str, Any]] = {
  # The embedded default: ~0.8 M parameters at a character vocabulary, trains on a CPU.
  "tiny": dict(d_model=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32, mlp_dim=384),
  # Smaller still, for unit tests.
  "test": dict(d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64),
  # The benchmark model of shared/benchmarks.md (W1-W3), vocabulary 512.
  "bench": dict(d_model=256, num_layers=4, num_heads=4, num_kv_heads=4, head_dim=64, mlp_dim=1024),
  # Qwen2.5-0.5B's shape (494,032,768 parameters at its 151,936-token vocabulary): the
  # 0.5 B-parameter model of the benchmarks' accelerator workloads.
  "0.5b": dict(
    d_model=896,
    num_layers=24,
    num_heads=14,
    num_kv_heads=2,
    head_dim=64,
    mlp_dim=4864,
    tie_embeddings=True,
    qkv_bias=True,
    rope_theta=1_000_000.0,
  ),
}


def preset(name: str, vocab_size: int, **overrides) -> TransformerConfig:
  """A `TransformerConfig` from a named preset with optional field overrides."""
  if name not in PRESETS:
    raise ValueError(f"model.preset={name!r} is unknown; choose one of {sorted(PRESETS)}")
  return TransformerConfig(vocab_size=vocab_size, **{**PRESETS[name], **overrides})


class LayerCache(NamedTuple):
  """Keys and values of one layer, heads before slots: the attention dots read them with
  (N, K) as batch dimensions in their stored layout, so a decode step never transposes
  (copies) the whole cache."""

  k_NxKxSxDh: jax.Array
  v_NxKxSxDh: jax.Array


def init_cache(cfg: TransformerConfig, batch: int, slots: int) -> list[LayerCache]:
  """Zeroed per-layer KV cache with `slots` positions."""
  shape = (batch, cfg.num_kv_heads, slots, cfg.head_dim)
  dtype = jnp.dtype(cfg.dtype)
  return [
    LayerCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(cfg.num_layers)
  ]


class RopeTables(NamedTuple):
  """cos / sin of the rotary angles, `[N, L, 1, Dh / 2]` float32, shared by the q and k of every
  layer of a forward call."""

  cos: jax.Array
  sin: jax.Array


def rope_frequencies(head_dim: int, theta: float, scaling=None) -> jax.Array:
  """The RoPE angular frequencies [head_dim / 2]: theta^(-2i / head_dim). `scaling`:
  ("linear", factor) divides every frequency by `factor` (position interpolation, Gemma 3's
  global layers); ("llama3", factor, low_freq_factor, high_freq_factor, original_max_position)
  divides wavelengths longer than original / low_freq_factor by `factor`, keeps those shorter
  than original / high_freq_factor, and interpolates smoothly between (arXiv:2407.21783; the
  rule transformers applies for rope_type "llama3")."""
  half = head_dim // 2
  freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  if scaling is None:
    return freq
  if scaling[0] == "linear":
    return freq / scaling[1]
  factor, low, high, original = scaling[1:]
  wavelen = 2 * jnp.pi / freq
  scaled = jnp.where(wavelen > original / low, freq / factor, freq)
  smooth = (original / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= original / high) & (wavelen <= original / low)
  return jnp.where(medium, smoothed, scaled)


def rope_tables(
  positions_NxL: jax.Array, head_dim: int, theta: float, num_positions: int, scaling=None
) -> RopeTables:
  """The rotary tables of `positions_NxL` (each in [0, num_positions)), looked up in a table of
  all `num_positions` angles. XLA:CPU fuses elementwise producers into every consumer (an
  `optimization_barrier` does not survive its pipeline), so tables computed per position had
  their cos / sin, and the positions' cumulative sum, recomputed for every head, half and
  layer, forward and backward; the per-position table is a constant of the shapes, and a
  lookup is cheap to repeat (W1 update 11% and reference pass 15% shorter). Same values."""
  freq = rope_frequencies(head_dim, theta, scaling)
  angle_SxF = jnp.arange(num_positions, dtype=jnp.float32)[:, None] * freq
  idx_NxL = jnp.clip(positions_NxL, 0, num_positions - 1)
  return RopeTables(
    jnp.cos(angle_SxF)[idx_NxL][:, :, None, :], jnp.sin(angle_SxF)[idx_NxL][:, :, None, :]
  )


def rope(x_NxLxHxDh: jax.Array, tables: RopeTables) -> jax.Array:
  """Rotary position embedding, rotate-half convention (as Llama in transformers)."""
  half = x_NxLxHxDh.shape[-1] // 2
  x = x_NxLxHxDh.astype(jnp.float32)
  x1, x2 = x[..., :half], x[..., half:]
  cos, sin = tables
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_NxLxHxDh.dtype)


class SharedPrefix(NamedTuple):
  """Keys and values of one layer for a prefix shared by groups of G consecutive rows (a
  prompt and its G samples): `[B, K, P, Dh]` with B = N / G, and the prefix's key validity
  `[B, P]`. Every row of group b attends to group b's prefix before its own slots, so the
  prefix is stored, read and differentiated once per group instead of once per row."""

  k_BxKxPxDh: jax.Array
  v_BxKxPxDh: jax.Array
  mask_BxP: jax.Array


def _softcap(logits, cap: float | None):
  """Gemma 2's soft-capping: cap * tanh(logits / cap), or the logits unchanged."""
  return logits if cap is None else cap * jnp.tanh(logits / cap)


def _prefix_attention(
  q_NxLxHxDh,
  k_NxKxSxDh,
  v_NxKxSxDh,
  allowed_NxLxS,
  prefix: SharedPrefix,
  scale,
  q_slot_L,
  window=None,
  softcap=None,
):
  """Softmax attention over `[shared prefix ; own slots]` without materialising the per-row
  prefix: the two logit blocks share one max and one normaliser (the same softmax as over the
  concatenated keys, up to float rounding). Returns `[N, L, H * Dh]`."""
  N, L, H, Dh = q_NxLxHxDh.shape
  B, K, P, _ = prefix.k_BxKxPxDh.shape
  G, g = N // B, H // K
  q = q_NxLxHxDh.reshape(B, G, L, K, g, Dh)
  # The prefix block: per (group, kv head) one [G * L * g, Dh] x [Dh, P] product.
  lp = jnp.einsum("bjlkhd,bkpd->bjkhlp", q, prefix.k_BxKxPxDh).astype(jnp.float32) * scale
  allowed_BxLxP = jnp.broadcast_to(prefix.mask_BxP[:, None, :], (B, L, P))
  if window is not None:  # prefix slot p sits at p - P relative to the call's slot 0
    allowed_BxLxP = allowed_BxLxP & (jnp.arange(P)[None, :] - P > q_slot_L[:, None] - window)
  lp = jnp.where(allowed_BxLxP[:, None, None, None], _softcap(lp, softcap), -1e30)
  ls = jnp.einsum("nlkhd,nksd->nkhls", q.reshape(N, L, K, g, Dh), k_NxKxSxDh)
  ls = _softcap(ls.astype(jnp.float32) * scale, softcap)
  ls = jnp.where(allowed_NxLxS[:, None, None], ls, -1e30)
  ls = ls.reshape(B, G, K, g, L, -1)
  m = jax.lax.stop_gradient(jnp.maximum(lp.max(-1, keepdims=True), ls.max(-1, keepdims=True)))
  ep, es = jnp.exp(lp - m), jnp.exp(ls - m)
  inv = 1.0 / (ep.sum(-1, keepdims=True) + es.sum(-1, keepdims=True))
  dt = v_NxKxSxDh.dtype
  out_p = jnp.einsum("bjkhlp,bkpd->bjlkhd", (ep * inv).astype(dt), prefix.v_BxKxPxDh)
  out_s = jnp.einsum("nkhls,nksd->nlkhd", (es * inv).astype(dt).reshape(N, K, g, L, -1), v_NxKxSxDh)
  return out_p.reshape(N, L, H * Dh) + out_s.reshape(N, L, H * Dh)


@struct.dataclass
class LoraKernel:
  """A frozen kernel W [in, out] with LoRA factors A [in, r] and B [r, out], standing where the
  kernel's value stands in a parameter tree (`lora.attach`): the projection computes
  x W + scale (x A) B, never W + scale A B. The merged kernel and, in the backward pass, its
  full [in, out] weight gradient x^T dy (a product as large as the forward's) never exist."""

  w: jax.Array
  a: jax.Array
  b: jax.Array
  scale: float = struct.field(pytree_node=False)


def project(x_MxD: jax.Array, kernels: list) -> jax.Array:
  """x @ [K_1 | K_2 | ...] in x's dtype, for kernels each an array or a `LoraKernel`: the frozen
  kernels as one product, the adapters as (x [A_1 | A_2 ..]) times their B's laid out block
  by block (zero blocks under plain kernels)."""
  dt = x_MxD.dtype
  ws = [k.w if isinstance(k, LoraKernel) else k for k in kernels]
  w = ws[0] if len(ws) == 1 else jnp.concatenate(ws, axis=1)
  y = x_MxD @ w.astype(dt)
  if not any(isinstance(k, LoraKernel) for k in kernels):
    return y
  total, start, a_cols, b_rows = w.shape[1], 0, [], []
  for k, wk in zip(kernels, ws):
    if isinstance(k, LoraKernel):
      a_cols.append(k.a)
      pad = ((0, 0), (start, total - start - wk.shape[1]))
      b_rows.append(jnp.pad(k.scale * k.b, pad))
    start += wk.shape[1]
  xa = x_MxD @ jnp.concatenate(a_cols, axis=1).astype(dt)
  return y + xa @ jnp.concatenate(b_rows, axis=0).astype(dt)


def dense(layer, x_NxLxD):
  """Applies a linear layer to the tokens as one [N*L, D] matrix. XLA:CPU lowers the weight
  gradient of a 3-D activation (two contracting dims) with full transposes of the activation
  and its gradient; the 2-D form has none (the benchmark MLP's backward runs ~1.9x faster)."""
  *lead, D = x_NxLxD.shape
  return layer(x_NxLxD.reshape(-1, D)).reshape(*lead, -1)


class RMSNorm(nnx.Module):
  """x / rms(x) * (offset + scale), computed in float32 and returned in x's dtype (so bf16
  activations stay bf16 after a norm whose scale is float32). offset 0: Llama / Qwen (scale
  starts at 1); offset 1: Gemma (scale stored as w, starting at 0)."""

  def __init__(self, dim: int, cfg: TransformerConfig):
    self.eps, self.offset = cfg.norm_eps, cfg.norm_offset
    self.scale = nnx.Param(jnp.full((dim,), 1.0 - cfg.norm_offset, jnp.dtype(cfg.param_dtype)))

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * (self.offset + self.scale[...].astype(jnp.float32))).astype(x.dtype)


class Attention(nnx.Module):
  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs, window: int | None = None):
    self.cfg = cfg
    self.window = window  # sliding window of this layer (None: all earlier slots)
    D, H, K, Dh = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    kw = dict(
      use_bias=cfg.qkv_bias,
      dtype=jnp.dtype(cfg.dtype),
      param_dtype=jnp.dtype(cfg.param_dtype),
      rngs=rngs,
    )
    self.q_proj = nnx.Linear(D, H * Dh, **kw)
    self.k_proj = nnx.Linear(D, K * Dh, **kw)
    self.v_proj = nnx.Linear(D, K * Dh, **kw)
    self.o_proj = nnx.Linear(
      H * Dh,
      D,
      use_bias=False,
      dtype=jnp.dtype(cfg.dtype),
      param_dtype=jnp.dtype(cfg.param_dtype),
      rngs=rngs,
    )
    if cfg.qk_norm:
      self.q_norm = RMSNorm(Dh, cfg)
      self.k_norm = RMSNorm(Dh, cfg)

  def __call__(
    self,
    x_NxLxD,
    rope_NxL: RopeTables,
    kv_mask_NxS,
    cache: LayerCache | None,
    write_index,
    prefix: SharedPrefix | None = None,
  ):
    cfg = self.cfg
    N, L, _ = x_NxLxD.shape
    H, K, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    # One [D, (H + 2K) Dh] matmul instead of three: fewer, larger matmuls (in a decode step the
    # concatenation of the weights is loop-invariant and hoisted out of the loop by XLA).
    projs = (self.q_proj, self.k_proj, self.v_proj)
    dt = x_NxLxD.dtype
    qkv = project(x_NxLxD.reshape(N * L, -1), [p.kernel.get_value() for p in projs])
    if cfg.qkv_bias:
      qkv = qkv + jnp.concatenate([p.bias[...] for p in projs]).astype(dt)
    q, k, v = jnp.split(qkv, [H * Dh, (H + K) * Dh], axis=1)
    q, k, v = q.reshape(N, L, H, Dh), k.reshape(N, L, K, Dh), v.reshape(N, L, K, Dh)
    if cfg.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    q = rope(q, rope_NxL)
    k = rope(k, rope_NxL).transpose(0, 2, 1, 3)  # [N, K, L, Dh]
    v = v.transpose(0, 2, 1, 3)
    if cache is None:  # plain forward pass: this call's keys are all the keys
      k_all, v_all = k, v
    else:  # write this call's keys/values into their slots (in place inside a jitted loop)
      k_all = jax.lax.dynamic_update_slice_in_dim(
        cache.k_NxKxSxDh, k.astype(cache.k_NxKxSxDh.dtype), write_index, axis=2
      )
      v_all = jax.lax.dynamic_update_slice_in_dim(
        cache.v_NxKxSxDh, v.astype(cache.v_NxKxSxDh.dtype), write_index, axis=2
      )
    S = k_all.shape[2]
    q_slot_L = write_index + jnp.arange(L)
    causal_LxS = jnp.arange(S)[None, :] <= q_slot_L[:, None]
    if self.window is not None:
      causal_LxS = causal_LxS & (jnp.arange(S)[None, :] > q_slot_L[:, None] - self.window)
    allowed_NxLxS = causal_LxS[None] & kv_mask_NxS[:, None, :]
    scale = (cfg.query_scalar or Dh) ** -0.5
    if prefix is not None:
      out = _prefix_attention(
        q, k_all, v_all, allowed_NxLxS, prefix, scale, q_slot_L, self.window, cfg.attn_softcap
      )
      return self._out(out), LayerCache(k_all, v_all)
    if cfg.attention == "fused" and L > 1 and cfg.attn_softcap is None:
      out = jax.nn.dot_product_attention(
        q,
        k_all.transpose(0, 2, 1, 3),
        v_all.transpose(0, 2, 1, 3),
        mask=allowed_NxLxS[:, None],
        scale=scale,
      ).reshape(N, L, H * Dh)
      return self._out(out), LayerCache(k_all, v_all)
    # Grouped-query attention: H query heads share K kv heads in groups of H // K.
    qg = q.reshape(N, L, K, H // K, Dh)
    logits = jnp.einsum("nlkgd,nksd->nkgls", qg, k_all).astype(jnp.float32) * scale
    logits = _softcap(logits, cfg.attn_softcap)
    # A finite fill keeps fully masked rows (left padding) finite; their output is unused.
    logits = jnp.where(allowed_NxLxS[:, None, None], logits, -1e30)
    probs = jax.nn.softmax(logits, axis=-1).astype(v_all.dtype)
    out = jnp.einsum("nkgls,nksd->nlkgd", probs, v_all).reshape(N, L, H * Dh)
    return self._out(out), LayerCache(k_all, v_all)

  def _out(self, out_NxLxHDh):
    N, L, _ = out_NxLxHDh.shape
    y = project(out_NxLxHDh.reshape(N * L, -1), [self.o_proj.kernel.get_value()])
    return y.reshape(N, L, -1)


class MLP(nnx.Module):
  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    kw = dict(
      use_bias=False, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs
    )
    self.gate_proj = nnx.Linear(cfg.d_model, cfg.mlp_dim, **kw)
    self.up_proj = nnx.Linear(cfg.d_model, cfg.mlp_dim, **kw)
    self.down_proj = nnx.Linear(cfg.mlp_dim, cfg.d_model, **kw)
    self.act = jax.nn.silu if cfg.activation == "silu" else jax.nn.gelu
    self.F = cfg.mlp_dim

  def __call__(self, x):
    # gate and up as one [D, 2F] matmul (as the q/k/v projections above).
    kernels = [self.gate_proj.kernel.get_value(), self.up_proj.kernel.get_value()]
    gate_up = project(x.reshape(-1, x.shape[-1]), kernels)
    h = self.act(gate_up[:, : self.F]) * gate_up[:, self.F :]
    return project(h, [self.down_proj.kernel.get_value()]).reshape(*x.shape[:-1], -1)


class Block(nnx.Module):
  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs, window: int | None = None):
    self.attn_norm = RMSNorm(cfg.d_model, cfg)
    self.attn = Attention(cfg, rngs=rngs, window=window)
    self.mlp_norm = RMSNorm(cfg.d_model, cfg)
    self.mlp = MLP(cfg, rngs=rngs)
    if cfg.sandwich_norms:
      self.attn_post_norm = RMSNorm(cfg.d_model, cfg)
      self.mlp_post_norm = RMSNorm(cfg.d_model, cfg)
    self.sandwich = cfg.sandwich_norms

  def __call__(self, x, rope_tables_NxL, kv_mask, cache, write_index, prefix=None):
    h, cache = self.attn(self.attn_norm(x), rope_tables_NxL, kv_mask, cache, write_index, prefix)
    x = x + (self.attn_post_norm(h) if self.sandwich else h)
    h = self.mlp(self.mlp_norm(x))
    return x + (self.mlp_post_norm(h) if self.sandwich else h), cache


def _block(layer, x, rope_tables_NxL, kv_mask, cache, write_index, prefix):
  return layer(x, rope_tables_NxL, kv_mask, cache, write_index, prefix)


def _recomputed_in_backward(f):
  """`f(state, x, *rest)` with the VJP of `jax.checkpoint(f)`: only its inputs are saved and
  its activations are recomputed for its gradient, but from `x + 0 * c`, c an element of the
  output's cotangent. That data dependency makes the recomputation wait for the cotangent, so
  one block's activations exist at a time. `jax.checkpoint` orders it with an optimization
  barrier, which XLA:CPU removes before scheduling: its scheduler then ran the recomputation of
  every block right after the block's forward and held all four blocks' activations (W5's
  update: 2.2 GiB of scratch). x + 0 * c is x (a non-finite c makes the gradient non-finite
  either way, as it would be)."""

  @jax.custom_vjp
  def g(*args):
    return f(*args)

  def fwd(*args):
    return f(*args), args

  def bwd(args, ct):
    state, x, *rest = args
    c = jax.tree.leaves(ct)[0].ravel()[0]
    x = x + (c * 0).astype(x.dtype)
    return jax.vjp(f, state, x, *rest)[1](ct)

  g.defvjp(fwd, bwd)
  return g


def _remat_block(layer, x, rope_tables_NxL, kv_mask, cache, write_index, prefix):
  """`_block` with its activations recomputed for its gradient (`_recomputed_in_backward`);
  cache-free calls only. Saves only the block's inputs."""
  graphdef, state = nnx.split(layer)
  call = lambda state, *args: _block(nnx.merge(graphdef, state), *args[:3], None, *args[3:])
  return _recomputed_in_backward(call)(state, x, rope_tables_NxL, kv_mask, write_index, prefix)


class Transformer(nnx.Module):
  """Decoder-only language model.

  `__call__(tokens_NxL, positions_NxL, kv_mask_NxS, cache=None, write_index=0)` returns
  `(logits_NxLxV float32, new_cache)`. With `cache=None`, `S == L` and the call is a plain
  causal forward pass over valid keys.
  """

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = nnx.Embed(
      cfg.vocab_size,
      cfg.d_model,
      dtype=jnp.dtype(cfg.dtype),
      param_dtype=jnp.dtype(cfg.param_dtype),
      embedding_init=nnx.initializers.normal(1.0 if cfg.embed_scale else 0.02),
      rngs=rngs,
    )
    self.layers = nnx.List(
      [Block(cfg, rngs=rngs, window=cfg.window(i)) for i in range(cfg.num_layers)]
    )
    self.final_norm = RMSNorm(cfg.d_model, cfg)
    if not cfg.tie_embeddings:
      self.lm_head = nnx.Linear(
        cfg.d_model,
        cfg.vocab_size,
        use_bias=False,
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
        rngs=rngs,
      )

  def hidden(
    self,
    tokens_NxL,
    positions_NxL,
    kv_mask_NxS,
    cache=None,
    write_index=0,
    prefix: list[SharedPrefix] | None = None,
  ):
    """Final-norm hidden states `[N, L, D]` and the updated cache. `prefix`: per layer, the
    keys and values of a prefix shared by groups of rows, attended before the call's slots
    (`SharedPrefix`); the returned cache then holds the call's own slots only.

    Positions must lie below the number of key slots S (plus the prefix length), as they do
    when they count valid tokens (`positions_from_mask`): the RoPE table has that many rows."""
    cfg = self.cfg
    x = self.embed(tokens_NxL)
    if cfg.embed_scale:
      x = x * jnp.asarray(cfg.d_model**0.5, x.dtype)
    # Rematerialisation serves the backward pass, which only cache-free calls have (training and
    # log-prob passes); a decode step (with a cache, inside the sampler's while_loop) runs plain.
    call = _remat_block if cfg.remat and cache is None else _block
    if cache is None:
      cache = [None] * cfg.num_layers
    new_cache = []
    # A token's position counts the valid keys before it: below the call's slots (and prefix).
    num_positions = kv_mask_NxS.shape[1] + (prefix[0].mask_BxP.shape[1] if prefix else 0)
    tables = rope_tables(
      positions_NxL, cfg.head_dim, cfg.rope_theta, num_positions, cfg.rope_scaling
    )
    local = tables  # Gemma 3's sliding layers rotate with their own, unscaled base
    if cfg.rope_local_theta is not None:
      local = rope_tables(positions_NxL, cfg.head_dim, cfg.rope_local_theta, num_positions)
    prefix = prefix or [None] * cfg.num_layers
    for i, (layer, layer_cache, layer_prefix) in enumerate(zip(self.layers, cache, prefix)):
      t = local if cfg.window(i) is not None else tables
      x, layer_cache = call(layer, x, t, kv_mask_NxS, layer_cache, write_index, layer_prefix)
      new_cache.append(layer_cache)
    return self.final_norm(x), new_cache

  def logits(self, h_NxLxD):
    if self.cfg.tie_embeddings:
      # h @ E^T as one product contracting E's model dimension: written with a transpose
      # (flax's `Embed.attend`), XLA kept a transposed [D, V] copy of E in the program's scratch
      # memory (545 MB at Qwen's vocabulary), hoisted out of the chunked log-softmax's loop.
      E = self.embed.embedding[...].astype(h_NxLxD.dtype)
      out = dense(lambda x: jax.lax.dot_general(x, E, (((1,), (1,)), ((), ()))), h_NxLxD)
    else:
      out = dense(self.lm_head, h_NxLxD)
    return _softcap(out.astype(jnp.float32), self.cfg.final_softcap)

  def __call__(
    self, tokens_NxL, positions_NxL, kv_mask_NxS, cache=None, write_index=0, prefix=None
  ):
    h, cache = self.hidden(tokens_NxL, positions_NxL, kv_mask_NxS, cache, write_index, prefix)
    return self.logits(h), cache


def positions_from_mask(mask_NxL: jax.Array) -> jax.Array:
  """RoPE positions for a left-padded batch: 0 at each row's first valid token."""
  return jnp.maximum(jnp.cumsum(mask_NxL.astype(jnp.int32), axis=-1) - 1, 0)


def init_model(cfg: TransformerConfig, seed: int | jax.Array = 0):
  """Builds the model and splits it into (graphdef, params) — params a pure nested dict.

  Jitted code takes `params` as an argument and calls `nnx.merge(graphdef, params)`; this
  keeps every device function pure and lets partition rules and checkpoints see plain arrays.
  """
  model = Transformer(cfg, rngs=nnx.Rngs(seed))
  graphdef, state = nnx.split(model, nnx.Param)
  return graphdef, nnx.to_pure_dict(state)


def abstract_model(cfg: TransformerConfig):
  """(graphdef, params as ShapeDtypeStructs) without allocating weights."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))), nnx.Param)
  return graphdef, nnx.to_pure_dict(state)


def merge(graphdef, params) -> Transformer:
  return nnx.merge(graphdef, params)
