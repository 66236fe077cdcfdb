"""Step lines: chained addition that shows its work, one running sum per line.

Prompt `"<a1>+<a2>+...+<ak>="`, completion the running sums after each addition, one per line;
the last line is the answer. `"23+58+7+41="` -> `"81\\n88\\n129"`. Operands have 1..`max_digits`
digits. A fixed hash of the operands assigns each problem to the train or held-out split.

The verifier scores two things: the outcome (the last line equals the sum: reward 1, `correct`)
and the process, `process` = the share of the k - 2 intermediate lines that equal the true
running sum at their position (a completion with too few lines scores its missing lines as
wrong; extra lines count as wrong ones). Process rewards of this kind (a programmatic rubric)
are what PAPO (methods.md B3) decouples from the outcome; `process_score` is the same rubric as
a reward of its own, for the naive baseline that adds it to the outcome.

Warm-start demonstrations can be flawed in two ways. With probability `sft_slip_prob` one line
(uniform among the k - 1) forgets its carries (`carry_free_sum`), and the lines after it
continue correctly from the wrong value, as a person who slipped once would: the right process
up to the slip and a wrong answer. With probability `sft_skip_prob` (of the demonstrations that
did not slip) the work is skipped: the right answer alone, process score 0. A policy imitating
both is sometimes right without showing its work, which an outcome reward cannot tell apart
from right with work, and a process score among the correct answers can.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rl_jax.tasks.arithmetic import _mix, carry_free_sum
from rl_jax.tasks.base import Example, max_lengths_of

ALPHABET = "0123456789+=\n"
SKIP = -2  # the flaw of a demonstration that shows no work


class StepsTask:
  """`a1+...+ak=` with `num_terms` = k operands of 1..`max_digits` digits; completions are the
  k - 1 running sums, one per line."""

  name = "steps"

  def __init__(
    self,
    *,
    num_terms: int = 4,
    max_digits: int = 2,
    heldout_fraction: float = 1 / 16,
    sft_slip_prob: float = 0.0,
    sft_skip_prob: float = 0.0,
  ):
    if num_terms < 3:
      raise ValueError(f"task.num_terms must be >= 3 (one intermediate line), got {num_terms}")
    if max_digits < 1:
      raise ValueError(f"task.max_digits must be >= 1, got {max_digits}")
    if not 0 < heldout_fraction < 1:
      raise ValueError(f"task.heldout_fraction must be in (0, 1), got {heldout_fraction}")
    if not 0 <= sft_slip_prob <= 1:
      raise ValueError(f"task.sft_slip_prob must be in [0, 1], got {sft_slip_prob}")
    if not 0 <= sft_skip_prob <= 1:
      raise ValueError(f"task.sft_skip_prob must be in [0, 1], got {sft_skip_prob}")
    self.sft_skip_prob = sft_skip_prob
    self.num_terms, self.max_digits = num_terms, max_digits
    self.heldout_fraction, self.sft_slip_prob = heldout_fraction, sft_slip_prob

  def _is_heldout(self, terms_NxK: np.ndarray) -> np.ndarray:
    h = np.zeros(terms_NxK.shape[0], np.uint64)
    for k in range(terms_NxK.shape[1]):
      h = _mix(h % np.uint64(1 << 40), terms_NxK[:, k])
    return (h % np.uint64(1 << 20)).astype(np.float64) < self.heldout_fraction * (1 << 20)

  def _draw(self, rng: np.random.Generator, n: int):
    d = rng.integers(1, self.max_digits + 1, (n, self.num_terms))
    lo = np.where(d == 1, 0, 10 ** (d - 1))
    terms = rng.integers(lo, 10**d)
    u = rng.random(n)
    line = rng.integers(0, self.num_terms - 1, n)
    skip = rng.random(n) < self.sft_skip_prob
    # the flaw of each demonstration: the line that slips, SKIP (no work shown) or -1 (none)
    flaw = np.where(u < self.sft_slip_prob, line, np.where(skip, SKIP, -1))
    return terms, flaw

  def _example(self, terms, flaw: int = -1) -> Example:
    terms = tuple(int(t) for t in terms)
    prompt = "+".join(map(str, terms)) + "="
    return Example(prompt=prompt, answer=str(sum(terms)), meta=(terms, flaw))

  def train_examples(self, rng: np.random.Generator, n: int) -> list[Example]:
    out: list[Example] = []
    while len(out) < n:
      terms, flaw = self._draw(rng, 2 * (n - len(out)) + 8)
      keep = ~self._is_heldout(terms)
      out.extend(self._example(t, int(f)) for t, f in zip(terms[keep], flaw[keep]))
    return out[:n]

  def heldout_examples(self, n: int) -> list[Example]:
    rng = np.random.default_rng(20261203)  # fixed: the held-out set never depends on the run
    out, seen = [], set()
    for _ in range(64):
      if len(out) >= n:
        break
      terms, _ = self._draw(rng, 4 * n)
      for t in terms[self._is_heldout(terms)]:
        if tuple(t) not in seen:
          seen.add(tuple(t))
          out.append(self._example(t))
    if len(out) < n:
      raise ValueError(
        f"the held-out split of this task has only about {len(out)} distinct problems, fewer "
        f"than eval.num_prompts={n}; raise task.max_digits or lower eval.num_prompts"
      )
    return out[:n]

  def alphabet(self) -> str:
    return ALPHABET

  def max_lengths(self, tokenizer) -> tuple[int, int]:
    """The widest operands' prompt and completion (exact for the character tokenizer), or
    longer ones among 512 fixed draws."""
    widest = self._example([10**self.max_digits - 1] * self.num_terms)
    drawn = self.train_examples(np.random.default_rng(0), 512)
    return max_lengths_of(tokenizer, [widest, *drawn], self)

  def sft_target(self, example: Example) -> str:
    """The running sums, one per line; a slipped demonstration forgets the carries on one line
    and continues from there; a skipping one writes the answer alone."""
    terms, slip_line = example.meta
    if slip_line == SKIP:
      return str(sum(terms))
    lines, total = [], terms[0]
    for j, t in enumerate(terms[1:]):
      total = int(carry_free_sum(total, t)) if j == slip_line else total + t
      lines.append(str(total))
    return "\n".join(lines)

  def score(self, examples: Sequence[Example], completions: Sequence[str]) -> dict[str, np.ndarray]:
    """`reward` 1 for a right last line (else 0), `correct`, and `process` (`process_score`)."""
    correct = np.array(
      [c.split("\n")[-1] == ex.answer for ex, c in zip(examples, completions)], bool
    )
    return dict(
      reward=correct.astype(np.float32),
      correct=correct,
      process=process_score(examples, completions),
    )


def running_sums(example: Example) -> list[str]:
  """The exact lines of `example`'s completion."""
  terms = example.meta[0]
  return [str(s) for s in np.cumsum(terms)[1:]]


def process_score(examples: Sequence[Example], completions: Sequence[str]) -> np.ndarray:
  """The share of right intermediate lines: the lines before the last, compared position by
  position with the true running sums (k - 2 of them); missing lines count as wrong, and so
  do extra ones (the denominator is the larger of k - 2 and the lines written). float32 [N]."""
  out = np.zeros(len(examples), np.float32)
  for i, (ex, c) in enumerate(zip(examples, completions)):
    want = running_sums(ex)[:-1]
    got = c.split("\n")[:-1]
    right = sum(a == b for a, b in zip(got, want))
    out[i] = right / max(len(want), len(got))
  return out
