"""The Task interface: a prompt source with train / held-out splits and a verifier.

Tasks are host-side Python (never inside jit). A task hands out `Example`s, turns them into
prompt strings, and scores completion strings. Everything a method needs beyond the text
(reward, correctness, extra info) comes back from `score`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np


@dataclasses.dataclass(frozen=True)
class Example:
  prompt: str  # the text the policy sees
  answer: str  # the reference answer (what SFT imitates; what the verifier checks against)
  meta: Any = None


@dataclasses.dataclass(frozen=True)
class Scores:
  rewards: np.ndarray  # float32[N]
  correct: np.ndarray | None  # bool[N] where the task defines correctness


class Task(Protocol):
  name: str
  tokenizer: Any
  max_prompt_len: int  # longest prompt in tokens, including BOS
  max_answer_len: int  # longest reference answer in tokens, including EOS

  def train_examples(self, rng: np.random.Generator, n: int) -> list[Example]:
    """`n` training examples drawn with `rng` (never from the held-out split)."""

  def heldout_examples(self, n: int) -> list[Example]:
    """A fixed list of `n` held-out examples, disjoint from anything training can draw."""

  def score(self, examples: Sequence[Example], completions: Sequence[str]) -> Scores:
    """Rewards (and correctness) of one completion per example."""

  def sft_target(self, example: Example) -> str:
    """The completion text that supervised warm-starting imitates."""
