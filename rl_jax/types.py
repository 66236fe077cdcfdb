"""Shape legend and the pytrees that flow through one RL step.

B prompts, G samples per prompt, N = B*G sequences, P prompt tokens (left-padded bucket),
T completion tokens (max new tokens), V vocabulary.
"""

from __future__ import annotations

from typing import NamedTuple

import jax


class Rollout(NamedTuple):
  """What the sampler produced for one step; rows grouped as prompt b -> rows b*G..b*G+G-1."""

  prompt_NxP: jax.Array  # int32 left-padded prompt tokens, repeated G times
  prompt_mask_NxP: jax.Array  # bool
  completion_NxT: jax.Array  # int32
  completion_mask_NxT: jax.Array  # bool: generated tokens up to and including EOS
  sampler_logp_NxT: jax.Array  # float32 log-probs of the sampled tokens at the sampling temperature


class TrainBatch(NamedTuple):
  """Everything the jitted update needs; every leaf has the sequence axis N first."""

  prompt_NxP: jax.Array
  prompt_mask_NxP: jax.Array
  completion_NxT: jax.Array
  completion_mask_NxT: jax.Array
  adv_NxT: jax.Array  # float32 per-token advantages (sequence advantages broadcast over T)
  old_logp_NxT: jax.Array  # float32 behaviour-policy log-probs (ignored when exactly on-policy)
  ref_logp_NxT: jax.Array  # float32 reference log-probs (ignored when the KL weight is 0)
  old_values_NxT: jax.Array | None = None  # critic values at sampling time (PPO)
  returns_NxT: jax.Array | None = None  # value targets (PPO)
