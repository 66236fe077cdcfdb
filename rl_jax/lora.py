"""LoRA: low-rank adapters trained on top of frozen base weights (arXiv:2106.09685).

For a target kernel W [in, out] the adapted kernel is W + (alpha / rank) * A @ B with A [in,
rank] and B [rank, out]; B starts at 0, so the adapted model starts as the base model. Only the
adapters are trained and checkpointed (with their optimizer state); the base weights are the
frozen reference policy too, so the KL reference costs no memory of its own. Functional: the
learner's loss applies the adapters unmerged (`attach`: x W + s (x A) B, so neither the merged
kernels nor their full weight gradients exist); the sampler takes `merge`d weights once a step,
and `merge` is also the export (a plain set of weights).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from rl_jax.models.transformer import LoraKernel
from rl_jax.parallel import path_str

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  rank: int
  alpha: float = 32.0
  targets: tuple[str, ...] = DEFAULT_TARGETS

  def __post_init__(self):
    if self.rank < 1:
      raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
    unknown = set(self.targets) - set(DEFAULT_TARGETS)
    if unknown or not self.targets:
      raise ValueError(f"lora.targets {sorted(unknown)} unknown; choose from {DEFAULT_TARGETS}")

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def _targets(params, cfg: LoraConfig) -> dict[str, jax.Array]:
  """Kernel path (without "/kernel") -> kernel, for every targeted projection."""
  out = {}
  for key_path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    path = path_str(key_path)
    parts = path.split("/")
    if parts[-1] == "kernel" and len(parts) >= 2 and parts[-2] in cfg.targets:
      out["/".join(parts[:-1])] = x
  return out


def init_adapters(params, cfg: LoraConfig, seed: int = 0) -> dict:
  """{projection path: {"a": [in, rank], "b": [rank, out] zeros}} for the targeted kernels of
  `params` (arrays or ShapeDtypeStructs); A is uniform in +-1/sqrt(in) (as PEFT's default)."""
  adapters = {}
  key = jax.random.key(seed)
  for i, (name, w) in enumerate(sorted(_targets(params, cfg).items())):
    d_in, d_out = w.shape
    bound = d_in**-0.5
    a = jax.random.uniform(jax.random.fold_in(key, i), (d_in, cfg.rank), jnp.float32, -bound, bound)
    adapters[name] = {"a": a, "b": jnp.zeros((cfg.rank, d_out), jnp.float32)}
  if not adapters:
    raise ValueError(f"lora.targets {cfg.targets} match no kernel of the model")
  return adapters


def _map_targets(params, adapters, fn):
  """`params` with each targeted kernel `w` (its layer has adapters `ad`) replaced by
  `fn(w, ad)`."""

  def adapt(key_path, w):
    parts = path_str(key_path).split("/")
    name = "/".join(parts[:-1])
    if parts[-1] != "kernel" or name not in adapters:
      return w
    return fn(w, adapters[name])

  return jax.tree_util.tree_map_with_path(adapt, params)


def merged_kernels(params, adapters, cfg: LoraConfig) -> dict[str, jax.Array]:
  """{projection path: W + (alpha / rank) A @ B in W's dtype} for the adapted kernels only."""
  kernels = _targets(params, cfg)
  return {
    name: (kernels[name].astype(jnp.float32) + cfg.scale * ad["a"] @ ad["b"]).astype(
      kernels[name].dtype
    )
    for name, ad in adapters.items()
  }


def with_kernels(params, kernels: dict):
  """`params` with the kernel of each projection path in `kernels` replaced by its value there;
  every other leaf is `params`' own array (no copy)."""
  return _map_targets(params, kernels, lambda w, k: k)


def merge(params, adapters, cfg: LoraConfig):
  """The adapted parameters: each targeted kernel W + (alpha / rank) A @ B, in W's dtype."""
  return with_kernels(params, merged_kernels(params, adapters, cfg))


def attach(params, adapters, cfg: LoraConfig):
  """The parameters with each targeted kernel replaced by a `transformer.LoraKernel` (W, A, B):
  the model applies it unmerged, x W + (alpha / rank) (x A) B. The same function as `merge`'s
  parameters, without the merged kernels or their full weight gradients (the learner's form;
  `merge` stays the sampler's and the export's)."""
  return _map_targets(params, adapters, lambda w, ad: LoraKernel(w, ad["a"], ad["b"], cfg.scale))


def num_params(adapters) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(adapters))
