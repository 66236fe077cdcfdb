"""Train state and the jitted update steps (RL and supervised warm start).

The update is one jitted function: `num_iterations` epochs x `num_minibatches` minibatches
run as a `lax.scan` inside it, the state buffers are donated, and an update that is not safe
to apply is skipped (parameters and optimizer state kept) and counted: its loss or gradient is
not finite, the parameters or optimizer state it would produce are not finite, it would move
the parameters by more than `max_update_ratio` times their norm, or its gradient norm is above
the caller's spike limit. The `skip_reason` metric says which (the `SKIP_*` bits).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rl_jax import lora as lora_lib
from rl_jax.algorithms import Algorithm
from rl_jax.logprobs import (
  TokenStats,
  completion_logprobs,
  completion_logprobs_and_values,
  completion_values,
  critic_view,
  shares_policy_trunk,
)
from rl_jax.objectives.aggregation import (
  aggregate,
  aggregate_with_denominator,
  aggregation_denominator,
)
from rl_jax.objectives.policy_losses import clip_fraction
from rl_jax.objectives.value import clipped_value_loss
from rl_jax.types import TrainBatch

# XLA:CPU runs the training step's matmuls about 9% faster through its own dot emitter than as
# YNNPACK fusions (the 4.46 M-parameter W3 step, same process: 1.61-1.66 s vs 1.74-1.83 s,
# jaxlib 0.10.2); the sampler's decode is unaffected, so only the training jits take this.
_CPU_TRAIN_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def train_compiler_options() -> dict | None:
  """Compiler options for the training jits: `_CPU_TRAIN_OPTIONS` on a CPU backend whose XLA
  accepts them (probed once with a trivial computation), else None. Set
  RL_JAX_CPU_DEFAULT_XLA=1 to compile with XLA's defaults."""
  if jax.default_backend() != "cpu" or os.environ.get("RL_JAX_CPU_DEFAULT_XLA") == "1":
    return None
  try:
    jax.jit(lambda x: x @ x, compiler_options=_CPU_TRAIN_OPTIONS).lower(jnp.ones((2, 2))).compile()
  except Exception:  # pylint: disable=broad-except  (an XLA without the option: use defaults)
    return None
  return dict(_CPU_TRAIN_OPTIONS)


class TrainState(NamedTuple):
  step: jax.Array  # int32, optimizer updates applied or skipped so far
  params: Any  # pure dict of arrays
  opt_state: Any
  skipped: jax.Array  # int32, updates skipped as unsafe (see `apply_gradients`)
  critic_params: Any = None  # PPO value model (trunk + value head), None without a critic
  critic_opt_state: Any = None


class MasterWeights(NamedTuple):
  """The optimizer state of `with_master_weights`: float32 copies of the parameters, and the
  wrapped optimizer's state over them."""

  master: Any
  inner: Any


def with_master_weights(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """`tx` run on float32 master copies of the parameters, kept in the optimizer state: for
  parameters stored in bfloat16 (`model.param_dtype`). The gradients are cast to float32, `tx`
  updates the masters (its moments are float32 too), and the stored parameters become the
  masters rounded to their dtype (`master_params`). Without masters an update smaller than
  half a bfloat16 ulp of its weight (2^-9 relative: most of them at RL learning rates) is
  rounded away at every step; with them it accumulates."""

  def init(params):
    master = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
    return MasterWeights(master, tx.init(master))

  def update(grads, state: MasterWeights, params=None):
    grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
    updates, inner = tx.update(grads, state.inner, state.master)
    master = optax.apply_updates(state.master, updates)
    if params is not None:  # the step from the stored parameters to the rounded masters
      updates = jax.tree.map(
        lambda m, p: m.astype(p.dtype).astype(jnp.float32) - p.astype(jnp.float32), master, params
      )
    return updates, MasterWeights(master, inner)

  return optax.GradientTransformation(init, update)


def master_params(opt_state, params):
  """The parameters an update leaves: with `with_master_weights`, its masters rounded to the
  stored dtypes (exactly, not through `params + update`); otherwise None."""
  if not isinstance(opt_state, MasterWeights):
    return None
  return jax.tree.map(lambda m, p: m.astype(p.dtype), opt_state.master, params)


def make_optimizer(
  *,
  learning_rate: float,
  warmup_steps: int = 0,
  weight_decay: float = 0.0,
  b1: float = 0.9,
  b2: float = 0.999,
  max_grad_norm: float | None = 1.0,
  master_weights: bool = False,
) -> optax.GradientTransformation:
  """AdamW with linear warmup to a constant rate (constant so that a run's schedule does not
  depend on its total length: resuming with more steps continues the same trajectory); with
  `master_weights`, on float32 masters (`with_master_weights`)."""
  schedule = (
    optax.linear_schedule(0.0, learning_rate, warmup_steps) if warmup_steps else learning_rate
  )
  if warmup_steps:
    schedule = optax.join_schedules(
      [schedule, optax.constant_schedule(learning_rate)], [warmup_steps]
    )
  parts = [optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm else []
  parts.append(optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay))
  tx = optax.chain(*parts)
  return with_master_weights(tx) if master_weights else tx


def init_state(
  params,
  tx: optax.GradientTransformation,
  critic_params=None,
  critic_tx: optax.GradientTransformation | None = None,
) -> TrainState:
  critic_opt = None if critic_params is None else (critic_tx or tx).init(critic_params)
  return TrainState(
    jnp.zeros((), jnp.int32),
    params,
    tx.init(params),
    jnp.zeros((), jnp.int32),
    critic_params,
    critic_opt,
  )


def _tree_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


# Why an update was skipped: the bits of the `skip_reason` metric (OR-ed over a step's updates).
SKIP_NONFINITE_GRAD = 1  # the loss or a gradient is not finite
SKIP_NONFINITE_STATE = 2  # the parameters or optimizer state the update produces are not finite
SKIP_UPDATE_RATIO = 4  # ||update|| > max_update_ratio * ||parameters||
SKIP_GRAD_SPIKE = 8  # the gradient norm is above the spike limit (`grad_norm_limit`)
SKIP_REASONS = {
  SKIP_NONFINITE_GRAD: "non-finite loss or gradient",
  SKIP_NONFINITE_STATE: "the update would make the parameters or optimizer state non-finite",
  SKIP_UPDATE_RATIO: "the update would move the parameters by more than train.max_update_ratio "
  "times their norm",
  SKIP_GRAD_SPIKE: "gradient-norm spike (above train.spike_factor x the running median)",
}


def describe_skip(reason: int) -> str:
  """The `skip_reason` bits in words."""
  return "; ".join(text for bit, text in SKIP_REASONS.items() if int(reason) & bit) or "none"


def _optimizer_step(params, opt_state, grads, tx, grads_ok, max_update_ratio: float):
  """The candidate (parameters, optimizer state) and whether they are safe: finite, and (with
  `max_update_ratio` > 0) moved by at most that fraction of the parameters' global norm.

  Finiteness is read from two norms rather than from every produced array (a full pass over
  the parameters and optimizer state cost W3 2-3%): the gradient's squared norm is finite, so
  Adam's moments (running averages of g and g^2) stay finite, and the update's norm is
  finite, so the parameters (finite before) only overflow at values near 3e38, which the ratio
  bound excludes. A non-finite state that slipped past (an exotic optimizer) makes the next
  loss non-finite: that update is skipped, and the checkpointer refuses to save such a state."""
  safe = jax.tree.map(lambda g: jnp.where(grads_ok, g, jnp.zeros_like(g)), grads)
  updates, new_opt = tx.update(safe, opt_state, params)
  new_params = master_params(new_opt, params)
  if new_params is None:
    new_params = optax.apply_updates(params, updates)
  norm = lambda t: optax.tree.norm(jax.tree.map(lambda x: x.astype(jnp.float32), t))
  update_norm = norm(updates)
  finite = jnp.isfinite(update_norm) & jnp.isfinite(norm(grads))
  small = jnp.array(True)
  if max_update_ratio > 0:
    small = update_norm <= max_update_ratio * norm(params)
  return new_params, new_opt, finite, small


def apply_gradients(
  state: TrainState,
  grads,
  loss,
  tx,
  critic_grads=None,
  critic_tx=None,
  *,
  max_update_ratio: float = 0.0,
  grad_norm_limit=None,
) -> tuple[TrainState, jax.Array]:
  """One optimizer step (policy, and critic if any), skipped as a whole (state kept,
  `skipped` + 1) unless it is safe: finite loss and gradients, finite produced parameters and
  optimizer state, an update no larger than `max_update_ratio` x the parameters' norm (0 = no
  bound), and a policy gradient norm at most `grad_norm_limit` (None = no bound). Returns
  (state, reason): the `SKIP_*` bits, 0 when applied."""
  grads_ok = jnp.isfinite(loss) & _tree_finite(grads) & _tree_finite(critic_grads)
  params, opt_state, finite, small = _optimizer_step(
    state.params, state.opt_state, grads, tx, grads_ok, max_update_ratio
  )
  critic_params, critic_opt = state.critic_params, state.critic_opt_state
  if critic_grads is not None:
    critic_params, critic_opt, c_finite, c_small = _optimizer_step(
      critic_params, critic_opt, critic_grads, critic_tx or tx, grads_ok, max_update_ratio
    )
    finite, small = finite & c_finite, small & c_small
  spike_ok = (
    jnp.array(True) if grad_norm_limit is None else optax.tree.norm(grads) <= grad_norm_limit
  )
  bit = lambda cond, b: jnp.where(cond, 0, b).astype(jnp.int32)
  reason = jnp.where(
    grads_ok,
    bit(finite, SKIP_NONFINITE_STATE)
    | bit(small, SKIP_UPDATE_RATIO)
    | bit(spike_ok, SKIP_GRAD_SPIKE),
    SKIP_NONFINITE_GRAD,
  ).astype(jnp.int32)
  ok = reason == 0
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
  return TrainState(
    state.step + 1,
    keep(params, state.params),
    keep(opt_state, state.opt_state),
    state.skipped + (~ok).astype(jnp.int32),
    keep(critic_params, state.critic_params),
    keep(critic_opt, state.critic_opt_state),
  ), reason


def rl_loss(
  graphdef,
  params,
  mb: TrainBatch,
  algo: Algorithm,
  *,
  temperature: float,
  on_policy: bool,
  denominator=None,
  group_size: int = 1,
  logits_chunk: int = 0,
  frozen_head: bool = False,
  stats: TokenStats | None = None,
):
  """The policy objective of one (micro-)batch and its diagnostics.

  `on_policy=True` means the batch was sampled by exactly these parameters (one epoch, one
  minibatch): the old log-probs are then the current ones, held constant, so the ratio is 1
  and its gradient is the policy gradient, with no extra forward pass.

  `denominator`: the aggregation denominator of the whole batch this micro-batch belongs to
  (see `objectives.aggregation`); the micro-batch losses then sum to the batch loss exactly.
  None normalises by this batch alone.

  Only tokens of the batch's loss mask are trained on (a forced prefix or conditioning context
  is attended to, never trained). `group_size` and `logits_chunk` are passed to
  `completion_logprobs` (declared shared prompt prefix, chunked log-softmax), and so is
  `frozen_head` (the LM head is not trained: LoRA); they change the cost, not the result.
  `stats`: the log-probs and
  entropies (`completion_logprobs(..., with_entropy=True)`) when the caller computed them.
  """
  if stats is None:
    stats = completion_logprobs(
      graphdef,
      params,
      mb.prompt_NxP,
      mb.prompt_mask_NxP,
      mb.completion_NxT,
      mb.completion_mask_NxT,
      temperature=temperature,
      with_entropy=True,
      group_size=group_size,
      logits_chunk=logits_chunk,
      frozen_head=frozen_head,
      entropy_grad=bool(algo.entropy_coef),
    )
  logp = stats.logp_NxT
  mask = mb.loss_mask_NxT.astype(jnp.float32)
  old = jax.lax.stop_gradient(logp) if on_policy else mb.old_logp_NxT
  extras = {"extras": mb.token_extras} if mb.token_extras else {}  # per-token extras it needs
  per_token = algo.policy_loss(algo, logp, old, mb.adv_NxT, mask, **extras)
  mode, const = algo.aggregation, algo.aggregation_constant
  if denominator is None:
    denominator = aggregation_denominator(mask, mode, constant=const)
  reduce = lambda x: aggregate_with_denominator(x, mask, mode, denominator, constant=const)
  pg_loss = reduce(per_token)
  kl = jnp.zeros_like(logp)
  if algo.requires("ref_logp"):
    kl = algo.kl_estimator(logp, mb.ref_logp_NxT)
    if algo.kl_coef > 0 and not algo.kl_in_reward:
      per_token = per_token + algo.kl_coef * kl
  if algo.entropy_coef:
    per_token = per_token - algo.entropy_coef * stats.entropy_NxT
  loss = reduce(per_token)
  metrics = dict(
    loss=loss,
    pg_loss=pg_loss,
    kl=aggregate(jax.lax.stop_gradient(kl), mask, "token_mean"),
    entropy=aggregate(jax.lax.stop_gradient(stats.entropy_NxT), mask, "token_mean"),
    clip_frac=clip_fraction(
      jax.lax.stop_gradient(logp),
      old,
      mb.adv_NxT,
      mask,
      eps_low=algo.clip_eps_low,
      eps_high=algo.clip_eps_high,
    ),
  )
  return loss, metrics


def value_loss(
  graphdef, critic_params, mb: TrainBatch, algo: Algorithm, *, denominator=None, values=None
):
  """Clipped value loss (token mean, or the batch's global token count as `denominator`).
  `values`: the critic's values of the batch when the caller computed them."""
  mask = mb.loss_mask_NxT.astype(jnp.float32)
  if values is None:
    values = completion_values(
      graphdef,
      critic_params,
      mb.prompt_NxP,
      mb.prompt_mask_NxP,
      mb.completion_NxT,
      mb.completion_mask_NxT,
    )
  per_token = clipped_value_loss(values, mb.old_values_NxT, mb.returns_NxT, eps=algo.value_clip_eps)
  if denominator is None:
    denominator = aggregation_denominator(mask, "token_mean")
  loss = aggregate_with_denominator(per_token, mask, "token_mean", denominator)
  err = (values - mb.returns_NxT) * mask
  return loss, dict(
    value_loss=loss,
    value_mean=aggregate(values, mask, "token_mean"),
    value_abs_err=aggregate(jnp.abs(err), mask, "token_mean"),
  )


def _split(tree, parts: int):
  """[N, ...] leaves -> [parts, N / parts, ...]."""
  return jax.tree.map(lambda x: x.reshape(parts, x.shape[0] // parts, *x.shape[1:]), tree)


@dataclasses.dataclass(frozen=True)
class UpdateSpec:
  """What `make_rl_update` fixes for every update (hashable: it keys the compiled programs)."""

  graphdef: Any
  algo: Algorithm
  tx: optax.GradientTransformation
  critic_tx: optax.GradientTransformation | None
  num_minibatches: int
  num_iterations: int
  num_microbatches: int
  temperature: float
  logits_chunk: int
  on_policy: bool
  lora: Any = None  # a lora.LoraConfig: the trained parameters are adapters on frozen weights
  max_update_ratio: float = 0.0  # skip an update larger than this x the parameters' norm (0: off)


def make_rl_update(
  graphdef,
  algo: Algorithm,
  tx: optax.GradientTransformation,
  *,
  num_minibatches: int = 1,
  num_iterations: int = 1,
  num_microbatches: int = 1,
  temperature: float = 1.0,
  critic_tx: optax.GradientTransformation | None = None,
  logits_chunk: int = 0,
  off_policy: bool = False,
  lora=None,
  max_update_ratio: float = 0.0,
  state_sharding=None,
  batch_sharding=None,
  frozen_sharding=None,
) -> Callable:
  """Returns `update(state, batch, rng, prompt_group_size=1, frozen=None, grad_norm_limit=None)
  -> (state, metrics)`, jitted with donated state.

  Each of `num_iterations` epochs shuffles the batch into `num_minibatches` minibatches, one
  optimizer step each. A minibatch is processed as `num_microbatches` micro-batches whose
  gradients are accumulated with the minibatch's global aggregation denominator, so the
  update is the same as with one micro-batch (only peak memory changes).

  With a critic (`algo.critic`), the value model is trained alongside with the clipped value
  loss (weight `algo.vf_coef`) and its own optimizer `critic_tx`; `params` below are then the
  pair (policy, critic), whose losses are independent.

  `prompt_group_size` G > 1 (static; the rollout declares it, `Rollout.prompt_group_size`) says
  the batch's rows come in consecutive groups of G sharing one prompt. Minibatches are then
  shuffled by whole groups and each group's prompt is computed once
  (`completion_logprobs(group_size=G)`) whenever every micro-batch holds whole groups; otherwise
  the prompt is computed per row. `logits_chunk` > 0 computes the log-softmax that many
  completion positions at a time. Neither changes the update beyond float rounding.

  `off_policy=True` says the batch was sampled by other parameters than `state.params` (the
  one-step-off asynchronous mode): the ratio then always uses `batch.old_logp_NxT`.

  With `lora` (a `lora.LoraConfig`), `state.params` are LoRA adapters and every call passes the
  frozen base weights as `frozen` (at `frozen_sharding`); the loss sees the model of
  `lora.merge(frozen, adapters)`, applied unmerged (`lora.attach`), and only the adapters (and
  their optimizer state) are updated.

  Every optimizer step is skipped (`apply_gradients`) when it is unsafe: non-finite, larger
  than `max_update_ratio` x the parameters' norm, or (with `grad_norm_limit`, a traced scalar
  the caller may change every call) a gradient norm above the limit. The metrics
  `skipped_updates` (the running count) and `skip_reason` (the step's `SKIP_*` bits) report it.
  """
  on_policy = num_minibatches == 1 and num_iterations == 1 and not off_policy
  spec = UpdateSpec(
    graphdef,
    algo,
    tx,
    critic_tx,
    num_minibatches,
    num_iterations,
    num_microbatches,
    temperature,
    logits_chunk,
    on_policy,
    lora,
    max_update_ratio,
  )
  shardings = {}
  if state_sharding is not None:
    shardings = dict(
      in_shardings=(state_sharding, batch_sharding, None, frozen_sharding, None),
      out_shardings=(state_sharding, None),
    )

  @functools.cache
  def compiled(prompt_group_size: int):
    fn = functools.partial(_update, spec, prompt_group_size=prompt_group_size)
    return jax.jit(fn, donate_argnums=(0,), compiler_options=train_compiler_options(), **shardings)

  def update(
    state: TrainState,
    batch: TrainBatch,
    rng,
    prompt_group_size: int = 1,
    frozen=None,
    grad_norm_limit=None,
  ):
    if (frozen is None) != (lora is None):
      raise ValueError("the frozen base weights are passed exactly when LoRA is on")
    limit = jnp.float32(jnp.inf if grad_norm_limit is None else grad_norm_limit)
    return compiled(prompt_group_size)(state, batch, rng, frozen, limit)

  update.on_policy = on_policy  # the ratio is exactly 1: old log-probs are not read
  update.jitted = compiled  # prompt_group_size -> the jitted program (tests, jaxprs, caches)
  return update


def _update(
  spec: UpdateSpec,
  state: TrainState,
  batch: TrainBatch,
  rng,
  frozen,
  grad_norm_limit,
  prompt_group_size: int,
):
  """`num_iterations` epochs of `num_minibatches` optimizer steps, as nested `lax.scan`s.
  `frozen`: the base weights under LoRA adapters (`spec.lora`), else None."""
  N = batch.completion_NxT.shape[0]
  parts = spec.num_minibatches * spec.num_microbatches
  if N % parts:
    raise ValueError(
      f"batch of {N} sequences does not split into {spec.num_minibatches} "
      f"minibatches of {spec.num_microbatches} micro-batches"
    )
  if N % prompt_group_size:
    raise ValueError(f"{N} rows do not form prompt groups of {prompt_group_size}")
  # Prompt sharing needs whole groups in every micro-batch.
  share = prompt_group_size if (N // parts) % prompt_group_size == 0 else 1

  def epoch(state, rng_e):
    if spec.num_minibatches == 1:
      mbs = _split(batch, 1)
    else:  # shuffle whole groups (rows stay with their group, in order)
      groups = jax.random.permutation(rng_e, N // share)
      order = (groups[:, None] * share + jnp.arange(share)).reshape(N)
      mbs = _split(jax.tree.map(lambda x: x[order], batch), spec.num_minibatches)
    step = functools.partial(
      _minibatch_step, spec, share=share, frozen=frozen, grad_norm_limit=grad_norm_limit
    )
    return jax.lax.scan(step, state, mbs)

  state, metrics = jax.lax.scan(epoch, state, jax.random.split(rng, spec.num_iterations))
  reasons = metrics.pop("skip_reason")
  metrics = jax.tree.map(jnp.mean, metrics)
  metrics["skipped_updates"] = state.skipped
  metrics["skip_reason"] = sum(jnp.any(reasons & b) * b for b in SKIP_REASONS).astype(jnp.int32)
  return state, metrics


def _loss(spec: UpdateSpec, params, mb: TrainBatch, denominator, share: int, frozen=None):
  """Policy loss (+ the critic's value loss) of one micro-batch, and its diagnostics. Under
    LoRA the trained policy parameters are adapters, attached to the frozen weights here (and
  applied unmerged by the model)."""
  algo, graphdef = spec.algo, spec.graphdef
  policy_params, critic_params = params
  if spec.lora is not None:
    policy_params = lora_lib.attach(frozen, policy_params, spec.lora)
  stats = values = None
  if algo.critic and shares_policy_trunk(critic_params):
    # A value head on the policy's trunk: one trunk pass serves both heads.
    stats, values = completion_logprobs_and_values(
      graphdef,
      policy_params,
      critic_params["value_head"],
      mb.prompt_NxP,
      mb.prompt_mask_NxP,
      mb.completion_NxT,
      mb.completion_mask_NxT,
      temperature=spec.temperature,
      with_entropy=True,
      group_size=share,
      logits_chunk=spec.logits_chunk,
      frozen_head=spec.lora is not None,
      entropy_grad=bool(algo.entropy_coef),
    )
  loss, metrics = rl_loss(
    graphdef,
    policy_params,
    mb,
    algo,
    temperature=spec.temperature,
    on_policy=spec.on_policy,
    denominator=denominator[0],
    group_size=share,
    logits_chunk=spec.logits_chunk,
    frozen_head=spec.lora is not None,
    stats=stats,
  )
  if algo.critic:
    # With a shared trunk the value loss also reaches the policy parameters.
    vloss, vmetrics = value_loss(
      graphdef,
      critic_view(policy_params, critic_params),
      mb,
      algo,
      denominator=denominator[1],
      values=values,
    )
    loss = loss + algo.vf_coef * vloss
    metrics.update(vmetrics, loss=loss)
  return loss, metrics


def _minibatch_grads(spec: UpdateSpec, params, mb: TrainBatch, share: int, frozen=None):
  """Loss, metrics and gradients of a minibatch, accumulated over `num_microbatches` with the
  minibatch's global aggregation denominators (exact)."""
  algo = spec.algo
  mask = mb.loss_mask_NxT.astype(jnp.float32)
  den = (
    aggregation_denominator(mask, algo.aggregation, constant=algo.aggregation_constant),
    aggregation_denominator(mask, "token_mean"),
  )
  loss_and_grad = jax.value_and_grad(functools.partial(_loss, spec), has_aux=True)
  if spec.num_microbatches == 1:
    return loss_and_grad(params, mb, den, share, frozen)

  def accumulate(carry, micro):
    loss_sum, grad_sum = carry
    (loss, metrics), grads = loss_and_grad(params, micro, den, share, frozen)
    return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), metrics

  zeros = jax.tree.map(jnp.zeros_like, params)
  (loss, grads), metrics = jax.lax.scan(
    accumulate, (jnp.zeros(()), zeros), _split(mb, spec.num_microbatches)
  )
  # Partial losses (global denominator) add up; per-micro-batch diagnostics are averaged.
  metrics = {
    k: jnp.sum(v) if k in ("loss", "pg_loss", "value_loss") else jnp.mean(v)
    for k, v in metrics.items()
  }
  return (loss, metrics), grads


def _minibatch_step(
  spec: UpdateSpec,
  state: TrainState,
  mb: TrainBatch,
  share: int,
  frozen=None,
  grad_norm_limit=None,
):
  (loss, metrics), (grads, critic_grads) = _minibatch_grads(
    spec, (state.params, state.critic_params), mb, share, frozen
  )
  state, reason = apply_gradients(
    state,
    grads,
    loss,
    spec.tx,
    critic_grads,
    spec.critic_tx,
    max_update_ratio=spec.max_update_ratio,
    grad_norm_limit=grad_norm_limit,
  )
  metrics = dict(metrics, grad_norm=optax.tree.norm(grads), skip_reason=reason)
  return state, metrics


def make_value_fn(graphdef) -> Callable:
  """Jitted `(policy_params, critic_params, prompt, prompt_mask, completion, completion_mask)
  -> values_NxT` (the policy's parameters are read only with a shared trunk)."""

  def fn(policy_params, critic_params, *batch):
    return completion_values(graphdef, critic_view(policy_params, critic_params), *batch)

  return jax.jit(fn)


def make_logprob_fn(graphdef, *, temperature: float = 1.0, logits_chunk: int = 0) -> Callable:
  """Jitted `(params, prompt, prompt_mask, completion, completion_mask, prompt_group_size=1)
  -> logp_NxT` for the reference and old-policy passes. `prompt_group_size` (static: declared
  by the rollout) and `logits_chunk`: as `group_size` and `logits_chunk` of
  `completion_logprobs`."""

  def fn(params, prompt, prompt_mask, completion, completion_mask, prompt_group_size=1):
    return completion_logprobs(
      graphdef,
      params,
      prompt,
      prompt_mask,
      completion,
      completion_mask,
      temperature=temperature,
      group_size=prompt_group_size,
      logits_chunk=logits_chunk,
    ).logp_NxT

  return jax.jit(
    fn, static_argnames=("prompt_group_size",), compiler_options=train_compiler_options()
  )


def sft_loss(graphdef, params, prompt, prompt_mask, target, target_mask):
  """Supervised warm start: mean negative log-likelihood of the target tokens."""
  stats = completion_logprobs(graphdef, params, prompt, prompt_mask, target, target_mask)
  mask = target_mask.astype(jnp.float32)
  loss = aggregate(-stats.logp_NxT, mask, "token_mean")
  return loss, dict(loss=loss)


def make_sft_step(
  graphdef,
  tx: optax.GradientTransformation,
  *,
  max_update_ratio: float = 0.0,
  state_sharding=None,
  batch_sharding=None,
) -> Callable:
  """Returns jitted `step(state, prompt, prompt_mask, target, target_mask) -> (state, metrics)`;
  unsafe updates are skipped as in the RL update (`apply_gradients`)."""
  grad_fn = jax.value_and_grad(lambda p, *b: sft_loss(graphdef, p, *b), has_aux=True)

  def step(state: TrainState, prompt, prompt_mask, target, target_mask):
    (loss, metrics), grads = grad_fn(state.params, prompt, prompt_mask, target, target_mask)
    state, reason = apply_gradients(state, grads, loss, tx, max_update_ratio=max_update_ratio)
    return state, dict(metrics, grad_norm=optax.tree.norm(grads), skip_reason=reason)

  shardings = {}
  if state_sharding is not None:
    shardings = dict(
      in_shardings=(state_sharding,) + (batch_sharding,) * 4, out_shardings=(state_sharding, None)
    )
  return jax.jit(step, donate_argnums=(0,), compiler_options=train_compiler_options(), **shardings)
