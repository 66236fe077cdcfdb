"""Named compositions of the pure objectives: what an RL method *is*, as data.

An `Algorithm` says how rewards become advantages, which per-token policy loss is used, how
per-token terms are reduced, where the KL to the reference goes, and how rewards are shaped or
groups filtered before that. The trainer and the loop read these fields; they never branch on a
method's name. A new method is a new preset function here (or `dataclasses.replace` of one in a
notebook), not a new trainer.

| preset | advantages | policy loss | aggregation | KL |
|---|---|---|---|---|
| grpo | group z-score (ddof=1) | clip 0.2 | seq_mean_token_mean | k3 in loss, 0.04 |
| dr_grpo | r - mean_g | clip 0.2 | seq_sum_const (max new tokens) | none |
| dapo | group z-score | clip 0.2 / 0.28 | token_mean | none; dynamic sampling; overlong (opt-in) |
| gspo | group z-score | GSPO sequence ratio, 3e-4 / 4e-4 | seq_mean_token_mean | none |
| gspo_token | group z-score | GSPO-token | seq_mean_token_mean | none |
| rloo | G/(G-1) (r - mean_g) | clip 0.2 | token_mean | none |
| reinforce_pp | whitened return-to-go of token rewards | clip 0.2 | token_mean | k1 in reward |
| reinforce_pp_baseline | same, group mean first | clip 0.2 | token_mean | k1 in reward |
| ppo | GAE (critic), whitened | clip 0.2, dual 3 | token_mean | k1 in reward; value loss |
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rl_jax.objectives import advantages as adv_lib
from rl_jax.objectives import kl as kl_lib
from rl_jax.objectives import policy_losses, shaping
from rl_jax.objectives.aggregation import AGGREGATION_MODES


class AdvantageInputs(NamedTuple):
  """What a token-level advantage estimator may read (N = B*G rows, prompt-major)."""

  rewards_BxG: jax.Array  # float32 shaped task rewards
  mask_NxT: jax.Array  # float32 1 on generated tokens
  logp_NxT: jax.Array  # behaviour-policy log-probs of the sampled tokens
  ref_logp_NxT: jax.Array | None  # reference log-probs (None when no KL is needed)
  values_NxT: jax.Array | None = None  # critic values at sampling time (PPO)


GroupAdvantageFn = Callable[[jax.Array], jax.Array]  # rewards_BxG -> adv_BxG
# inputs -> adv_NxT, or (adv_NxT, returns_NxT) for estimators that also produce value targets
TokenAdvantageFn = Callable[[AdvantageInputs], jax.Array | tuple[jax.Array, jax.Array]]
PolicyLossFn = Callable[..., jax.Array]  # (logp_NxT, old_logp_NxT, adv_NxT, mask_NxT) -> loss_NxT
KLFn = Callable[[jax.Array, jax.Array], jax.Array]  # (logp, ref_logp) -> per-token


@dataclasses.dataclass(frozen=True, kw_only=True)
class Algorithm:
  """A complete RL objective, composed from `rl_jax.objectives`.

  Attributes:
    name: for logs.
    advantages: rewards_BxG -> adv_BxG, sequence-level advantages broadcast over tokens.
    token_advantages: instead of `advantages` (exactly one is set): AdvantageInputs -> adv_NxT
      (REINFORCE++, PPO: anything that needs per-token rewards or values).
    policy_loss: (logp, old_logp, adv, mask) -> per-token loss, all [N, T].
    aggregation: one of `AGGREGATION_MODES`.
    aggregation_constant: the constant of `seq_sum_const` (None = max new tokens).
    kl_coef: weight of the KL to the reference policy (0 skips the reference pass).
    kl_estimator: per-token KL estimator used in the loss (and for the logged `kl`).
    kl_in_reward: False puts `kl_coef * KL` in the loss (GRPO); True folds it into the rewards
      and the loss has no KL term: token-level estimators (REINFORCE++, PPO) put
      -kl_coef * k1 on every token; group estimators see the sequence reward
      R - kl_coef * sum_t k1_t (k1 = logp - ref_logp of the sampled tokens).
    entropy_coef: weight of an entropy bonus (subtracted from the loss).
    clip_eps_low, clip_eps_high: the ratio clip range (for the clip-fraction metric).
    overlong_cache_len: if set, DAPO's soft overlong penalty with L_max = max new tokens and
      this L_cache is added to the task reward.
    dynamic_sampling: drop groups whose rewards are all equal (no signal) and sample more
      prompts until the batch is full, at most `dynamic_sampling_max_rounds` extra rounds.
    critic: train a value model (PPO); `token_advantages` then receives its values and must
      return (adv, returns).
    shared_trunk: the value head sits on the policy's own trunk (one network, the value loss
      also trains the trunk) instead of a separate critic initialised from it.
    value_clip_eps: the clip range of the clipped value loss.
    vf_coef: weight of the value loss.
  """

  name: str
  policy_loss: PolicyLossFn
  advantages: GroupAdvantageFn | None = None
  token_advantages: TokenAdvantageFn | None = None
  aggregation: str = "seq_mean_token_mean"
  aggregation_constant: float | None = None
  kl_coef: float = 0.0
  kl_estimator: KLFn = kl_lib.kl_k3
  kl_in_reward: bool = False
  entropy_coef: float = 0.0
  clip_eps_low: float = 0.2
  clip_eps_high: float = 0.2
  overlong_cache_len: int | None = None
  dynamic_sampling: bool = False
  dynamic_sampling_max_rounds: int = 3
  critic: bool = False
  shared_trunk: bool = False
  value_clip_eps: float = 0.2
  vf_coef: float = 1.0

  def __post_init__(self):
    if (self.advantages is None) == (self.token_advantages is None):
      raise ValueError(
        f"algorithm {self.name!r} needs exactly one of `advantages` (group "
        "estimator) and `token_advantages` (token-level estimator)"
      )
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
    if self.critic and self.token_advantages is None:
      raise ValueError("an algorithm with a critic needs token_advantages that use its values")

  @property
  def needs_reference(self) -> bool:
    return self.kl_coef > 0


def compute_advantages(
  algo: Algorithm, inputs: AdvantageInputs
) -> tuple[jax.Array, jax.Array | None]:
  """(adv_NxT, returns_NxT or None) for a batch: the token-level estimator if the algorithm has
  one, else the group estimator's sequence advantages broadcast over each row's tokens.
  Both are 0 on masked tokens; returns (value targets) come only from critic estimators."""
  mask = jnp.asarray(inputs.mask_NxT, jnp.float32)
  if algo.token_advantages is not None:
    out = algo.token_advantages(inputs)
    adv, returns = out if isinstance(out, tuple) else (out, None)
    return adv * mask, None if returns is None else returns * mask
  rewards = inputs.rewards_BxG
  if algo.kl_in_reward and algo.needs_reference and inputs.ref_logp_NxT is not None:
    rewards = shaping.sequence_kl_penalized_rewards(
      rewards, inputs.logp_NxT, inputs.ref_logp_NxT, mask, kl_coef=algo.kl_coef
    )
  adv_N = algo.advantages(rewards).reshape(-1)
  return adv_N[:, None] * mask, None


def shape_rewards(
  algo: Algorithm, rewards_N: jax.Array, lengths_N: jax.Array, max_new_tokens: int
) -> jax.Array:
  """Task rewards plus the algorithm's reward shaping (DAPO's overlong penalty)."""
  if algo.overlong_cache_len is None:
    return rewards_N
  return rewards_N + shaping.soft_overlong_penalty(
    lengths_N, max_len=max_new_tokens, cache_len=min(algo.overlong_cache_len, max_new_tokens)
  )


# ---------------------------------------------------------------------------------------------
# Building blocks.


def _clipped(eps_low: float, eps_high: float, dual_clip: float | None = None) -> PolicyLossFn:
  def loss(logp, old_logp, adv, mask):
    del mask  # token-level loss; masking happens in the aggregation
    return policy_losses.ppo_clip(
      logp, old_logp, adv, eps_low=eps_low, eps_high=eps_high, dual_clip=dual_clip
    )

  return loss


def _gspo_loss(eps_low: float, eps_high: float, token_level: bool) -> PolicyLossFn:
  def loss(logp, old_logp, adv, mask):
    return policy_losses.gspo(
      logp, old_logp, adv, mask, eps_low=eps_low, eps_high=eps_high, token_level=token_level
    )

  return loss


def reinforce_pp_advantages(
  inputs: AdvantageInputs, *, kl_coef: float, gamma: float = 1.0, group_baseline: bool = False
) -> jax.Array:
  """REINFORCE++ (arXiv:2501.03262): whitened return-to-go of per-token rewards.

  r_t = R * 1[t = last] - kl_coef * (logp_t - ref_logp_t)   (k1, the behaviour policy's tokens)
  G_t = sum_{t' >= t} gamma^(t'-t) r_t';   A = whiten(G) over every valid token of the batch.
  With `group_baseline` ("REINFORCE++-baseline") R is replaced by R - mean_g(R) first.
  """
  rewards = inputs.rewards_BxG
  if group_baseline:
    rewards = rewards - jnp.mean(rewards, axis=-1, keepdims=True)
  kl = None
  if kl_coef and inputs.ref_logp_NxT is not None:
    kl = kl_lib.kl_k1(inputs.logp_NxT, inputs.ref_logp_NxT)
  token_rewards = shaping.token_level_rewards(
    rewards.reshape(-1), inputs.mask_NxT, kl_NxT=kl, kl_coef=kl_coef
  )
  returns = adv_lib.discounted_returns(token_rewards, inputs.mask_NxT, gamma=gamma)
  return adv_lib.whiten(returns, inputs.mask_NxT)


def ppo_advantages(
  inputs: AdvantageInputs,
  *,
  kl_coef: float,
  gamma: float = 1.0,
  lam: float = 0.95,
  whiten_advantages: bool = True,
) -> tuple[jax.Array, jax.Array]:
  """PPO for language models (InstructGPT, arXiv:2203.02155): GAE over per-token rewards.

  r_t = R * 1[t = last] - kl_coef * (logp_t - ref_logp_t);  (A, G) = GAE(r, V, gamma, lam);
  returns G = A + V are the value targets; A is whitened over the batch's valid tokens.
  """
  if inputs.values_NxT is None:
    raise ValueError("PPO advantages need the critic's values")
  kl = None
  if kl_coef and inputs.ref_logp_NxT is not None:
    kl = kl_lib.kl_k1(inputs.logp_NxT, inputs.ref_logp_NxT)
  token_rewards = shaping.token_level_rewards(
    inputs.rewards_BxG.reshape(-1), inputs.mask_NxT, kl_NxT=kl, kl_coef=kl_coef
  )
  adv, returns = adv_lib.gae(
    token_rewards, inputs.values_NxT, inputs.mask_NxT, gamma=gamma, lam=lam
  )
  if whiten_advantages:
    adv = adv_lib.whiten(adv, inputs.mask_NxT)
  return adv, returns


def _no_extras(name: str, unused: dict) -> None:
  extra = {k: v for k, v in unused.items() if v is not None}
  if extra:
    raise ValueError(f"algorithm {name!r} does not take {sorted('algorithm.' + k for k in extra)}")


# ---------------------------------------------------------------------------------------------
# Presets. Keyword arguments are the config's `algorithm.*` fields; None keeps the default.


def grpo(
  *,
  kl_coef: float = 0.04,
  clip_eps_low: float = 0.2,
  clip_eps_high: float = 0.2,
  aggregation: str = "seq_mean_token_mean",
  std_ddof: int = 1,
  eps: float = 1e-6,
  entropy_coef: float = 0.0,
  kl_in_reward: bool = False,
  **unused,
) -> Algorithm:
  """GRPO (DeepSeekMath, arXiv:2402.03300): group z-score advantages, clipped ratio, k3 KL in
  the loss with beta=0.04, per-sequence mean of token means."""
  _no_extras("grpo", unused)
  return Algorithm(
    name="grpo",
    advantages=functools.partial(
      adv_lib.grpo_advantages, scale_by_std=True, ddof=std_ddof, eps=eps
    ),
    policy_loss=_clipped(clip_eps_low, clip_eps_high),
    aggregation=aggregation,
    kl_coef=kl_coef,
    kl_estimator=kl_lib.kl_k3,
    kl_in_reward=kl_in_reward,
    entropy_coef=entropy_coef,
    clip_eps_low=clip_eps_low,
    clip_eps_high=clip_eps_high,
  )


def dr_grpo(
  *,
  kl_coef: float = 0.0,
  clip_eps_low: float = 0.2,
  clip_eps_high: float = 0.2,
  aggregation: str = "seq_sum_const",
  entropy_coef: float = 0.0,
  kl_in_reward: bool = False,
  **unused,
) -> Algorithm:
  """Dr. GRPO (arXiv:2503.20783): r - mean_g without std scaling, token sums divided by a
  constant (the max completion length), no KL by default."""
  _no_extras("dr_grpo", unused)
  return Algorithm(
    name="dr_grpo",
    advantages=functools.partial(adv_lib.grpo_advantages, scale_by_std=False),
    policy_loss=_clipped(clip_eps_low, clip_eps_high),
    aggregation=aggregation,
    kl_coef=kl_coef,
    kl_in_reward=kl_in_reward,
    entropy_coef=entropy_coef,
    clip_eps_low=clip_eps_low,
    clip_eps_high=clip_eps_high,
  )


def dapo(
  *,
  kl_coef: float = 0.0,
  clip_eps_low: float = 0.2,
  clip_eps_high: float = 0.28,
  aggregation: str = "token_mean",
  std_ddof: int = 1,
  entropy_coef: float = 0.0,
  overlong_cache_len: int | None = 0,
  dynamic_sampling: bool = True,
  dynamic_sampling_max_rounds: int = 3,
  kl_in_reward: bool = False,
  **unused,
) -> Algorithm:
  """DAPO (arXiv:2503.14476): clip-higher (0.2 / 0.28), token-mean over the whole batch, no KL,
  soft overlong penalty, dynamic sampling (a switch: arXiv:2512.07611 found DAPO best without).

  `overlong_cache_len` is L_cache in tokens, with L_max = the max new tokens; 0 (the default)
  turns the penalty off. Set it together with `sampling.max_new_tokens` so that the ramp lies
  beyond the lengths of good answers, as the paper did (L_cache 4096 of L_max 20480);
  experiments/dapo.py shows how. On by default it would punish correct answers of the embedded
  tasks, whose max new tokens is exactly their longest answer.
  """
  _no_extras("dapo", unused)
  return Algorithm(
    name="dapo",
    advantages=functools.partial(adv_lib.grpo_advantages, scale_by_std=True, ddof=std_ddof),
    policy_loss=_clipped(clip_eps_low, clip_eps_high),
    aggregation=aggregation,
    kl_coef=kl_coef,
    kl_in_reward=kl_in_reward,
    entropy_coef=entropy_coef,
    clip_eps_low=clip_eps_low,
    clip_eps_high=clip_eps_high,
    overlong_cache_len=overlong_cache_len or None,
    dynamic_sampling=dynamic_sampling,
    dynamic_sampling_max_rounds=dynamic_sampling_max_rounds,
  )


def gspo(
  *,
  kl_coef: float = 0.0,
  clip_eps_low: float = 3e-4,
  clip_eps_high: float = 4e-4,
  aggregation: str = "seq_mean_token_mean",
  std_ddof: int = 1,
  entropy_coef: float = 0.0,
  token_level: bool = False,
  kl_in_reward: bool = False,
  **unused,
) -> Algorithm:
  """GSPO (arXiv:2507.18071): the clipped, length-normalised *sequence* likelihood ratio
  exp(mean_t(logp - old_logp)), eps 3e-4 / 4e-4, group z-score advantages, no KL.
  `token_level=True` is GSPO-token (same value, per-token gradient path)."""
  _no_extras("gspo", unused)
  return Algorithm(
    name="gspo_token" if token_level else "gspo",
    advantages=functools.partial(adv_lib.grpo_advantages, scale_by_std=True, ddof=std_ddof),
    policy_loss=_gspo_loss(clip_eps_low, clip_eps_high, token_level),
    aggregation=aggregation,
    kl_coef=kl_coef,
    kl_in_reward=kl_in_reward,
    entropy_coef=entropy_coef,
    clip_eps_low=clip_eps_low,
    clip_eps_high=clip_eps_high,
  )


def gspo_token(**kwargs) -> Algorithm:
  """GSPO-token: `gspo(token_level=True)`."""
  return gspo(token_level=True, **kwargs)


def rloo(
  *,
  kl_coef: float = 0.0,
  clip_eps_low: float = 0.2,
  clip_eps_high: float = 0.2,
  aggregation: str = "token_mean",
  entropy_coef: float = 0.0,
  kl_in_reward: bool = False,
  **unused,
) -> Algorithm:
  """RLOO (arXiv:2402.14740): leave-one-out baseline G/(G-1) (r - mean_g), clipped ratio,
  token mean."""
  _no_extras("rloo", unused)
  return Algorithm(
    name="rloo",
    advantages=adv_lib.rloo_advantages,
    policy_loss=_clipped(clip_eps_low, clip_eps_high),
    aggregation=aggregation,
    kl_coef=kl_coef,
    kl_in_reward=kl_in_reward,
    entropy_coef=entropy_coef,
    clip_eps_low=clip_eps_low,
    clip_eps_high=clip_eps_high,
  )


def reinforce_pp(
  *,
  kl_coef: float = 0.01,
  clip_eps_low: float = 0.2,
  clip_eps_high: float = 0.2,
  aggregation: str = "token_mean",
  entropy_coef: float = 0.0,
  gamma: float = 1.0,
  group_baseline: bool = False,
  kl_in_reward: bool = True,
  **unused,
) -> Algorithm:
  """REINFORCE++ (arXiv:2501.03262): token rewards (task reward at EOS minus kl_coef * k1 per
  token), return-to-go, whitened over the batch; clipped ratio; token mean; KL in the reward
  (`kl_in_reward=False` moves a k3 KL into the loss instead)."""
  _no_extras("reinforce_pp", unused)
  return Algorithm(
    name="reinforce_pp_baseline" if group_baseline else "reinforce_pp",
    token_advantages=functools.partial(
      reinforce_pp_advantages,
      kl_coef=kl_coef if kl_in_reward else 0.0,
      gamma=gamma,
      group_baseline=group_baseline,
    ),
    policy_loss=_clipped(clip_eps_low, clip_eps_high),
    aggregation=aggregation,
    kl_coef=kl_coef,
    kl_estimator=kl_lib.kl_k1 if kl_in_reward else kl_lib.kl_k3,
    kl_in_reward=kl_in_reward,
    entropy_coef=entropy_coef,
    clip_eps_low=clip_eps_low,
    clip_eps_high=clip_eps_high,
  )


def reinforce_pp_baseline(**kwargs) -> Algorithm:
  """REINFORCE++-baseline: the group mean reward is subtracted before the return-to-go."""
  return reinforce_pp(group_baseline=True, **kwargs)


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
  **unused,
) -> Algorithm:
  """PPO with a critic (arXiv:1707.06347; InstructGPT arXiv:2203.02155): GAE advantages from a
  value model initialised from the policy trunk, whitened; clipped ratio with dual clip c=3
  for A < 0; clipped value loss; per-token k1 KL folded into the reward; token mean.
  `shared_trunk=True` puts the value head on the policy's trunk instead (one network)."""
  _no_extras("ppo", unused)
  return Algorithm(
    name="ppo",
    token_advantages=functools.partial(
      ppo_advantages, kl_coef=kl_coef if kl_in_reward else 0.0, gamma=gamma, lam=gae_lambda
    ),
    policy_loss=_clipped(clip_eps_low, clip_eps_high, dual_clip),
    aggregation=aggregation,
    kl_coef=kl_coef,
    kl_estimator=kl_lib.kl_k1 if kl_in_reward else kl_lib.kl_k3,
    kl_in_reward=kl_in_reward,
    entropy_coef=entropy_coef,
    clip_eps_low=clip_eps_low,
    clip_eps_high=clip_eps_high,
    critic=True,
    shared_trunk=shared_trunk,
    value_clip_eps=value_clip_eps,
    vf_coef=vf_coef,
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
}


def make_algorithm(name: str, **overrides) -> Algorithm:
  """A preset by name; `overrides` set to None keep the preset's default."""
  if name not in PRESETS:
    raise ValueError(f"algorithm.name={name!r} is unknown; choose one of {sorted(PRESETS)}")
  return PRESETS[name](**{k: v for k, v in overrides.items() if v is not None})
