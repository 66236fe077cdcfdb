"""Named compositions of the pure objectives: what an RL method *is*, as data.

An `Algorithm` says how rewards become advantages, which per-token policy loss is used, how
per-token terms are reduced, where the KL to the reference goes, and what the step must
compute for it. Every hyperparameter is one field, read when the loss or the advantages are
computed, so `dataclasses.replace(grpo(), clip_eps_high=0.28)` changes the loss. The trainer and
the step never branch on a method's name. A new method is a new preset function here, or
`dataclasses.replace` of one in a notebook, not a new trainer.

| preset | advantages | policy loss | aggregation | KL |
|---|---|---|---|---|
| grpo | group z-score (ddof=1) | clip 0.2 | seq_mean_token_mean | k3 in loss, 0.04 |
| dr_grpo | r - mean_g | clip 0.2 | seq_sum_const (max new tokens) | none |
| dapo | group z-score | clip 0.2 / 0.28 | token_mean | none; dynamic sampling |
| gspo | group z-score | GSPO sequence ratio, 3e-4 / 4e-4 | seq_mean_token_mean | none |
| gspo_token | group z-score | GSPO-token | seq_mean_token_mean | none |
| rloo | G/(G-1) (r - mean_g) | clip 0.2 | token_mean | none |
| reinforce_pp | whitened return-to-go of token rewards | clip 0.2 | token_mean | k1 in reward |
| reinforce_pp_baseline | same, group mean first | clip 0.2 | token_mean | k1 in reward |
| ppo | GAE (critic), whitened | clip 0.2, dual 3 | token_mean | k1 in reward; value loss |
| rcc | r - mean_g r - 2 Cov_g(r, log pi/pi_ref) | clip 0.2 / 0.28 | token_mean | none |
| papo | z(outcome) + w_proc z(process among correct) | clip 0.2 | seq_mean_token_mean | none |
| uarm | reliability-weighted z-score (RM interval) | clip 0.2 | seq_mean_token_mean | none |
| segment | group z-score | clip 0.2 on per-segment (line) ratios | seq_mean_token_mean | none |
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rl_jax.objectives import advantages as adv_lib
from rl_jax.objectives import kl as kl_lib
from rl_jax.objectives import policy_losses, segments, shaping
from rl_jax.objectives.aggregation import AGGREGATION_MODES


class AdvantageInputs(NamedTuple):
  """What an advantage function may read; N rows, groups declared by `group_index_BxG`."""

  rewards_N: jax.Array  # float32 combined reward of each row (weighted reward components)
  loss_mask_NxT: jax.Array  # float32 1 on the tokens trained on
  logp_NxT: jax.Array  # behaviour-policy log-probs of the sampled tokens
  ref_logp_NxT: jax.Array | None  # reference log-probs (None unless required)
  values_NxT: jax.Array | None  # critic values at sampling time (None without a critic)
  group_index_BxG: jax.Array  # int32 rows of each group, padded with -1 (groups of any size)
  extras: Mapping[str, jax.Array] = {}  # the rollout's named per-row extras


# (algorithm, inputs) -> adv_NxT, or (adv_NxT, returns_NxT) for estimators with value targets
AdvantageFn = Callable[["Algorithm", AdvantageInputs], Any]
# (algorithm, logp_NxT, old_logp_NxT, adv_NxT, loss_mask_NxT) -> per-token loss [N, T]; a loss
# whose algorithm needs per-token extras ([N, T], e.g. "extra:segment_ids") also receives them
# as the keyword `extras` ({name: array})
PolicyLossFn = Callable[..., jax.Array]
KLFn = Callable[[jax.Array, jax.Array], jax.Array]  # (logp, ref_logp) -> per-token


@dataclasses.dataclass(frozen=True, kw_only=True)
class Algorithm:
  """A complete RL objective, composed from `rl_jax.objectives`.

  Attributes:
    name: for logs.
    advantages: (algorithm, AdvantageInputs) -> adv_NxT (or (adv_NxT, returns_NxT) with a
      critic). Group estimators are `group_advantages(fn)` of a pure `fn(rewards_BxG,
      mask_BxG, algorithm)`; they read their knobs (`std_ddof`, ...) from the algorithm.
    policy_loss: (algorithm, logp, old_logp, adv, loss_mask) -> per-token loss, all [N, T].
    aggregation: one of `AGGREGATION_MODES`.
    aggregation_constant: the constant of `seq_sum_const` (None = max new tokens).
    kl_coef: weight of the KL to the reference policy.
    kl_estimator: per-token KL estimator used in the loss (and for the logged `kl`).
    kl_in_reward: False puts `kl_coef * KL` in the loss (GRPO); True folds it into the rewards
      and the loss has no KL term: token-level estimators (REINFORCE++, PPO) put
      -kl_coef * k1 on every token; group estimators see the sequence reward
      R - kl_coef * sum_t k1_t (k1 = logp - ref_logp of the sampled tokens).
    entropy_coef: weight of an entropy bonus (subtracted from the loss).
    clip_eps_low, clip_eps_high: the ratio clip range (loss and clip-fraction metric).
    dual_clip: PPO's dual-clip constant c for A < 0 (None = off).
    std_ddof, std_eps: the group standard deviation of z-score estimators.
    gamma, gae_lambda, whiten: discount, GAE lambda and whitening of token-level estimators.
    overlong_cache_len: if set, DAPO's soft overlong penalty with L_max = max new tokens and
      this L_cache is added to the reward (as the reward component `overlong`).
    dynamic_sampling: drop groups whose rewards are all equal (no signal) and sample more
      prompts until the batch is full, at most `dynamic_sampling_max_rounds` extra rounds.
    critic: train a value model (PPO); the advantages then receive its values.
    shared_trunk: the value head sits on the policy's own trunk.
    value_clip_eps, vf_coef: the clipped value loss's range and weight.
    normalize_std: RCC: divide the corrected advantages by the group's reward std.
    w_proc: PAPO: the weight of the process advantage.
    uarm_alpha: UARM: the miscoverage the reward model's intervals were calibrated for.
    segment_delimiters, segment_token_ids: segment-level losses: a generated token ends a
      segment when its text contains one of the delimiters or its id is listed (the step
      derives the extra `segment_ids` from them; neither: one segment per completion).
    segment_reduce: "mean" or "sum" of a segment's token log-ratios (its log-ratio).
    max_segments: K, the segments per row (static); later segments merge into the K-th.
    needs: what the step must compute beyond what the fields above imply: "ref_logp"
      (reference log-probs even with kl_coef 0), or "extra:<name>" (a named per-row extra
      the rollout or the rewards must provide).
  """

  name: str
  advantages: AdvantageFn
  policy_loss: PolicyLossFn
  aggregation: str = "seq_mean_token_mean"
  aggregation_constant: float | None = None
  kl_coef: float = 0.0
  kl_estimator: KLFn = kl_lib.kl_k3
  kl_in_reward: bool = False
  entropy_coef: float = 0.0
  clip_eps_low: float = 0.2
  clip_eps_high: float = 0.2
  dual_clip: float | None = None
  std_ddof: int = 1
  std_eps: float = 1e-6
  gamma: float = 1.0
  gae_lambda: float = 0.95
  whiten: bool = True
  overlong_cache_len: int | None = None
  dynamic_sampling: bool = False
  dynamic_sampling_max_rounds: int = 3
  critic: bool = False
  shared_trunk: bool = False
  value_clip_eps: float = 0.2
  vf_coef: float = 1.0
  normalize_std: bool = False
  w_proc: float = 1.0
  uarm_alpha: float = 0.1
  segment_delimiters: tuple[str, ...] = ()
  segment_token_ids: tuple[int, ...] = ()
  segment_reduce: str = "mean"
  max_segments: int = 16
  needs: frozenset[str] = frozenset()

  def __post_init__(self):
    if self.aggregation not in AGGREGATION_MODES:
      raise ValueError(
        f"algorithm.aggregation={self.aggregation!r} is unknown; choose one of "
        f"{list(AGGREGATION_MODES)}"
      )
    if self.kl_coef < 0:
      raise ValueError(f"algorithm.kl_coef must be >= 0, got {self.kl_coef}")
    if self.overlong_cache_len is not None and self.overlong_cache_len < 1:
      raise ValueError(f"algorithm.overlong_cache_len must be >= 1, got {self.overlong_cache_len}")
    if self.dynamic_sampling_max_rounds < 0:
      raise ValueError("algorithm.dynamic_sampling_max_rounds must be >= 0")
    if self.clip_eps_low < 0 or self.clip_eps_high < 0:
      raise ValueError("algorithm.clip_eps_low and clip_eps_high must be >= 0")
    if self.segment_reduce not in ("mean", "sum"):
      raise ValueError(
        f"algorithm.segment_reduce must be 'mean' or 'sum', got {self.segment_reduce!r}"
      )
    if self.max_segments < 1:
      raise ValueError(f"algorithm.max_segments must be >= 1, got {self.max_segments}")
    unknown = {n for n in self.needs if n != "ref_logp" and not n.startswith("extra:")}
    if unknown:
      raise ValueError(f"algorithm.needs has {sorted(unknown)}; use 'ref_logp' or 'extra:<name>'")

  def requires(self, what: str) -> bool:
    """Whether the step must compute `what`: "ref_logp", "values" or "extra:<name>"."""
    if what == "ref_logp":
      return self.kl_coef > 0 or "ref_logp" in self.needs
    if what == "values":
      return self.critic
    return what in self.needs

  @property
  def required_extras(self) -> tuple[str, ...]:
    return tuple(sorted(n.split(":", 1)[1] for n in self.needs if n.startswith("extra:")))


def compute_advantages(
  algo: Algorithm, inputs: AdvantageInputs
) -> tuple[jax.Array, jax.Array | None]:
  """(adv_NxT, returns_NxT or None) for a batch, both 0 off the loss mask; returns (value
  targets) come only from critic estimators."""
  out = algo.advantages(algo, inputs)
  adv, returns = out if isinstance(out, tuple) else (out, None)
  mask = jnp.asarray(inputs.loss_mask_NxT, jnp.float32)
  return adv * mask, None if returns is None else returns * mask


def sequence_rewards(algo: Algorithm, inputs: AdvantageInputs) -> jax.Array:
  """The rewards a group estimator sees: with `kl_in_reward`, R - kl_coef * sum_t k1_t."""
  rewards = jnp.asarray(inputs.rewards_N, jnp.float32)
  if algo.kl_in_reward and algo.kl_coef > 0 and inputs.ref_logp_NxT is not None:
    rewards = shaping.sequence_kl_penalized_rewards(
      rewards, inputs.logp_NxT, inputs.ref_logp_NxT, inputs.loss_mask_NxT, kl_coef=algo.kl_coef
    )
  return rewards


def per_group(fn: Callable[..., jax.Array], algo: Algorithm, rewards_N, group_index_BxG, *others_N):
  """Runs a group estimator `fn(rewards_BxG, mask_BxG, algo, *others_BxG) -> adv_BxG` on the
  declared groups (`group_index_BxG`: rows of each group, padded to the largest group with -1;
  `others_N`: more per-row arrays the estimator reads, gathered the same way) and returns each
  row's advantage [N] (0 for rows in no group)."""
  mask_BxG = group_index_BxG >= 0
  take = lambda x_N: jnp.where(mask_BxG, x_N[jnp.maximum(group_index_BxG, 0)], 0.0)
  adv_BxG = fn(take(rewards_N), mask_BxG.astype(jnp.float32), algo, *map(take, others_N))
  N = rewards_N.shape[0]
  scatter = jnp.where(mask_BxG, group_index_BxG, N)  # padding goes out of bounds: dropped
  return jnp.zeros((N,), jnp.float32).at[scatter].set(adv_BxG, mode="drop")


def group_advantages(fn: Callable[..., jax.Array]) -> AdvantageFn:
  """An advantage function from a group estimator `fn(rewards_BxG, mask_BxG, algo) -> adv_BxG`
  (`per_group`): each row's sequence advantage, broadcast over its trained tokens."""

  def advantages(algo: Algorithm, inputs: AdvantageInputs) -> jax.Array:
    adv_N = per_group(fn, algo, sequence_rewards(algo, inputs), inputs.group_index_BxG)
    return adv_N[:, None] * inputs.loss_mask_NxT

  advantages.__name__ = getattr(fn, "__name__", "group_advantages")
  advantages.__doc__ = fn.__doc__
  advantages.group_fn = fn
  return advantages


@group_advantages
def group_zscore(rewards_BxG, mask_BxG, algo):
  """GRPO: (r - mean_g) / (std_g + eps), std with `algo.std_ddof`."""
  return adv_lib.grpo_advantages(
    rewards_BxG, ddof=algo.std_ddof, eps=algo.std_eps, mask_BxG=mask_BxG
  )


@group_advantages
def group_centred(rewards_BxG, mask_BxG, algo):
  """Dr. GRPO: r - mean_g."""
  del algo
  return adv_lib.grpo_advantages(rewards_BxG, scale_by_std=False, mask_BxG=mask_BxG)


@group_advantages
def leave_one_out(rewards_BxG, mask_BxG, algo):
  """RLOO: G/(G-1) (r - mean_g)."""
  del algo
  return adv_lib.rloo_advantages(rewards_BxG, mask_BxG=mask_BxG)


def reward_confidence_corrected(algo: Algorithm, inputs: AdvantageInputs) -> jax.Array:
  """RCC (Right meets wrong, arXiv:2603.13134): `objectives.advantages.rcc_advantages` with
  delta = sum_t mask (logp - ref_logp), the sampled sequence's log-ratio to the reference
  (behaviour log-probs: a constant of the update)."""
  mask = jnp.asarray(inputs.loss_mask_NxT, jnp.float32)
  delta_N = jnp.sum(mask * (inputs.logp_NxT - inputs.ref_logp_NxT), axis=-1)
  rcc = lambda r, m, a, delta: adv_lib.rcc_advantages(
    r, delta, normalize_std=a.normalize_std, eps=a.std_eps, mask_BxG=m
  )
  adv_N = per_group(rcc, algo, sequence_rewards(algo, inputs), inputs.group_index_BxG, delta_N)
  return adv_N[:, None] * mask


def process_decoupled(algo: Algorithm, inputs: AdvantageInputs) -> jax.Array:
  """PAPO (arXiv:2603.26535): `objectives.advantages.papo_advantages` of the row's reward (the
  outcome) and the extra `process` (a process score), correctness from the extra `correct`;
  A = A_out + w_proc A_proc, the process term among the group's correct rows only."""
  papo = lambda r, m, a, process, correct: adv_lib.papo_advantages(
    r, process, w_proc=a.w_proc, correct_BxG=correct, ddof=a.std_ddof, eps=a.std_eps, mask_BxG=m
  )
  process_N = jnp.asarray(inputs.extras["process"], jnp.float32)
  correct_N = jnp.asarray(inputs.extras["correct"], jnp.float32)
  rewards_N = sequence_rewards(algo, inputs)
  adv_N = per_group(papo, algo, rewards_N, inputs.group_index_BxG, process_N, correct_N)
  return adv_N[:, None] * inputs.loss_mask_NxT


def uncertainty_weighted(algo: Algorithm, inputs: AdvantageInputs) -> jax.Array:
  """UARM (arXiv:2606.19818): `objectives.advantages.uarm_advantages` of the row's reward (a
  reward model's median) and the extra `rm_interval_width` (its calibrated interval's width
  at miscoverage `uarm_alpha`)."""
  uarm = lambda r, m, a, width: adv_lib.uarm_advantages(
    r, width, alpha=a.uarm_alpha, eps=a.std_eps, mask_BxG=m
  )
  width_N = jnp.asarray(inputs.extras["rm_interval_width"], jnp.float32)
  adv_N = per_group(uarm, algo, sequence_rewards(algo, inputs), inputs.group_index_BxG, width_N)
  return adv_N[:, None] * inputs.loss_mask_NxT


def _token_rewards(algo: Algorithm, inputs: AdvantageInputs, rewards_N) -> jax.Array:
  """r_t = R * 1[t = last] - kl_coef * k1_t (the KL only with `kl_in_reward`)."""
  kl = None
  if algo.kl_in_reward and algo.kl_coef > 0 and inputs.ref_logp_NxT is not None:
    kl = kl_lib.kl_k1(inputs.logp_NxT, inputs.ref_logp_NxT)
  return shaping.token_level_rewards(
    rewards_N, inputs.loss_mask_NxT, kl_NxT=kl, kl_coef=algo.kl_coef
  )


def reinforce_pp_returns(algo: Algorithm, inputs: AdvantageInputs) -> jax.Array:
  """REINFORCE++ (arXiv:2501.03262): whitened return-to-go of per-token rewards.

  r_t = R * 1[t = last] - kl_coef * (logp_t - ref_logp_t)   (k1, the behaviour policy's tokens)
  G_t = sum_{t' >= t} gamma^(t'-t) r_t';   A = whiten(G) over every trained token of the batch.
  """
  rewards = jnp.asarray(inputs.rewards_N, jnp.float32)
  token_rewards = _token_rewards(algo, inputs, rewards)
  returns = adv_lib.discounted_returns(token_rewards, inputs.loss_mask_NxT, gamma=algo.gamma)
  return adv_lib.whiten(returns, inputs.loss_mask_NxT)


def reinforce_pp_baseline_returns(algo: Algorithm, inputs: AdvantageInputs) -> jax.Array:
  """REINFORCE++-baseline: `reinforce_pp_returns` of R - mean_g(R) (over declared groups)."""
  rewards_N = jnp.asarray(inputs.rewards_N, jnp.float32)
  centred = per_group(group_centred.group_fn, algo, rewards_N, inputs.group_index_BxG)
  return reinforce_pp_returns(algo, inputs._replace(rewards_N=centred))


def gae_advantages(algo: Algorithm, inputs: AdvantageInputs) -> tuple[jax.Array, jax.Array]:
  """PPO for language models (InstructGPT, arXiv:2203.02155): GAE over per-token rewards.

  r_t = R * 1[t = last] - kl_coef * (logp_t - ref_logp_t);  (A, G) = GAE(r, V, gamma, lam);
  returns G = A + V are the value targets; A is whitened over the batch's trained tokens.
  """
  if inputs.values_NxT is None:
    raise ValueError("PPO advantages need the critic's values")
  token_rewards = _token_rewards(algo, inputs, jnp.asarray(inputs.rewards_N, jnp.float32))
  adv, returns = adv_lib.gae(
    token_rewards, inputs.values_NxT, inputs.loss_mask_NxT, gamma=algo.gamma, lam=algo.gae_lambda
  )
  if algo.whiten:
    adv = adv_lib.whiten(adv, inputs.loss_mask_NxT)
  return adv, returns


# ---------------------------------------------------------------------------------------------
# Policy losses: per-token terms reading their clip ranges from the algorithm.


def clipped_loss(algo: Algorithm, logp, old_logp, adv, mask) -> jax.Array:
  """PPO's clipped surrogate with `clip_eps_low` / `clip_eps_high` and `dual_clip`."""
  del mask  # token-level loss; masking happens in the aggregation
  return policy_losses.ppo_clip(
    logp,
    old_logp,
    adv,
    eps_low=algo.clip_eps_low,
    eps_high=algo.clip_eps_high,
    dual_clip=algo.dual_clip,
  )


def gspo_loss(algo: Algorithm, logp, old_logp, adv, mask) -> jax.Array:
  """GSPO's clipped length-normalised sequence ratio."""
  return policy_losses.gspo(
    logp, old_logp, adv, mask, eps_low=algo.clip_eps_low, eps_high=algo.clip_eps_high
  )


def gspo_token_loss(algo: Algorithm, logp, old_logp, adv, mask) -> jax.Array:
  """GSPO-token: the sequence ratio's value with a per-token gradient path."""
  return policy_losses.gspo(
    logp,
    old_logp,
    adv,
    mask,
    eps_low=algo.clip_eps_low,
    eps_high=algo.clip_eps_high,
    token_level=True,
  )


def segment_loss(algo: Algorithm, logp, old_logp, adv, mask, *, extras) -> jax.Array:
  """Segment-level clipped loss (GPG, arXiv:2512.10365): `objectives.segments.segment_clip`
  over the extra `segment_ids`, segments past `max_segments` merged into the last."""
  ids = jnp.minimum(extras["segment_ids"], algo.max_segments - 1)
  return segments.segment_clip(
    logp,
    old_logp,
    adv,
    mask,
    ids,
    num_segments=algo.max_segments,
    reduce=algo.segment_reduce,
    eps_low=algo.clip_eps_low,
    eps_high=algo.clip_eps_high,
  )


def parse_delimiters(spec: str) -> tuple[str, ...]:
  """Delimiters from a config string: `|`-separated, with the escapes `\\n`, `\\t` and
  `\\|` read (so a shell can write them): `"\\n|<step>"` -> ("\n", "<step>"); "" -> ()."""
  out, cur, i = [], "", 0
  while i < len(spec):
    c = spec[i]
    if c == "\\" and i + 1 < len(spec) and spec[i + 1] in "nt|\\":
      cur += {"n": "\n", "t": "\t"}.get(spec[i + 1], spec[i + 1])
      i += 2
      continue
    if c == "|":
      out.append(cur)
      cur = ""
    else:
      cur += c
    i += 1
  out.append(cur)
  return tuple(d for d in out if d)


# ---------------------------------------------------------------------------------------------
# Presets. Keyword arguments are the config's `algorithm.*` keys (checked against these
# signatures); each maps to the field of the same name.


def grpo(
  *,
  kl_coef: float = 0.04,
  clip_eps_low: float = 0.2,
  clip_eps_high: float = 0.2,
  aggregation: str = "seq_mean_token_mean",
  std_ddof: int = 1,
  entropy_coef: float = 0.0,
  kl_in_reward: bool = False,
) -> Algorithm:
  """GRPO (DeepSeekMath, arXiv:2402.03300): group z-score advantages, clipped ratio, k3 KL in
  the loss with beta=0.04, per-sequence mean of token means."""
  return Algorithm(name="grpo", advantages=group_zscore, policy_loss=clipped_loss, **locals())


def dr_grpo(
  *,
  kl_coef: float = 0.0,
  clip_eps_low: float = 0.2,
  clip_eps_high: float = 0.2,
  aggregation: str = "seq_sum_const",
  entropy_coef: float = 0.0,
  kl_in_reward: bool = False,
) -> Algorithm:
  """Dr. GRPO (arXiv:2503.20783): r - mean_g without std scaling, token sums divided by a
  constant (the max completion length), no KL by default."""
  return Algorithm(name="dr_grpo", advantages=group_centred, policy_loss=clipped_loss, **locals())


def dapo(
  *,
  kl_coef: float = 0.0,
  clip_eps_low: float = 0.2,
  clip_eps_high: float = 0.28,
  aggregation: str = "token_mean",
  std_ddof: int = 1,
  entropy_coef: float = 0.0,
  overlong_cache_len: int = 0,
  dynamic_sampling: bool = True,
  dynamic_sampling_max_rounds: int = 3,
  kl_in_reward: bool = False,
) -> Algorithm:
  """DAPO (arXiv:2503.14476): clip-higher (0.2 / 0.28), token-mean over the whole batch, no KL,
  soft overlong penalty, dynamic sampling (a switch: arXiv:2512.07611 found DAPO best without).

  `overlong_cache_len` is L_cache in tokens, with L_max = the max new tokens; 0 (the default)
  turns the penalty off. Set it together with `sampling.max_new_tokens` so that the ramp lies
  beyond the lengths of good answers, as the paper did (L_cache 4096 of L_max 20480);
  experiments/dapo.py shows how. On by default it would punish correct answers of the embedded
  tasks, whose max new tokens is exactly their longest answer.
  """
  kwargs = dict(locals(), overlong_cache_len=overlong_cache_len or None)
  return Algorithm(name="dapo", advantages=group_zscore, policy_loss=clipped_loss, **kwargs)


def gspo(
  *,
  kl_coef: float = 0.0,
  clip_eps_low: float = 3e-4,
  clip_eps_high: float = 4e-4,
  aggregation: str = "seq_mean_token_mean",
  std_ddof: int = 1,
  entropy_coef: float = 0.0,
  kl_in_reward: bool = False,
) -> Algorithm:
  """GSPO (arXiv:2507.18071): the clipped, length-normalised *sequence* likelihood ratio
  exp(mean_t(logp - old_logp)), eps 3e-4 / 4e-4, group z-score advantages, no KL."""
  return Algorithm(name="gspo", advantages=group_zscore, policy_loss=gspo_loss, **locals())


def gspo_token(**kwargs) -> Algorithm:
  """GSPO-token: GSPO's value with a per-token gradient path (same keyword arguments)."""
  return dataclasses.replace(gspo(**kwargs), name="gspo_token", policy_loss=gspo_token_loss)


gspo_token.__signature__ = inspect.signature(gspo, eval_str=True)


def rloo(
  *,
  kl_coef: float = 0.0,
  clip_eps_low: float = 0.2,
  clip_eps_high: float = 0.2,
  aggregation: str = "token_mean",
  entropy_coef: float = 0.0,
  kl_in_reward: bool = False,
) -> Algorithm:
  """RLOO (arXiv:2402.14740): leave-one-out baseline G/(G-1) (r - mean_g), clipped ratio,
  token mean."""
  return Algorithm(name="rloo", advantages=leave_one_out, policy_loss=clipped_loss, **locals())


def reinforce_pp(
  *,
  kl_coef: float = 0.01,
  clip_eps_low: float = 0.2,
  clip_eps_high: float = 0.2,
  aggregation: str = "token_mean",
  entropy_coef: float = 0.0,
  gamma: float = 1.0,
  kl_in_reward: bool = True,
) -> Algorithm:
  """REINFORCE++ (arXiv:2501.03262): token rewards (task reward at EOS minus kl_coef * k1 per
  token), return-to-go, whitened over the batch; clipped ratio; token mean; KL in the reward
  (`kl_in_reward=False` moves a k3 KL into the loss instead)."""
  return Algorithm(
    name="reinforce_pp",
    advantages=reinforce_pp_returns,
    policy_loss=clipped_loss,
    kl_estimator=kl_lib.kl_k1 if kl_in_reward else kl_lib.kl_k3,
    **locals(),
  )


def reinforce_pp_baseline(**kwargs) -> Algorithm:
  """REINFORCE++-baseline: the group mean reward is subtracted before the return-to-go."""
  return dataclasses.replace(
    reinforce_pp(**kwargs), name="reinforce_pp_baseline", advantages=reinforce_pp_baseline_returns
  )


reinforce_pp_baseline.__signature__ = inspect.signature(reinforce_pp, eval_str=True)


def ppo(
  *,
  kl_coef: float = 0.01,
  clip_eps_low: float = 0.2,
  clip_eps_high: float = 0.2,
  dual_clip: float = 3.0,
  aggregation: str = "token_mean",
  entropy_coef: float = 0.0,
  gamma: float = 1.0,
  gae_lambda: float = 0.95,
  value_clip_eps: float = 0.2,
  vf_coef: float = 1.0,
  shared_trunk: bool = False,
  kl_in_reward: bool = True,
) -> Algorithm:
  """PPO with a critic (arXiv:1707.06347; InstructGPT arXiv:2203.02155): GAE advantages from a
  value model initialised from the policy trunk, whitened; clipped ratio with dual clip c=3
  for A < 0; clipped value loss; per-token k1 KL folded into the reward; token mean.
  `shared_trunk=True` puts the value head on the policy's trunk instead (one network)."""
  return Algorithm(
    name="ppo",
    advantages=gae_advantages,
    policy_loss=clipped_loss,
    kl_estimator=kl_lib.kl_k1 if kl_in_reward else kl_lib.kl_k3,
    critic=True,
    **locals(),
  )


def rcc(
  *,
  kl_coef: float = 0.0,
  clip_eps_low: float = 0.2,
  clip_eps_high: float = 0.28,
  aggregation: str = "token_mean",
  normalize_std: bool = False,
  entropy_coef: float = 0.0,
) -> Algorithm:
  """RCC (Right meets wrong, arXiv:2603.13134): the group baseline corrected by the covariance
  of reward and sequence log-ratio to the reference, A = r - mean_g(r) - 2 Cov_g(r, delta);
  the paper's clip 0.2 / 0.28; reference log-probs are computed even without a KL term."""
  return Algorithm(
    name="rcc",
    advantages=reward_confidence_corrected,
    policy_loss=clipped_loss,
    needs=frozenset({"ref_logp"}),
    **locals(),
  )


def papo(
  *,
  w_proc: float = 1.0,
  kl_coef: float = 0.0,
  clip_eps_low: float = 0.2,
  clip_eps_high: float = 0.2,
  aggregation: str = "seq_mean_token_mean",
  std_ddof: int = 1,
  entropy_coef: float = 0.0,
  kl_in_reward: bool = False,
) -> Algorithm:
  """PAPO (arXiv:2603.26535): outcome z-score over the group plus `w_proc` times the process
  score's z-score among the group's correct rows; GRPO's loss otherwise (no KL by default). The
  rewards must give the extras `correct` and `process` (the `steps` task's verifier does): the
  row's reward is the outcome, so the process score must not also be a weighted reward term."""
  return Algorithm(
    name="papo",
    advantages=process_decoupled,
    policy_loss=clipped_loss,
    needs=frozenset({"extra:correct", "extra:process"}),
    **locals(),
  )


def uarm(
  *,
  uarm_alpha: float = 0.1,
  kl_coef: float = 0.0,
  clip_eps_low: float = 0.2,
  clip_eps_high: float = 0.2,
  aggregation: str = "seq_mean_token_mean",
  entropy_coef: float = 0.0,
  kl_in_reward: bool = False,
) -> Algorithm:
  """UARM (arXiv:2606.19818): group advantages weighted by each reward's reliability, from a
  calibrated quantile reward model's interval width (the extra `rm_interval_width`); the row's
  reward is the model's median. GRPO's loss otherwise (no KL by default)."""
  return Algorithm(
    name="uarm",
    advantages=uncertainty_weighted,
    policy_loss=clipped_loss,
    needs=frozenset({"extra:rm_interval_width"}),
    **locals(),
  )


def segment(
  *,
  segment_delimiters: str = "\\n",
  segment_token_ids: str = "",
  segment_reduce: str = "mean",
  max_segments: int = 16,
  kl_coef: float = 0.0,
  clip_eps_low: float = 0.2,
  clip_eps_high: float = 0.2,
  aggregation: str = "seq_mean_token_mean",
  std_ddof: int = 1,
  entropy_coef: float = 0.0,
  kl_in_reward: bool = False,
) -> Algorithm:
  """Segment-level policy gradient (GPG for Transformers, arXiv:2512.10365): GRPO's advantages
  with one clipped ratio per segment, exp(mean (or sum) of the segment's token log-ratios).
  Segments end at generated tokens containing a delimiter (`segment_delimiters`, "|"-separated,
  default a newline: one segment per line) or with an id in `segment_token_ids` (comma-separated).
  One-token segments are GRPO's token-level loss; no delimiters (one segment per completion)
  with "mean" is GSPO's sequence ratio. At ratio 1 (one on-policy update) every segmentation
  has the same gradient; they differ once the ratio moves (several minibatches or epochs)."""
  kwargs = dict(locals())
  kwargs["segment_delimiters"] = parse_delimiters(segment_delimiters)
  ids = [s.strip() for s in segment_token_ids.split(",") if s.strip()]
  try:
    kwargs["segment_token_ids"] = tuple(int(s) for s in ids)
  except ValueError:
    raise ValueError(
      f"algorithm.segment_token_ids must be comma-separated integers, got {segment_token_ids!r}"
    ) from None
  return Algorithm(
    name="segment",
    advantages=group_zscore,
    policy_loss=segment_loss,
    needs=frozenset({"extra:segment_ids"}),
    **kwargs,
  )


PRESETS: dict[str, Callable[..., Algorithm]] = {
  "ppo": ppo,
  "grpo": grpo,
  "dr_grpo": dr_grpo,
  "dapo": dapo,
  "gspo": gspo,
  "gspo_token": gspo_token,
  "rloo": rloo,
  "reinforce_pp": reinforce_pp,
  "reinforce_pp_baseline": reinforce_pp_baseline,
  "rcc": rcc,
  "papo": papo,
  "uarm": uarm,
  "segment": segment,
}


def make_algorithm(name: str, **kwargs) -> Algorithm:
  """A preset by name with keyword overrides (checked against the preset's signature)."""
  if name not in PRESETS:
    raise ValueError(f"algorithm.name={name!r} is unknown; choose one of {sorted(PRESETS)}")
  return PRESETS[name](**kwargs)


def build(component) -> Algorithm:
  """The algorithm a config section names (`components.Component`): a preset name, or an import
  path to a preset-like function or to an `Algorithm`; its keys are the function's arguments."""
  from rl_jax import components  # pylint: disable=import-outside-toplevel

  algo = components.build("algorithm", component, PRESETS)
  if not isinstance(algo, Algorithm):
    raise components.ComponentError(
      f"config field 'algorithm.name'={component.name!r} gave {type(algo).__name__}, not an "
      "rl_jax.algorithms.Algorithm"
    )
  return algo


def check(component):
  """An `algorithm` config section checked (keyword arguments converted to the preset's
  annotated types); the algorithm is built once to run its own value checks."""
  from rl_jax import components  # pylint: disable=import-outside-toplevel

  fn = components.resolve("algorithm.name", component.name, PRESETS)
  if callable(fn):
    component = components.Component.of(
      component.name, **components.check_kwargs("algorithm", fn, component.args)
    )
  build(component)
  return component
