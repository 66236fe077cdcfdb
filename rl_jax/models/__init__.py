"""Models: the Flax NNX decoder, its presets, and Hugging Face checkpoints (`hf`)."""

from rl_jax.models.hf import from_pretrained
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
  "from_pretrained",
  "init_cache",
  "init_model",
  "merge",
  "positions_from_mask",
  "preset",
]
