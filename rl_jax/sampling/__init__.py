"""Sampling: jitted prefill + KV-cache decode loop, and continuation after forced prefixes."""

from rl_jax.sampling.sampler import (
  Continuations,
  Samples,
  SamplingConfig,
  filter_logits,
  generate,
  generate_continuations,
)

__all__ = [
  "Continuations",
  "Samples",
  "SamplingConfig",
  "filter_logits",
  "generate",
  "generate_continuations",
]
