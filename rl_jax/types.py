"""Shape legend and the records that flow through one RL step.

N sequences (rows), P prompt tokens (left-padded bucket), T completion tokens, V vocabulary;
B groups and G rows per group where a rollout has them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np
from flax import struct

Array = jax.Array | np.ndarray


@struct.dataclass
class Rollout:
  """One step's samples: the record every later stage of the step reads.

  Nothing downstream infers structure from shapes: groups are declared by `group_id_N`, prompt
  sharing by `prompt_group_size`, trained tokens by `loss_mask_NxT`, and everything a method
  needs beyond the tokens travels as a named per-row extra.

  Attributes:
    prompt_NxP: int32 left-padded prompt tokens of each row.
    prompt_mask_NxP: bool, True on real prompt tokens.
    completion_NxT: int32 the row's tokens after its prompt: a forced prefix (if any), then
      what the policy generated, then padding.
    completion_mask_NxT: bool, True on every real completion token (forced and generated, up to
      and including the stop token): what the model attends to.
    loss_mask_NxT: bool, True on the tokens the policy generated in this step: the only ones
      trained on. A forced prefix or a conditioning context is in the completion, not here.
    behaviour_logp_NxT: float32 the sampler's log-probs of the generated tokens (0 elsewhere).
    group_id_N: int32, the group of each row: advantages are relative within a group. Groups
      may differ in size and need not be contiguous.
    row_valid_N: bool, False on padding rows (no loss, never in a group's statistics; like any
      row with nothing to train on they still count in the `seq_*` aggregation modes'
      number of sequences).
    example_index_N: int32, the example (of the list the rollout function was given) that each
      row answers: rewards read `examples[example_index_N[n]]`.
    extras: named per-row arrays ([N, ...]): reward components, correctness, process scores,
      segment / plan / tree / draft ids, ... Rewards add to it; algorithms may read it.
    prompt_group_size: static. G > 1 declares that rows k*G .. k*G + G - 1 share one prompt (the
      shared-prefix fast path computes it once per group); 1 declares nothing.
  """

  prompt_NxP: Array
  prompt_mask_NxP: Array
  completion_NxT: Array
  completion_mask_NxT: Array
  loss_mask_NxT: Array
  behaviour_logp_NxT: Array
  group_id_N: Array
  row_valid_N: Array
  example_index_N: Array
  extras: dict[str, Array] = struct.field(default_factory=dict)
  prompt_group_size: int = struct.field(pytree_node=False, default=1)

  @property
  def num_rows(self) -> int:
    return int(self.completion_NxT.shape[0])

  def lengths_N(self) -> np.ndarray:
    """Generated tokens per row (the loss mask's count)."""
    return np.asarray(self.loss_mask_NxT).sum(axis=1)


class TrainBatch(NamedTuple):
  """Everything the jitted update needs; every leaf has the sequence axis N first."""

  prompt_NxP: Any
  prompt_mask_NxP: Any
  completion_NxT: Any
  completion_mask_NxT: Any  # attended tokens
  loss_mask_NxT: Any  # trained tokens (a subset of the completion mask)
  adv_NxT: Any  # float32 per-token advantages (0 off the loss mask)
  old_logp_NxT: Any  # float32 behaviour-policy log-probs (ignored when exactly on-policy)
  ref_logp_NxT: Any  # float32 reference log-probs (zeros when nothing needs them)
  old_values_NxT: Any = None  # critic values at sampling time (PPO)
  returns_NxT: Any = None  # value targets (PPO)
  token_extras: Any = None  # {name: [N, T]} per-token extras the algorithm reads (segment ids)
