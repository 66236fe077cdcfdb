"""Sampling: jitted prefill + KV-cache decode loop."""

from rl_jax.sampling.sampler import Samples, SamplingConfig, filter_logits, generate

__all__ = ["Samples", "SamplingConfig", "filter_logits", "generate"]
