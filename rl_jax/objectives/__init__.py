"""rl_jax.objectives: the pure math of RL fine-tuning (arrays in, arrays out).

Table of contents:

  advantages     grpo_advantages, rloo_advantages, gae, discounted_returns, whiten,
                 papo_advantages, uarm_advantages, rcc_advantages, binary_contrastive_advantages
  kl             kl_k1, kl_k2, kl_k3, entropy_from_logits
  policy_losses  ppo_clip, clip_fraction, gspo            (per-token losses)
  segments       segment_clip, segment_log_ratios, segment_ids_from_delimiters (per-token loss)
  quantile       pinball_loss, quantile_levels, cqr_scores, cqr_rank, cqr_offset (UARM's RM)
  value          clipped_value_loss                        (per-token loss)
  shaping        soft_overlong_penalty, token_level_rewards, sequence_kl_penalized_rewards
  aggregation    aggregate, aggregate_parts, aggregate_with_denominator,
                 aggregation_denominator, AGGREGATION_MODES

Losses are returned per token, `[..., T]`; reducing them to a scalar is always a
separate call to `aggregate` (or `aggregate_with_denominator` for exact gradient
accumulation and data parallelism).
"""

from rl_jax.objectives.advantages import (
  binary_contrastive_advantages as binary_contrastive_advantages,
)
from rl_jax.objectives.advantages import discounted_returns as discounted_returns
from rl_jax.objectives.advantages import gae as gae
from rl_jax.objectives.advantages import grpo_advantages as grpo_advantages
from rl_jax.objectives.advantages import papo_advantages as papo_advantages
from rl_jax.objectives.advantages import rcc_advantages as rcc_advantages
from rl_jax.objectives.advantages import rloo_advantages as rloo_advantages
from rl_jax.objectives.advantages import uarm_advantages as uarm_advantages
from rl_jax.objectives.advantages import whiten as whiten
from rl_jax.objectives.aggregation import AGGREGATION_MODES as AGGREGATION_MODES
from rl_jax.objectives.aggregation import aggregate as aggregate
from rl_jax.objectives.aggregation import aggregate_parts as aggregate_parts
from rl_jax.objectives.aggregation import aggregate_with_denominator as aggregate_with_denominator
from rl_jax.objectives.aggregation import aggregation_denominator as aggregation_denominator
from rl_jax.objectives.kl import entropy_from_logits as entropy_from_logits
from rl_jax.objectives.kl import kl_k1 as kl_k1
from rl_jax.objectives.kl import kl_k2 as kl_k2
from rl_jax.objectives.kl import kl_k3 as kl_k3
from rl_jax.objectives.policy_losses import clip_fraction as clip_fraction
from rl_jax.objectives.policy_losses import gspo as gspo
from rl_jax.objectives.policy_losses import ppo_clip as ppo_clip
from rl_jax.objectives.quantile import pinball_loss as pinball_loss
from rl_jax.objectives.shaping import sequence_kl_penalized_rewards as sequence_kl_penalized_rewards
from rl_jax.objectives.shaping import soft_overlong_penalty as soft_overlong_penalty
from rl_jax.objectives.shaping import token_level_rewards as token_level_rewards
from rl_jax.objectives.value import clipped_value_loss as clipped_value_loss

__all__ = (
  # advantages
  "grpo_advantages",
  "rloo_advantages",
  "gae",
  "discounted_returns",
  "whiten",
  # kl
  "kl_k1",
  "kl_k2",
  "kl_k3",
  "entropy_from_logits",
  # policy_losses
  "ppo_clip",
  "clip_fraction",
  "gspo",
  # value
  "clipped_value_loss",
  # shaping
  "soft_overlong_penalty",
  "token_level_rewards",
  "sequence_kl_penalized_rewards",
  # aggregation
  "AGGREGATION_MODES",
  "aggregate",
  "aggregate_parts",
  "aggregate_with_denominator",
  "aggregation_denominator",
)
from rl_jax.objectives.segments import segment_clip as segment_clip
from rl_jax.objectives.segments import segment_ids_from_delimiters as segment_ids_from_delimiters
from rl_jax.objectives.segments import segment_log_ratios as segment_log_ratios
