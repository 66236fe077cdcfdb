"""The Task interface: a prompt source with train / held-out splits and a verifier.

Tasks are host-side Python (never inside jit) and never own a tokenizer: the policy does
(`rl_jax.policy`). A task hands out `Example`s (prompt text, reference answer, and any other
fields of the example in `meta`) and its verifier scores completion texts with named
components. The step turns the verifier into one reward among others (`rl_jax.rewards`).

A task can be named in a config by its registered name (`task.name=arithmetic`) or by an
import path to a factory (`task.name=my_pkg.tasks:make_task`); the other keys of the `task`
section are the factory's keyword arguments, checked against its signature.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np


@dataclasses.dataclass(frozen=True)
class Example:
  prompt: str  # the text the policy sees (before the tokenizer's chat template, if any)
  answer: str  # the reference answer (what SFT imitates; what the verifier checks against)
  meta: Any = None  # anything else the verifier or other rewards read (e.g. a JSONL row's fields)


class Task(Protocol):
  """What the step needs from a task. `sft_target` and `alphabet` are optional."""

  name: str

  def train_examples(self, rng: np.random.Generator, n: int) -> list[Example]:
    """`n` training examples drawn with `rng` (never from the held-out split). The step seeds
    `rng` from (seed, step), so a resumed run draws the same examples."""

  def heldout_examples(self, n: int) -> list[Example]:
    """A fixed list of (at most) `n` held-out examples, disjoint from what training draws."""

  def score(
    self, examples: Sequence[Example], completions: Sequence[str]
  ) -> Mapping[str, np.ndarray]:
    """The verifier, one completion per example: named per-row components. `"reward"`
    (float32[N]) is required and is the task's reward; `"correct"` (bool[N]) is optional and
    gives the logged accuracy; any other components are logged and reach the rollout's extras."""

  def max_lengths(self, tokenizer) -> tuple[int, int]:
    """(longest prompt, longest reference answer) in tokens of `tokenizer`: the prompt as
    `tokenizer.encode_prompt` makes it, the answer as `tokenizer.encode(answer, eos=True)`.
    They fix the run's prompt bucket and default completion length."""

  def sft_target(self, example: Example) -> str:
    """(Optional) the completion that supervised warm-starting imitates; default the answer."""

  def alphabet(self) -> str:
    """(Optional) every character a prompt or answer can hold, for the character tokenizer."""


def sft_target(task, example: Example) -> str:
  """The task's warm-start demonstration of `example` (its answer unless it says otherwise)."""
  fn = getattr(task, "sft_target", None)
  return fn(example) if fn is not None else example.answer


def max_lengths_of(tokenizer, examples: Sequence[Example], task=None) -> tuple[int, int]:
  """(longest prompt, longest warm-start target or answer) of `examples` in `tokenizer`'s
  tokens, as `Task.max_lengths` defines them."""
  prompt = max(len(tokenizer.encode_prompt(ex.prompt)) for ex in examples)
  targets = [ex.answer if task is None else sft_target(task, ex) for ex in examples]
  answer = max(len(tokenizer.encode(t, eos=True)) for t in targets + [ex.answer for ex in examples])
  return prompt, answer
