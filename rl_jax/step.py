"""One RL step, data-driven: the function `loop.run`, `rl-jax bench` and the notebooks call.

    examples = draw(step)                                   prompt source (task), seeded by step
    roll     = rollout_fn(policy, params, examples, key)    the Rollout record
    roll     = score(roll, examples)                        named reward components -> extras
    ref      = logprobs(ref_params, roll)      if algo.requires("ref_logp")
    old      = logprobs(behaviour, roll)       if off-policy and the sampler's are not exact
    values   = critic(roll)                    if algo.requires("values")
    adv      = algo.advantages(algo, inputs)   pure; groups as declared; may read extras
    state, m = update(state, batch)            one jit, epochs x minibatches as lax.scan

`Step.collect` runs the first three lines (with DAPO's dynamic sampling around them when the
algorithm asks for it) and `Step.learn` the rest, so the loop can sample step n+1 while step
n learns.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax import algorithms, distributed, rollouts, tokenizers, trainer
from rl_jax import lora as lora_lib
from rl_jax.objectives import segments
from rl_jax.objectives.shaping import soft_overlong_penalty
from rl_jax.rewards import Rewards
from rl_jax.tasks.base import Example
from rl_jax.types import Rollout, TrainBatch

DrawFn = Callable[[int, int], Sequence[Example]]  # (step, round) -> examples


@dataclasses.dataclass
class Step:
  """The components of one RL step and its jitted pieces, built once.

  Attributes:
    policy: model + tokenizer (`rl_jax.policy.Policy`).
    algo: the objective; `aggregation_constant` resolved.
    rollout_fn: `(policy, params, examples, key) -> Rollout`.
    rewards: named reward terms (`rl_jax.rewards.Rewards`).
    draw: `(step, round) -> examples`, deterministic (exact resume).
    settings: the sampler, group size, prompt bucket and batch placement.
    update, logprob_fn, value_fn: the jitted update and log-prob / value passes.
    off_policy: every batch is one update stale (the loop's one-step-off mode).
    on_policy: one epoch of one minibatch, sampled by the current parameters: the ratio is 1.
    sampler_logp_exact: the sampler's log-probs are the policy's (temperature 1, no top-k/p).
    share_prompt: use the shared-prefix path where the rollout declares shared prompts
      (`train.share_prompt`; exact either way, off only to compare).
    lora: a `lora.LoraConfig` when the trained parameters are adapters on the frozen reference
      weights (`state.params` are then the adapters; `policy_params` merges them).
  """

  policy: Any
  algo: algorithms.Algorithm
  rollout_fn: rollouts.RolloutFn
  rewards: Rewards
  draw: DrawFn
  settings: rollouts.RolloutSettings
  update: Callable
  logprob_fn: Callable
  value_fn: Callable | None
  off_policy: bool
  on_policy: bool
  sampler_logp_exact: bool
  share_prompt: bool = True
  lora: Any = None
  _segment_end_ids: tuple[int, ...] | None = None  # cached token ids that end a segment

  @classmethod
  def create(
    cls,
    policy,
    algo,
    rollout_fn,
    rewards,
    draw,
    settings,
    tx,
    *,
    share_prompt=True,
    **update_options,
  ) -> Step:
    """Builds the jitted pieces for these components (nothing is compiled until first use).
    `update_options` are `trainer.make_rl_update`'s keyword arguments (minibatches, epochs,
    micro-batches, `logits_chunk`, `off_policy`, `critic_tx`, shardings)."""
    s = settings.sampling
    algo = dataclasses.replace(
      algo, aggregation_constant=algo.aggregation_constant or s.max_new_tokens
    )
    update = trainer.make_rl_update(
      policy.graphdef, algo, tx, temperature=s.temperature, **update_options
    )
    logprob_fn = trainer.make_logprob_fn(
      policy.graphdef, temperature=s.temperature, logits_chunk=update_options.get("logits_chunk", 0)
    )
    value_fn = trainer.make_value_fn(policy.graphdef) if algo.requires("values") else None
    exact = s.temperature == 1.0 and s.top_k == 0 and s.top_p == 1.0
    return cls(
      policy,
      algo,
      rollout_fn,
      rewards,
      draw,
      settings,
      update,
      logprob_fn,
      value_fn,
      update_options.get("off_policy", False),
      update.on_policy,
      exact,
      share_prompt,
      update_options.get("lora"),
    )

  # --- collect: examples -> rollout -> rewards ----------------------------------------------

  def score(self, roll: Rollout, examples: Sequence[Example]) -> Rollout:
    """Decodes each row's completion, runs the rewards, and stores their named components and
    the row's reward (weighted total, plus the algorithm's shaping) in the extras."""
    tok = self.policy.tokenizer
    comp = np.where(roll.completion_mask_NxT, roll.completion_NxT, self.policy.pad_id)
    texts = [tok.decode(row) for row in comp]
    row_examples = [examples[i] for i in np.asarray(roll.example_index_N)]
    # Each process scores its share of the rows (all of them in a one-process run).
    total, parts = distributed.split_rows(
      lambda rows: self.rewards(row_examples[rows], texts[rows]), len(texts)
    )
    extras = dict(roll.extras, **parts, total_reward=total)
    shaped = total
    if self.algo.overlong_cache_len is not None:
      T = self.settings.sampling.max_new_tokens
      penalty = soft_overlong_penalty(
        roll.lengths_N(), max_len=T, cache_len=min(self.algo.overlong_cache_len, T)
      )
      extras["reward/overlong"] = np.asarray(penalty)
      shaped = total + extras["reward/overlong"]
    extras["reward"] = np.asarray(shaped, np.float32)
    if self.algo.requires("extra:segment_ids") and "segment_ids" not in extras:
      extras["segment_ids"] = self.segment_ids(roll)
    return dataclasses.replace(roll, extras=extras)

  def segment_ids(self, roll: Rollout) -> np.ndarray:
    """int32 [N, T]: each completion token's segment, a new one after every generated token
    that ends a segment (`algo.segment_delimiters` in its text, or an id in
    `algo.segment_token_ids`); one segment per row without either."""
    if self._segment_end_ids is None:
      found = tokenizers.ids_containing(self.policy.tokenizer, self.algo.segment_delimiters)
      self._segment_end_ids = tuple(sorted(set(found) | set(self.algo.segment_token_ids)))
    tokens = np.asarray(roll.completion_NxT)
    if not self._segment_end_ids:
      return np.zeros(tokens.shape, np.int32)
    ids = segments.segment_ids_from_delimiters(tokens, self._segment_end_ids, roll.loss_mask_NxT)
    return np.asarray(ids)

  def collect_round(self, params, step: int, rnd: int, key) -> Rollout:
    examples = self.draw(step, rnd)
    roll = self.rollout_fn(self.policy, params, examples, jax.random.fold_in(key, rnd))
    return self.score(rollouts.to_host(roll), examples)

  def collect(self, params, step: int, key) -> tuple[Rollout, dict]:
    """The step's scored rollout and its metrics (of the first round: a fresh on-policy
    sample, unbiased by dynamic sampling's filtering)."""
    roll = self.collect_round(params, step, 0, key)
    metrics = rollout_metrics(roll)
    if self.algo.dynamic_sampling:
      roll, ds = dynamic_sampling(self, params, step, key, roll)
      metrics.update(ds)
    metrics["generated_tokens"] = metrics.pop("_generated") + metrics.pop("_generated_extra", 0)
    return roll, metrics

  # --- learn: reference / old / values -> advantages -> update ------------------------------

  def learn(
    self,
    state,
    roll: Rollout,
    ref_params,
    behaviour_params,
    key,
    timings=None,
    grad_norm_limit=None,
  ):
    """One update on a scored rollout: the passes the algorithm requires, its advantages, and
    the jitted update (skipping unsafe optimizer steps; `grad_norm_limit` bounds the gradient
    norm). Returns (state, metrics). With a `timings` dict (benchmarks), waits for the log-prob
    passes and records their wall time as `timings["reference_s"]`."""
    t0 = time.perf_counter()
    algo, shard = self.algo, self.settings.shard
    G = roll.prompt_group_size if self.share_prompt else 1
    seqs = shard(
      (roll.prompt_NxP, roll.prompt_mask_NxP, roll.completion_NxT, roll.completion_mask_NxT)
    )
    loss_mask = np.asarray(roll.loss_mask_NxT) & np.asarray(roll.row_valid_N)[:, None]
    behaviour = shard(np.asarray(roll.behaviour_logp_NxT))
    zeros = jnp.zeros(behaviour.shape, jnp.float32)
    ref = (
      self.logprob_fn(ref_params, *seqs, prompt_group_size=G) if algo.requires("ref_logp") else None
    )
    if self.on_policy:
      old = zeros  # the update uses stop_gradient(current log-probs): ratio exactly 1
    elif self.sampler_logp_exact:
      old = behaviour
    else:  # the behaviour policy's log-probs at the training temperature, untruncated
      old = self.logprob_fn(behaviour_params, *seqs, prompt_group_size=G)
    values = None
    if self.value_fn is not None:
      values = self.value_fn(self.policy_params(state, ref_params), state.critic_params, *seqs)
    if timings is not None:
      jax.block_until_ready((ref, old, values))
      timings["reference_s"] = time.perf_counter() - t0
    missing = [k for k in algo.required_extras if k not in roll.extras]
    if missing:
      raise ValueError(
        f"algorithm {algo.name!r} needs the extras {missing}; the rollout and "
        f"rewards gave {sorted(roll.extras)}"
      )
    inputs = algorithms.AdvantageInputs(
      rewards_N=jnp.asarray(roll.extras["reward"]),
      loss_mask_NxT=shard(loss_mask).astype(jnp.float32),
      logp_NxT=behaviour,
      ref_logp_NxT=ref,
      values_NxT=values,
      group_index_BxG=jnp.asarray(rollouts.group_index(roll.group_id_N, roll.row_valid_N)),
      extras={k: jnp.asarray(roll.extras[k]) for k in algo.required_extras},
    )
    adv, returns = _advantages(algo, inputs)
    T = loss_mask.shape[1]
    token_extras = {  # per-token extras (segment ids) travel with the batch to the loss
      k: np.asarray(roll.extras[k])
      for k in algo.required_extras
      if np.ndim(roll.extras[k]) == 2 and np.shape(roll.extras[k])[1] == T
    }
    ref = zeros if ref is None else ref
    batch = shard(TrainBatch(*seqs, loss_mask, adv, old, ref, values, returns, token_extras))
    frozen = ref_params if self.lora is not None else None  # the base weights under adapters
    state, m = self.update(
      state, batch, key, prompt_group_size=G, frozen=frozen, grad_norm_limit=grad_norm_limit
    )
    return state, {k: float(v) for k, v in distributed.fetch(m).items()}

  def policy_params(self, state, ref_params):
    """The policy's parameters: `state.params`, or under LoRA the reference (base) weights
    with the state's adapters merged in: the merged kernels are new arrays, every other leaf
    is the reference's own (no copy of the embedding); none is donated by the update, so the
    result is safe to keep across it."""
    if self.lora is None:
      return state.params
    return lora_lib.with_kernels(ref_params, _merged_kernels(ref_params, state.params, self.lora))

  def __call__(self, state, ref_params, step: int, key):
    """Collect and learn, synchronously: (state, metrics)."""
    sample_key, update_key = jax.random.split(key)
    params = self.policy_params(state, ref_params)
    roll, roll_metrics = self.collect(params, step, sample_key)
    state, m = self.learn(state, roll, ref_params, params, update_key)
    return state, {**roll_metrics, **m}


# Only the adapted kernels come out of the jit: returning the whole tree copied every leaf
# (W5's tied 151,936 x 896 embedding is 545 MB), and that copy lived beside the reference's
# through the sampling and the update.
_merged_kernels = jax.jit(lora_lib.merged_kernels, static_argnums=2)


@functools.partial(jax.jit, static_argnums=0)
def _advantages(algo, inputs):
  return algorithms.compute_advantages(algo, inputs)


def rollout_metrics(roll: Rollout) -> dict[str, float]:
  """Means of the rollout's reward components and extras, and its lengths."""
  x = roll.extras
  lengths = roll.lengths_N()
  out = dict(
    reward_mean=float(np.mean(x["total_reward"])),
    reward_std=float(np.std(x["total_reward"])),
    response_len_mean=float(lengths.mean()),
    _generated=int(lengths.sum()),
  )
  if "correct" in x:
    out["accuracy"] = float(np.mean(x["correct"]))
  if "reward/overlong" in x:
    out["reward_shaped_mean"] = float(np.mean(x["reward"]))
  for name, value in x.items():
    if name not in ("reward", "total_reward", "correct") and np.ndim(value) == 1:
      if np.issubdtype(np.asarray(value).dtype, np.number) or value.dtype == bool:
        out[name] = float(np.mean(value))
  return out


def dynamic_sampling(step: Step, params, step_index: int, key, first: Rollout):
  """DAPO's dynamic sampling around the rollout: groups whose rewards are all equal carry no
  signal and are dropped; more rounds are drawn, up to `dynamic_sampling_max_rounds` extra,
  until as many informative groups as the first round's are kept. If the rounds run out,
  dropped groups fill the batch (their advantages are 0), so shapes never change."""
  index = rollouts.group_index(first.group_id_N, first.row_valid_N)
  want, kept, dropped, rounds, generated = len(index), [], [], 0, 0
  roll = first
  for rnd in range(1 + step.algo.dynamic_sampling_max_rounds):
    if rnd:
      roll = step.collect_round(params, step_index, rnd, key)
      generated += int(roll.lengths_N().sum())
    rounds += 1
    for rows in rollouts.group_index(roll.group_id_N, roll.row_valid_N):
      rows = rows[rows >= 0]
      r = np.asarray(roll.extras["reward"])[rows]
      (kept if np.ptp(r) > 0 else dropped).append(
        rollouts.select_rows(roll, rows, prompt_group_size=roll.prompt_group_size)
      )
    if len(kept) >= want:
      break
  filled = max(0, want - len(kept))
  batch = rollouts.concat((kept + dropped[:filled])[:want])
  metrics = dict(
    ds_rounds=rounds,
    ds_dropped_groups=len(dropped),
    ds_filled_groups=filled,
    _generated_extra=generated,
  )
  return batch, metrics
