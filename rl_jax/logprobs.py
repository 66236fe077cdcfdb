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


def _completion_states(model, prompt_NxP, prompt_mask_NxP, completion_NxT, completion_mask_NxT):
  """Hidden states [N, T, D] that predict each completion token: one causal pass over
  `[prompt ; completion]`, taking index P - 1 + t for token t. RoPE positions count valid
  tokens only, exactly as in the sampler."""
  P = prompt_NxP.shape[1]
  tokens = jnp.concatenate([prompt_NxP, completion_NxT], axis=1)
  valid = jnp.concatenate([prompt_mask_NxP, completion_mask_NxT.astype(bool)], axis=1)
  h, _ = model.hidden(tokens, transformer.positions_from_mask(valid), valid)
  return h[:, P - 1:-1]


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
  h = _completion_states(model, prompt_NxP, prompt_mask_NxP, completion_NxT, completion_mask_NxT)
  logits_NxTxV = model.logits(h) / temperature
  logp_all = jax.nn.log_softmax(logits_NxTxV, axis=-1)
  logp = jnp.take_along_axis(logp_all, completion_NxT[..., None], axis=-1)[..., 0]
  mask = completion_mask_NxT.astype(logp.dtype)
  ent = entropy_from_logits(logits_NxTxV) * mask if with_entropy else None
  return TokenStats(logp * mask, ent)


def init_critic(policy_params, d_model: int, *, shared_trunk: bool = False) -> dict:
  """Critic parameters: a copy of the policy's trunk plus a fresh zero-initialised scalar head
  (so the critic starts from the policy's features and predicts 0 everywhere). With
  `shared_trunk` only the head: values then come from the policy's own trunk (`critic_view`)."""
  head = dict(kernel=jnp.zeros((d_model, 1), jnp.float32), bias=jnp.zeros((1,), jnp.float32))
  if shared_trunk:
    return dict(value_head=head)
  return dict(trunk=jax.tree.map(jnp.copy, policy_params), value_head=head)


def critic_view(policy_params, critic_params) -> dict:
  """The parameters `completion_values` reads: the critic's own trunk, or (shared trunk) the
  policy's trunk under the critic's head."""
  if "trunk" in critic_params:
    return critic_params
  return dict(trunk=policy_params, value_head=critic_params["value_head"])


def completion_values(graphdef, critic_params, prompt_NxP, prompt_mask_NxP, completion_NxT,
                      completion_mask_NxT) -> jax.Array:
  """V(s_t) for each completion token t: the critic's estimate of the return from the state
  that emits token t (hidden state at index P - 1 + t). float32 [N, T], 0 where masked."""
  model = transformer.merge(graphdef, critic_params["trunk"])
  h = _completion_states(model, prompt_NxP, prompt_mask_NxP, completion_NxT, completion_mask_NxT)
  head = critic_params["value_head"]
  values = (h.astype(jnp.float32) @ head["kernel"])[..., 0] + head["bias"][0]
  return values * completion_mask_NxT.astype(jnp.float32)
