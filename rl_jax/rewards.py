"""Rewards over a batch: named components, combined with weights from the config.

A reward is host-side Python called once per batch as `reward(examples, completions)`, one
example per completion; it returns a float array [N] (one component, named after its config
key) or a dict of named per-row arrays whose `"reward"` entry is its scalar and whose other
entries (`"correct"`, process scores, ...) are extras the rollout carries to later stages. A
task's verifier is the reward `task`; a class can be a reward too (its instance is called), so
a reward can hold its own parameters or a model.

  rewards.task.weight=1.0                              the default: the task's verifier
  rewards.brevity.name=my_pkg.rewards:brevity          any callable by import path
  rewards.brevity.weight=0.5                           its weight in the total
  rewards.brevity.max_chars=40                         its own keyword arguments

The step writes each weighted term's value to the rollout's extras as `reward/<key>` and the
total as the row's reward; metrics.jsonl logs the mean of every component.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rl_jax import components
from rl_jax.tasks import math_answer
from rl_jax.tasks.base import Example

RewardFn = Callable[[Sequence[Example], Sequence[str]], Any]

# Registered rewards (besides `task`, the run's task's own verifier).
REWARDS: dict[str, Any] = {"math": math_answer.score_math}


@dataclasses.dataclass(frozen=True)
class Term:
  key: str  # the config key, and the component name `reward/<key>`
  fn: RewardFn
  weight: float


class Rewards:
  """The weighted sum of named reward terms."""

  def __init__(self, terms: Sequence[Term]):
    if not terms:
      raise ValueError("at least one reward is needed (config section 'rewards')")
    self.terms = tuple(terms)

  def __call__(
    self, examples: Sequence[Example], completions: Sequence[str]
  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(total float32[N], components): `reward/<key>` for each term, plus the extras the
    terms returned (a name two terms both return is an error)."""
    n = len(completions)
    total = np.zeros(n, np.float32)
    extras: dict[str, np.ndarray] = {}
    for term in self.terms:
      value, more = _split(term.key, term.fn(examples, completions), n)
      extras[f"reward/{term.key}"] = value
      total += term.weight * value
      for name, array in more.items():
        if name in extras:
          raise ValueError(f"rewards {term.key!r} and another both return {name!r}")
        extras[name] = array
    return total, extras


def _split(key: str, out, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  if isinstance(out, Mapping):
    if "reward" not in out:
      raise ValueError(f"reward {key!r} returned {sorted(out)} without a 'reward' entry")
    more = {k: np.asarray(v) for k, v in out.items() if k != "reward"}
    value = out["reward"]
  else:
    value, more = out, {}
  value = np.asarray(value, np.float32)
  if value.shape != (n,) or any(v.shape[:1] != (n,) for v in more.values()):
    raise ValueError(f"reward {key!r} must return [{n}] arrays, got {value.shape}")
  return value, more


def _resolve(key: str, component: components.Component, task) -> Any:
  """The reward a `rewards.<key>` section names: the task's verifier for `task` (a stand-in
  with its signature when checking a config without a task), else a registered name or an
  import path."""
  if component.name == "task":
    return _task_score if task is None else task.score
  return components.resolve(f"rewards.{key}.name", component.name, REWARDS)


def _task_score(examples, completions):  # the signature of `Task.score`, for config checks
  raise NotImplementedError


def _kwargs(key: str, component: components.Component, fn) -> dict[str, Any]:
  """The section's keyword arguments (all but `weight`) checked against the reward: a class's
  constructor, or a function's parameters after (examples, completions)."""
  kwargs = {k: v for k, v in component.args.items() if k != "weight"}
  skip = 0 if inspect.isclass(fn) else 2
  return components.check_kwargs(f"rewards.{key}", fn, kwargs, skip=skip)


def _make(key: str, component: components.Component, task) -> RewardFn:
  fn = _resolve(key, component, task)
  kwargs = _kwargs(key, component, fn)
  if inspect.isclass(fn):
    return fn(**kwargs)
  return functools.partial(fn, **kwargs) if kwargs else fn


def check(section: Sequence[tuple[str, components.Component]]):
  """The `rewards` config section checked (names, weights, keyword arguments converted)
  without calling any reward."""
  out = []
  for key, c in section:
    kwargs = _kwargs(key, c, _resolve(key, c, None))
    out.append((key, components.Component.of(c.name, weight=c.args.get("weight", 1.0), **kwargs)))
  return tuple(out)


def build(section: Sequence[tuple[str, components.Component]], task) -> Rewards:
  """The run's rewards from the `rewards` config section; `task` is the run's task (the
  reward `task` is its verifier)."""
  terms = [Term(key, _make(key, c, task), float(c.args.get("weight", 1.0))) for key, c in section]
  return Rewards(terms)


def from_objects(objects, task) -> Rewards:
  """Rewards from objects (a notebook's): {key: weight} for the task's verifier (key "task") or
  {key: (reward_fn, weight)} / {key: reward_fn} (weight 1) for any other reward."""
  terms = []
  for key, value in objects.items():
    if key == "task" and isinstance(value, int | float):
      terms.append(Term("task", task.score, float(value)))
    elif isinstance(value, tuple):
      terms.append(Term(key, value[0], float(value[1])))
    elif callable(value):
      terms.append(Term(key, value, 1.0))
    else:
      raise ValueError(f"reward {key!r}: give a weight (task), a callable or (callable, weight)")
  return Rewards(terms)
