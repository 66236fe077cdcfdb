"""Models: the Flax NNX decoder and its presets."""

from rl_jax.models.transformer import (
  PRESETS,
  LayerCache,
  Transformer,
  TransformerConfig,
  abstract_model,
  init_cache,
  init_model,
  merge,
  positions_from_mask,
  preset,
)

__all__ = [
  "PRESETS",
  "LayerCache",
  "Transformer",
  "TransformerConfig",
  "abstract_model",
  "init_cache",
  "init_model",
  "merge",
  "positions_from_mask",
  "preset",
]
