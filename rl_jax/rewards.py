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

Every output is checked where it enters the step: one finite number per completion (a
`RewardError` naming the reward otherwise), and a batch taking longer than `rl.reward_timeout_s`
stops the run with a `RewardError` too. Rewards that run model output (code) belong in a
sandbox: `rl_jax.sandbox`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rl_jax import components, reward_model, sandbox
from rl_jax.tasks import math_answer, steps
from rl_jax.tasks.base import Example

RewardFn = Callable[[Sequence[Example], Sequence[str]], Any]

# Registered rewards (besides `task`, the run's task's own verifier).
REWARDS: dict[str, Any] = {
  "math": math_answer.score_math,
  "python_unit_tests": sandbox.python_unit_tests,  # runs model code in `rl_jax.sandbox`
  "reward_model": reward_model.RewardModelScore,  # a saved quantile reward model (UARM)
  "step_process": steps.process_score,  # the `steps` task's process rubric as a reward
}


class RewardError(ValueError):
  """A reward (or the task's verifier) returned something unusable, or took too long."""


@dataclasses.dataclass(frozen=True)
class Term:
  key: str  # the config key, and the component name `reward/<key>`
  fn: RewardFn
  weight: float


class Rewards:
  """The weighted sum of named reward terms; each term's call on a batch is limited to
  `timeout_s` seconds (0 = no limit)."""

  def __init__(self, terms: Sequence[Term], timeout_s: float = 0.0):
    if not terms:
      raise ValueError("at least one reward is needed (config section 'rewards')")
    self.terms = tuple(terms)
    self.timeout_s = timeout_s

  def __call__(
    self, examples: Sequence[Example], completions: Sequence[str]
  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(total float32[N], components): `reward/<key>` for each term, plus the extras the
    terms returned (a name two terms both return is an error)."""
    n = len(completions)
    total = np.zeros(n, np.float32)
    extras: dict[str, np.ndarray] = {}
    for term in self.terms:
      out = call_with_timeout(term.key, term.fn, (examples, completions), self.timeout_s)
      value, more = check_output(term.key, out, n)
      extras[f"reward/{term.key}"] = value
      total += term.weight * value
      for name, array in more.items():
        if name in extras:
          raise RewardError(f"rewards {term.key!r} and another both return {name!r}")
        extras[name] = array
    return total, extras


def call_with_timeout(key: str, fn, args, timeout_s: float):
  """`fn(*args)`, or a RewardError if it takes longer than `timeout_s` (0 = no limit). The call
  runs in a daemon thread, which is abandoned (Python cannot stop it) when it overruns: the
  run stops, so it does not outlive the process."""
  if not timeout_s:
    return fn(*args)
  box: dict[str, Any] = {}

  def target():
    try:
      box["out"] = fn(*args)
    except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
      box["error"] = e

  t0 = time.monotonic()
  thread = threading.Thread(target=target, name=f"reward-{key}", daemon=True)
  thread.start()
  thread.join(timeout_s)
  if thread.is_alive():
    raise RewardError(
      f"reward {key!r} took longer than rl.reward_timeout_s={timeout_s:g} s on a batch of "
      f"{len(args[1])} completions (still running after {time.monotonic() - t0:.0f} s)"
    )
  if "error" in box:
    raise box["error"]
  return box["out"]


def check_output(key: str, out, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """(value float32[n], extras) of a reward's output, checked: a float array [n] or a mapping
  with a `"reward"` entry and [n]-leading extras; real numbers; finite. RewardError otherwise."""
  if isinstance(out, Mapping):
    if "reward" not in out:
      raise RewardError(f"reward {key!r} returned {sorted(out)} without a 'reward' entry")
    more = {k: np.asarray(v) for k, v in out.items() if k != "reward"}
    value = out["reward"]
  else:
    value, more = out, {}
  if value is None:
    raise RewardError(f"reward {key!r} returned None instead of [{n}] numbers")
  raw = np.asarray(value)
  if raw.dtype.kind not in "biuf":
    raise RewardError(f"reward {key!r} must return real numbers, got dtype {raw.dtype}")
  if raw.shape != (n,):
    raise RewardError(
      f"reward {key!r} must return one value per completion, shape ({n},); got {raw.shape}"
    )
  for name, array in more.items():
    if array.shape[:1] != (n,):
      raise RewardError(
        f"reward {key!r}: its output {name!r} must have {n} rows, got shape {array.shape}"
      )
  value = raw.astype(np.float32)
  bad = np.flatnonzero(~np.isfinite(value))
  if bad.size:
    raise RewardError(
      f"reward {key!r} returned {bad.size} non-finite value(s) of {n} (first at completion "
      f"{bad[0]}: {value[bad[0]]}); a reward must be a finite number for every completion"
    )
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


def build(
  section: Sequence[tuple[str, components.Component]], task, timeout_s: float = 0.0
) -> Rewards:
  """The run's rewards from the `rewards` config section; `task` is the run's task (the
  reward `task` is its verifier)."""
  terms = [Term(key, _make(key, c, task), float(c.args.get("weight", 1.0))) for key, c in section]
  return Rewards(terms, timeout_s)


def from_objects(objects, task, timeout_s: float = 0.0) -> Rewards:
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
  return Rewards(terms, timeout_s)
