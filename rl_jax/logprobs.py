"""THE bridge from model to math: per-token log-probs (and entropy) of given completions.

Every objective sees the policy only through `completion_logprobs`: the trainer (current and
old policy), the reference model and the tests all call it, so the numbers the sampler
reports and the numbers the loss differentiates are computed one way.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rl_jax.models import transformer


class TokenStats(NamedTuple):
  logp_NxT: jax.Array  # float32 log pi(y_t | x, y_<t), 0 where the completion mask is 0
  entropy_NxT: jax.Array | None  # float32 entropy of pi(. | x, y_<t), 0 where masked


def _completion_states(
  model, prompt_NxP, prompt_mask_NxP, completion_NxT, completion_mask_NxT, group_size: int = 1
):
  """Hidden states [N, T, D] that predict each completion token: index P - 1 + t of the causal
  pass over `[prompt ; completion]` for token t. RoPE positions count valid tokens only,
  exactly as in the sampler.

  With `group_size` G > 1, rows b*G .. b*G + G - 1 must share one prompt (as a rollout's
  groups do): the prompt is then run once per group and its keys and values are shared by the
  group's G completions as a shared attention prefix (`transformer.SharedPrefix`: stored,
  read and differentiated once per group, never repeated per row), so the prompt costs 1/G of
  its tokens' FLOPs and memory in the forward and the backward pass. The result is the same
  computation, up to float rounding.
  """
  N, P = prompt_NxP.shape
  T = completion_NxT.shape[1]
  valid = jnp.concatenate([prompt_mask_NxP, completion_mask_NxT.astype(bool)], axis=1)
  positions = transformer.positions_from_mask(valid)
  if group_size == 1:
    tokens = jnp.concatenate([prompt_NxP, completion_NxT], axis=1)
    h, _ = model.hidden(tokens, positions, valid)
    return h[:, P - 1 : -1]
  if N % group_size:
    raise ValueError(f"{N} sequences do not form groups of {group_size}")
  G = group_size
  group_prompt_BxP, group_mask_BxP = prompt_NxP[::G], prompt_mask_NxP[::G]
  h_prompt, prompt_kv = model.hidden(group_prompt_BxP, positions[::G, :P], group_mask_BxP)
  h_first = jnp.repeat(h_prompt[:, -1:], G, axis=0)  # predicts completion token 0
  if T == 1:
    return h_first
  prefix = [transformer.SharedPrefix(c.k_NxKxSxDh, c.v_NxKxSxDh, group_mask_BxP) for c in prompt_kv]
  h_rest, _ = model.hidden(
    completion_NxT[:, :-1], positions[:, P:-1], valid[:, P:-1], prefix=prefix
  )
  return jnp.concatenate([h_first, h_rest], axis=1)


def _softmax_parts(logits_xV):
  """(the logits shifted by their row maximum, the sum of their exponentials [..., 1])."""
  shifted = logits_xV - jax.lax.stop_gradient(jnp.max(logits_xV, axis=-1, keepdims=True))
  return shifted, jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True)


def _logp_entropy_values(logits_xV, token_x, with_entropy):
  shifted, total = _softmax_parts(logits_xV)
  log_total = jnp.log(total)[..., 0]
  logp = jnp.take_along_axis(shifted, token_x[..., None], axis=-1)[..., 0] - log_total
  if not with_entropy:
    return logp, jnp.zeros_like(logp)
  finite = jnp.where(jnp.isfinite(shifted), shifted, 0.0)
  return logp, log_total - jnp.sum(jnp.exp(shifted) / total * finite, axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _logp_entropy(logits_xV, token_x, with_entropy):
  """log softmax(logits)[token] and (with `with_entropy`, else 0) the entropy of
  softmax(logits): the values of `jax.nn.log_softmax` and `entropy_from_logits`, with a VJP
  that is one elementwise pass over the vocabulary, dlogits = g_logp (onehot - p) - g_entropy
  p (z - sum p z), z the logits. Differentiated by JAX, the two kept more [..., V] temporaries
  alive at once (the log-softmax, exponentials, a [..., V] zero fill hoisted out of the chunk
  loop): W5's update scratch was 0.08 GiB larger."""
  return _logp_entropy_values(logits_xV, token_x, with_entropy)


def _logp_entropy_fwd(logits_xV, token_x, with_entropy):
  out = _logp_entropy_values(logits_xV, token_x, with_entropy)
  return out, (logits_xV, token_x, out[1])


def _logit_directions(logits_xV, token_x, entropy_x=None):
  """The gradients in the logits z: d logp / dz = onehot - p and, given the entropy H, d H / dz
  = -p (z - sum p z), where sum p z = log(sum exp z) - H for z shifted by its row maximum (a
  -inf logit counts as 0 there: its p is 0). None for the entropy's without `entropy_x`."""
  shifted, total = _softmax_parts(logits_xV)
  p = jnp.exp(shifted) / total
  d_logp = (jnp.arange(logits_xV.shape[-1]) == token_x[..., None]) - p
  if entropy_x is None:
    return d_logp, None
  finite = jnp.where(jnp.isfinite(shifted), shifted, 0.0)
  mean = (jnp.log(total)[..., 0] - entropy_x)[..., None]
  return d_logp, -p * (finite - mean)


def _logp_entropy_bwd(with_entropy, residuals, cotangents):
  logits_xV, token_x, entropy_x = residuals
  g_logp, g_entropy = cotangents
  d_logp, d_entropy = _logit_directions(logits_xV, token_x, entropy_x if with_entropy else None)
  d = g_logp[..., None] * d_logp
  if with_entropy:
    d = d + g_entropy[..., None] * d_entropy
  return d.astype(logits_xV.dtype), None


_logp_entropy.defvjp(_logp_entropy_fwd, _logp_entropy_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3, 4))
def _frozen_head_stats(head, h_xD, token_x, with_entropy, entropy_grad):
  """log-probs and entropies of `head(h)`'s softmax, `head` an LM head whose weights the
  gradient does not reach (LoRA leaves them frozen), with the gradient's direction in h formed
  in the forward pass: d logp / dh = (onehot - p) W and d H / dh = -p (z - sum p z) W for the
  head's matrix W, one [..., V] x [V, D] product each (the second only with `entropy_grad`).
  The backward pass then only scales these [..., D] rows by the incoming cotangents. JAX's own
  backward recomputes the logits (or keeps them) and multiplies by W again: one V-wide product
  more per token (W5: four LM-head passes a step become three). A head whose weights are being
  differentiated fails loudly: JAX refuses a custom VJP that closes over them."""
  return _logp_entropy_values(head(h_xD), token_x, with_entropy)


def _frozen_head_fwd(head, h_xD, token_x, with_entropy, entropy_grad):
  logits_xV, head_vjp = jax.vjp(head, h_xD)
  logp, entropy = _logp_entropy_values(logits_xV, token_x, with_entropy)
  differentiated = entropy if with_entropy and entropy_grad else None
  d_logits = _logit_directions(logits_xV, token_x, differentiated)
  return (logp, entropy), [head_vjp(d)[0] for d in d_logits if d is not None]


def _frozen_head_bwd(head, with_entropy, entropy_grad, directions, cotangents):
  del head, with_entropy, entropy_grad  # `directions` has the entropy's row when it is needed
  g_logp, g_entropy = cotangents
  dh = g_logp[..., None] * directions[0]
  if len(directions) > 1:
    dh = dh + g_entropy[..., None] * directions[1]
  return dh.astype(directions[0].dtype), None


_frozen_head_stats.defvjp(_frozen_head_fwd, _frozen_head_bwd)


def _token_stats(
  model, h_NxTxD, completion_NxT, temperature, with_entropy, frozen_head, entropy_grad
):
  if frozen_head:
    head = lambda h: model.logits(h) / temperature
    logp, entropy = _frozen_head_stats(head, h_NxTxD, completion_NxT, with_entropy, entropy_grad)
  else:
    logits_NxTxV = model.logits(h_NxTxD) / temperature
    logp, entropy = _logp_entropy(logits_NxTxV, completion_NxT, with_entropy)
  if with_entropy and not entropy_grad:
    entropy = jax.lax.stop_gradient(entropy)
  return logp, entropy if with_entropy else None


def _chunked_token_stats(
  model, h_NxTxD, completion_NxT, chunk, temperature, with_entropy, frozen_head, entropy_grad
):
  """`_token_stats` over `chunk` completion positions at a time: the float32 logits of one
  chunk ([N, chunk, V]) exist at once instead of [N, T, V], in the forward and (rematerialised
  per chunk, or with `frozen_head` not needed) in the backward pass. This is what keeps 150
  k-token vocabularies in memory."""
  N, T, D = h_NxTxD.shape
  pad = -T % chunk
  h = jnp.pad(h_NxTxD, ((0, 0), (0, pad), (0, 0)))
  tok = jnp.pad(completion_NxT, ((0, 0), (0, pad)))
  C = (T + pad) // chunk
  h_CxNxcxD = h.reshape(N, C, chunk, D).swapaxes(0, 1)
  tok_CxNxc = tok.reshape(N, C, chunk).swapaxes(0, 1)

  def one(args):
    return _token_stats(model, *args, temperature, with_entropy, frozen_head, entropy_grad)

  # A frozen head's residuals are [N, chunk, D] rows (`_frozen_head_stats`); otherwise the
  # chunk's logits are recomputed in the backward pass rather than kept.
  logp, ent = jax.lax.map(one if frozen_head else jax.checkpoint(one), (h_CxNxcxD, tok_CxNxc))
  unchunk = lambda x: x.swapaxes(0, 1).reshape(N, T + pad)[:, :T]
  return unchunk(logp), unchunk(ent) if with_entropy else None


def completion_logprobs(
  graphdef,
  params,
  prompt_NxP,
  prompt_mask_NxP,
  completion_NxT,
  completion_mask_NxT,
  *,
  temperature: float = 1.0,
  with_entropy: bool = False,
  group_size: int = 1,
  logits_chunk: int = 0,
  frozen_head: bool = False,
  entropy_grad: bool = True,
) -> TokenStats:
  """Log-probs of `completion_NxT` after the left-padded `prompt_NxP`.

  The sequence is `[prompt ; completion]`; completion token t is predicted by the logits at
  index P - 1 + t. RoPE positions count valid tokens only, as in the sampler, so these
  log-probs equal the sampler's for the same parameters at the same temperature.

  Args:
    graphdef, params: the model (graph definition and pure-dict parameters).
    prompt_NxP, prompt_mask_NxP: left-padded prompt tokens and their validity.
    completion_NxT, completion_mask_NxT: completion tokens and their validity.
    temperature: logits are divided by it (use the sampling temperature for old log-probs).
    with_entropy: also return the per-token entropy of the (tempered) policy.
    group_size: G > 1 declares that rows b*G .. b*G + G - 1 share one prompt (a rollout's
      groups); the prompt is then computed once per group (`_completion_states`).
    logits_chunk: if > 0, compute the log-softmax over this many completion positions at a
      time, so the float32 logits of the whole batch are never materialised.
    frozen_head: the LM head's weights are constants of the gradient (LoRA): the backward pass
      then needs no V-wide product (`_frozen_head_stats`). Same values, same gradient up to
      float rounding; an error if the head's weights are in fact differentiated.
    entropy_grad: with False, the entropy is returned as a constant of the gradient (a
      diagnostic), which spares `frozen_head` a second V-wide product.
  """
  head = (temperature, with_entropy, logits_chunk, frozen_head, entropy_grad)
  batch = (prompt_NxP, prompt_mask_NxP, completion_NxT, completion_mask_NxT)
  return _trunk_and_stats(graphdef, params, batch, group_size, head)[1]


def _trunk_and_stats(graphdef, params, batch, group_size, head) -> tuple[jax.Array, TokenStats]:
  """The trunk's completion states h and the log-probs (and entropies) the LM head gives them;
  `batch` is (prompt_NxP, prompt_mask_NxP, completion_NxT, completion_mask_NxT), `head`
  (temperature, with_entropy, logits_chunk, frozen_head, entropy_grad)."""
  prompt_NxP, prompt_mask_NxP, completion_NxT, completion_mask_NxT = batch
  temperature, with_entropy, logits_chunk, frozen_head, entropy_grad = head
  model = transformer.merge(graphdef, params)
  h_NxTxD = _completion_states(
    model, prompt_NxP, prompt_mask_NxP, completion_NxT, completion_mask_NxT, group_size
  )
  options = (temperature, with_entropy, frozen_head, entropy_grad)
  if 0 < logits_chunk < completion_NxT.shape[1]:
    logp, ent = _chunked_token_stats(model, h_NxTxD, completion_NxT, logits_chunk, *options)
  else:
    logp, ent = _token_stats(model, h_NxTxD, completion_NxT, *options)
  mask = completion_mask_NxT.astype(logp.dtype)
  return h_NxTxD, TokenStats(logp * mask, ent * mask if with_entropy else None)


def completion_logprobs_and_values(
  graphdef,
  policy_params,
  value_head,
  prompt_NxP,
  prompt_mask_NxP,
  completion_NxT,
  completion_mask_NxT,
  *,
  temperature: float = 1.0,
  with_entropy: bool = False,
  group_size: int = 1,
  logits_chunk: int = 0,
  frozen_head: bool = False,
  entropy_grad: bool = True,
) -> tuple[TokenStats, jax.Array]:
  """`completion_logprobs` and, for a value head on the policy's own trunk (PPO's shared
  trunk), `completion_values` from one pass of the trunk: the same numbers as the two calls
  (up to float rounding with `group_size` > 1), at the cost of one."""
  head = (temperature, with_entropy, logits_chunk, frozen_head, entropy_grad)
  batch = (prompt_NxP, prompt_mask_NxP, completion_NxT, completion_mask_NxT)
  h, stats = _trunk_and_stats(graphdef, policy_params, batch, group_size, head)
  return stats, _values_from_states(h, value_head, completion_mask_NxT)


def _values_from_states(h_NxTxD, head, completion_mask_NxT) -> jax.Array:
  values = (h_NxTxD.astype(jnp.float32) @ head["kernel"])[..., 0] + head["bias"][0]
  return values * completion_mask_NxT.astype(jnp.float32)


def init_critic(policy_params, d_model: int, *, shared_trunk: bool = False) -> dict:
  """Critic parameters: a copy of the policy's trunk plus a fresh zero-initialised scalar head
  (so the critic starts from the policy's features and predicts 0 everywhere). With
  `shared_trunk` only the head: values then come from the policy's own trunk (`critic_view`)."""
  head = dict(kernel=jnp.zeros((d_model, 1), jnp.float32), bias=jnp.zeros((1,), jnp.float32))
  if shared_trunk:
    return dict(value_head=head)
  return dict(trunk=jax.tree.map(jnp.copy, policy_params), value_head=head)


def shares_policy_trunk(critic_params) -> bool:
  """Whether these critic parameters are a value head on the policy's own trunk
  (`init_critic(shared_trunk=True)`) rather than a trunk of their own."""
  return "trunk" not in critic_params


def critic_view(policy_params, critic_params) -> dict:
  """The parameters `completion_values` reads: the critic's own trunk, or (shared trunk) the
  policy's trunk under the critic's head."""
  if not shares_policy_trunk(critic_params):
    return critic_params
  return dict(trunk=policy_params, value_head=critic_params["value_head"])


def completion_values(
  graphdef, critic_params, prompt_NxP, prompt_mask_NxP, completion_NxT, completion_mask_NxT
) -> jax.Array:
  """V(s_t) for each completion token t: the critic's estimate of the return from the state
  that emits token t (hidden state at index P - 1 + t). float32 [N, T], 0 where masked."""
  model = transformer.merge(graphdef, critic_params["trunk"])
  h = _completion_states(model, prompt_NxP, prompt_mask_NxP, completion_NxT, completion_mask_NxT)
  return _values_from_states(h, critic_params["value_head"], completion_mask_NxT)
