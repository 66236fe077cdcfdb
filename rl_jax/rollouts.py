"""Rollout functions: `(policy, params, examples, key) -> Rollout`.

A rollout function turns a list of examples into the step's `Rollout` record: prompts,
completions, which tokens are trained on, groups, and any per-row extras a method needs. The
built-in one is "G samples of each prompt" (`group`); others (drafts then refinements, plans
then completions, completions of tree prefixes, conditioned pairs) are new functions built on
`sample_groups` and `sample_continuations`, never an edit of the step.

In a config, `rollout.name` names a factory `factory(settings, **kwargs) -> RolloutFn` by a
registered name or an import path; its keys are the factory's keyword arguments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from rl_jax import components, tokenizers
from rl_jax.sampling import SamplingConfig, generate, generate_continuations
from rl_jax.tasks.base import Example
from rl_jax.types import Rollout

RolloutFn = Callable[[Any, Any, Sequence[Example], jax.Array], Rollout]


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
  """What the run fixes for every rollout function: the sampler, the group size, the prompt
  bucket, and how host arrays are placed on the mesh (`shard`)."""

  sampling: SamplingConfig
  group_size: int
  prompt_len: int
  shard: Callable[[Any], Any] = lambda tree: tree


def encode_prompts(policy, examples: Sequence[Example], length: int):
  """Left-padded prompt tokens [len(examples), length] and their mask (host arrays)."""
  return tokenizers.encode_left_padded(policy.tokenizer, [e.prompt for e in examples], length)


def sample_groups(policy, params, examples, key, settings: RolloutSettings) -> Rollout:
  """G samples of each example's prompt: rows b*G .. b*G + G - 1 answer example b, form group
  b and share its prompt (declared: `prompt_group_size` = G)."""
  G = settings.group_size
  prompts, mask = encode_prompts(policy, examples, settings.prompt_len)
  out = generate(
    policy.graphdef,
    params,
    *settings.shard((prompts, mask)),
    key,
    cfg=settings.sampling,
    group_size=G,
  )
  N = len(examples) * G
  rows = np.arange(N, dtype=np.int32) // G
  return Rollout(
    prompt_NxP=np.repeat(prompts, G, axis=0),
    prompt_mask_NxP=np.repeat(mask, G, axis=0),
    completion_NxT=out.tokens_NxT,
    completion_mask_NxT=out.mask_NxT,
    loss_mask_NxT=out.mask_NxT,
    behaviour_logp_NxT=out.logp_NxT,
    group_id_N=rows,
    row_valid_N=np.ones(N, bool),
    example_index_N=rows,
    prompt_group_size=G,
  )


def sample_continuations(
  policy,
  params,
  examples: Sequence[Example],
  forced: Sequence[str],
  key,
  settings: RolloutSettings,
  *,
  group_id_N=None,
  example_index_N=None,
) -> Rollout:
  """One row per example, continued after a forced prefix (`forced[n]`, text encoded without
  BOS): the prefix is part of the row's completion but not of its loss mask, so it is attended
  to and never trained on, and sampling continues exactly as if the policy had produced it.
  Groups are `group_id_N` (default: each example its own group... pass the real ones)."""
  N = len(examples)
  prompts, mask = encode_prompts(policy, examples, settings.prompt_len)
  ids = [policy.tokenizer.encode(text) for text in forced]
  F = max([len(x) for x in ids] + [1])
  forced_NxF = np.full((N, F), policy.pad_id, np.int32)
  forced_mask = np.zeros((N, F), bool)
  for n, x in enumerate(ids):
    forced_NxF[n, : len(x)], forced_mask[n, : len(x)] = x, True
  out = generate_continuations(
    policy.graphdef,
    params,
    *settings.shard((prompts, mask, forced_NxF, forced_mask)),
    key,
    cfg=settings.sampling,
  )
  rows = np.arange(N, dtype=np.int32)
  return Rollout(
    prompt_NxP=prompts,
    prompt_mask_NxP=mask,
    completion_NxT=out.completion_NxT,
    completion_mask_NxT=out.completion_mask_NxT,
    loss_mask_NxT=out.loss_mask_NxT,
    behaviour_logp_NxT=out.logp_NxT,
    group_id_N=rows if group_id_N is None else np.asarray(group_id_N, np.int32),
    row_valid_N=np.ones(N, bool),
    example_index_N=rows if example_index_N is None else np.asarray(example_index_N, np.int32),
  )


def group(settings: RolloutSettings) -> RolloutFn:
  """The default rollout: `rl.group_size` samples of each prompt, one group per prompt."""
  return lambda policy, params, examples, key: sample_groups(
    policy, params, examples, key, settings
  )


ROLLOUTS: dict[str, Callable[..., RolloutFn]] = {"group": group}


def check(component: components.Component) -> components.Component:
  """A `rollout` config section checked (and converted) without building it."""
  fn = components.resolve("rollout.name", component.name, ROLLOUTS)
  kwargs = components.check_kwargs("rollout", fn, component.args, skip=1)
  return components.Component.of(component.name, **kwargs)


def build(component: components.Component, settings: RolloutSettings) -> RolloutFn:
  return components.build("rollout", component, ROLLOUTS, settings, skip=1)


# ---------------------------------------------------------------------------------------------
# Records on the host: layout, selection, concatenation.


def to_host(roll: Rollout) -> Rollout:
  """The record with every array on the host (one transfer; every process gets the global
  record in a multi-process run)."""
  from rl_jax import distributed

  return distributed.fetch(roll)


def group_index(group_id_N, row_valid_N=None) -> np.ndarray:
  """int32 [B, G_max]: the rows of each declared group (in row order), padded with -1; groups
  in order of first appearance. Invalid rows are in no group."""
  group_id_N = np.asarray(group_id_N)
  valid = np.ones(len(group_id_N), bool) if row_valid_N is None else np.asarray(row_valid_N, bool)
  ids, first = np.unique(group_id_N[valid], return_index=True)
  rows = np.flatnonzero(valid)
  members = [rows[group_id_N[valid] == g] for g in ids[np.argsort(first)]]
  width = max([len(m) for m in members] + [1])
  out = np.full((len(members), width), -1, np.int32)
  for b, m in enumerate(members):
    out[b, : len(m)] = m
  return out


def select_rows(roll: Rollout, rows, *, prompt_group_size: int | None = None) -> Rollout:
  """The record restricted to `rows` (host arrays). Prompt sharing is kept only when the
  caller says the selection is made of whole consecutive groups (`prompt_group_size`)."""
  rows = np.asarray(rows)
  take = lambda x: np.asarray(x)[rows]
  fields = {f.name: take(getattr(roll, f.name)) for f in _ARRAY_FIELDS}
  extras = {k: take(v) for k, v in roll.extras.items()}
  return Rollout(**fields, extras=extras, prompt_group_size=prompt_group_size or 1)


def concat(rolls: Sequence[Rollout]) -> Rollout:
  """Rows of several records, in order (example indices and group ids offset so they stay
  distinct); prompt sharing is kept when every part declares the same group size."""
  fields: dict[str, list] = {f.name: [] for f in _ARRAY_FIELDS}
  extras: dict[str, list] = {k: [] for k in rolls[0].extras}
  ex_offset = group_offset = 0
  for r in rolls:
    if set(r.extras) != set(extras):
      raise ValueError(f"rollouts with different extras: {sorted(r.extras)} vs {sorted(extras)}")
    for f in _ARRAY_FIELDS:
      x = np.asarray(getattr(r, f.name))
      if f.name == "example_index_N":
        x = x + ex_offset
      elif f.name == "group_id_N":
        x = x + group_offset
      fields[f.name].append(x)
    for k in extras:
      extras[k].append(np.asarray(r.extras[k]))
    ex_offset += int(np.max(r.example_index_N, initial=-1)) + 1
    group_offset += int(np.max(r.group_id_N, initial=-1)) + 1
  sizes = {r.prompt_group_size for r in rolls}
  return Rollout(
    **{k: np.concatenate(v) for k, v in fields.items()},
    extras={k: np.concatenate(v) for k, v in extras.items()},
    prompt_group_size=sizes.pop() if len(sizes) == 1 else 1,
  )


_ARRAY_FIELDS = [
  f for f in dataclasses.fields(Rollout) if f.name not in ("extras", "prompt_group_size")
]


def pad_completions(roll: Rollout, width: int, pad_id: int) -> Rollout:
  """Completion arrays right-padded to `width` tokens (records of different widths concat)."""
  T = np.asarray(roll.completion_NxT).shape[1]
  if T == width:
    return roll
  pad = lambda x, v: np.pad(np.asarray(x), ((0, 0), (0, width - T)), constant_values=v)
  return dataclasses.replace(
    roll,
    completion_NxT=pad(roll.completion_NxT, pad_id),
    completion_mask_NxT=pad(roll.completion_mask_NxT, False),
    loss_mask_NxT=pad(roll.loss_mask_NxT, False),
    behaviour_logp_NxT=pad(roll.behaviour_logp_NxT, 0.0),
  )
