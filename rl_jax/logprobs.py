"""THE bridge from model to math: per-token log-probs (and entropy) of given completions.

Every objective sees the policy only through `completion_logprobs`: the trainer (current and
old policy), the reference model and the tests all call it, so the numbers the sampler
reports and the numbers the loss differentiates are computed one way.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rl_jax.models import transformer
from rl_jax.objectives.kl import entropy_from_logits


class TokenStats(NamedTuple):
  logp_NxT: jax.Array  # float32 log pi(y_t | x, y_<t), 0 where the completion mask is 0
  entropy_NxT: jax.Array | None  # float32 entropy of pi(. | x, y_<t), 0 where masked


def completion_logprobs(graphdef, params, prompt_NxP, prompt_mask_NxP, completion_NxT,
                        completion_mask_NxT, *, temperature: float = 1.0,
                        with_entropy: bool = False) -> TokenStats:
  """Log-probs of `completion_NxT` after the left-padded `prompt_NxP`, one causal pass.

  The sequence is `[prompt ; completion]`; completion token t is predicted by the logits at
  index P - 1 + t. RoPE positions count valid tokens only, as in the sampler, so these
  log-probs equal the sampler's for the same parameters at the same temperature.

  Args:
    graphdef, params: the model (graph definition and pure-dict parameters).
    prompt_NxP, prompt_mask_NxP: left-padded prompt tokens and their validity.
    completion_NxT, completion_mask_NxT: completion tokens and their validity.
    temperature: logits are divided by it (use the sampling temperature for old log-probs).
    with_entropy: also return the per-token entropy of the (tempered) policy.
  """
  model = transformer.merge(graphdef, params)
  P = prompt_NxP.shape[1]
  tokens = jnp.concatenate([prompt_NxP, completion_NxT], axis=1)
  valid = jnp.concatenate([prompt_mask_NxP, completion_mask_NxT.astype(bool)], axis=1)
  positions = transformer.positions_from_mask(valid)
  logits, _ = model(tokens, positions, valid)
  logits_NxTxV = logits[:, P - 1:-1] / temperature
  logp_all = jax.nn.log_softmax(logits_NxTxV, axis=-1)
  logp = jnp.take_along_axis(logp_all, completion_NxT[..., None], axis=-1)[..., 0]
  mask = completion_mask_NxT.astype(logp.dtype)
  ent = entropy_from_logits(logits_NxTxV) * mask if with_entropy else None
  return TokenStats(logp * mask, ent)
