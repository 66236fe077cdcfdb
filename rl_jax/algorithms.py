"""Named compositions of the pure objectives: what an RL method *is*, as data.

An `Algorithm` says how rewards become advantages, which per-token policy loss is used, how
per-token terms are reduced, and where the KL to the reference goes. The trainer reads these
fields; it never branches on a method's name. A new method is a new preset function here (or a
new `Algorithm(...)` in a notebook), not a new trainer.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax

from rl_jax.objectives import advantages as adv_lib
from rl_jax.objectives import kl as kl_lib
from rl_jax.objectives import policy_losses
from rl_jax.objectives.aggregation import AGGREGATION_MODES

AdvantageFn = Callable[[jax.Array], jax.Array]  # rewards_BxG -> adv_BxG
PolicyLossFn = Callable[..., jax.Array]  # (logp_NxT, old_logp_NxT, adv_NxT, mask_NxT) -> loss_NxT
KLFn = Callable[[jax.Array, jax.Array], jax.Array]  # (logp, ref_logp) -> per-token


@dataclasses.dataclass(frozen=True)
class Algorithm:
  """A complete RL objective, composed from `rl_jax.objectives`.

  Attributes:
    name: for logs.
    advantages: rewards_BxG -> adv_BxG (sequence-level advantages, broadcast to tokens).
    policy_loss: (logp, old_logp, adv, mask) -> per-token loss, all [N, T].
    aggregation: one of `AGGREGATION_MODES`.
    aggregation_constant: the constant of `seq_sum_const` (None = max new tokens).
    kl_coef: weight of the KL to the reference policy (0 skips the reference pass).
    kl_estimator: per-token KL estimator (k1, k2 or k3).
    kl_in_reward: False puts `kl_coef * KL` in the loss (GRPO); True folds it into the
      reward (PPO, REINFORCE++; needs a token-level advantage estimator).
    entropy_coef: weight of an entropy bonus (subtracted from the loss).
    clip_eps_low, clip_eps_high: the ratio clip range, for the clip-fraction metric.
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

  def __post_init__(self):
    if self.aggregation not in AGGREGATION_MODES:
      raise ValueError(f"algorithm.aggregation={self.aggregation!r} is unknown; choose one of "
                       f"{list(AGGREGATION_MODES)}")
    if self.kl_coef < 0:
      raise ValueError(f"algorithm.kl_coef must be >= 0, got {self.kl_coef}")
    if self.kl_in_reward:
      raise NotImplementedError("algorithm.kl_in_reward=True needs token-level advantages "
                                "(PPO / REINFORCE++), which are not implemented yet")


def _clipped(eps_low: float, eps_high: float, dual_clip: float | None = None) -> PolicyLossFn:
  def loss(logp, old_logp, adv, mask):
    del mask  # token-level loss; masking happens in the aggregation
    return policy_losses.ppo_clip(logp, old_logp, adv, eps_low=eps_low, eps_high=eps_high,
                                  dual_clip=dual_clip)
  return loss


def grpo(*, kl_coef: float = 0.04, clip_eps_low: float = 0.2, clip_eps_high: float = 0.2,
         aggregation: str = "seq_mean_token_mean", std_ddof: int = 1, eps: float = 1e-6,
         entropy_coef: float = 0.0, **unused) -> Algorithm:
  """GRPO (DeepSeekMath, arXiv:2402.03300): group z-score advantages, clipped ratio, k3 KL in
  the loss with beta=0.04, per-sequence mean of token means."""
  _no_extras("grpo", unused)
  return Algorithm(
      name="grpo",
      advantages=functools.partial(adv_lib.grpo_advantages, scale_by_std=True, ddof=std_ddof,
                                   eps=eps),
      policy_loss=_clipped(clip_eps_low, clip_eps_high),
      aggregation=aggregation, kl_coef=kl_coef, kl_estimator=kl_lib.kl_k3,
      entropy_coef=entropy_coef, clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high)


def dr_grpo(*, kl_coef: float = 0.0, clip_eps_low: float = 0.2, clip_eps_high: float = 0.2,
            aggregation: str = "seq_sum_const", aggregation_constant: float | None = None,
            entropy_coef: float = 0.0, **unused) -> Algorithm:
  """Dr. GRPO (arXiv:2503.20783): r - mean_g without std scaling, token sums divided by a
  constant (the max completion length), no KL by default."""
  _no_extras("dr_grpo", unused)
  return Algorithm(
      name="dr_grpo",
      advantages=functools.partial(adv_lib.grpo_advantages, scale_by_std=False),
      policy_loss=_clipped(clip_eps_low, clip_eps_high),
      aggregation=aggregation, aggregation_constant=aggregation_constant, kl_coef=kl_coef,
      entropy_coef=entropy_coef, clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high)


def rloo(*, kl_coef: float = 0.0, clip_eps_low: float = 0.2, clip_eps_high: float = 0.2,
         aggregation: str = "token_mean", entropy_coef: float = 0.0, **unused) -> Algorithm:
  """RLOO (arXiv:2402.14740): leave-one-out baseline G/(G-1) (r - mean_g), clipped ratio,
  token mean."""
  _no_extras("rloo", unused)
  return Algorithm(
      name="rloo", advantages=adv_lib.rloo_advantages,
      policy_loss=_clipped(clip_eps_low, clip_eps_high), aggregation=aggregation,
      kl_coef=kl_coef, entropy_coef=entropy_coef, clip_eps_low=clip_eps_low,
      clip_eps_high=clip_eps_high)


def _no_extras(name: str, unused: dict) -> None:
  extra = {k: v for k, v in unused.items() if v is not None}
  if extra:
    raise ValueError(f"algorithm {name!r} does not take {sorted(extra)}")


PRESETS: dict[str, Callable[..., Algorithm]] = {"grpo": grpo, "dr_grpo": dr_grpo, "rloo": rloo}


def make_algorithm(name: str, **overrides) -> Algorithm:
  """A preset by name; `overrides` set with None keep the preset's default."""
  if name not in PRESETS:
    raise ValueError(f"algorithm.name={name!r} is unknown; choose one of {sorted(PRESETS)}")
  return PRESETS[name](**{k: v for k, v in overrides.items() if v is not None})
