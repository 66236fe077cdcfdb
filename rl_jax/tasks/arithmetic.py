"""Multi-digit arithmetic, the embedded default task.

Prompt `"<a><op><b>="`, answer the decimal result, e.g. `"348+67="` -> `"415"`. Operands have
1..`max_digits` digits. A fixed hash of the operand pair assigns every problem to the train or
the held-out split once and for all, so held-out problems are never drawn for training (SFT
or RL), whatever the seed.

Warm-start demonstrations can be deliberately flawed: with probability `sft_slip_prob` a
demonstration of an addition forgets every carry (`"58+67="` -> `"15"`, the digit-wise sums
mod 10), a systematic human-like slip. A policy imitating such a demonstrator puts much of its
mass on the slip; reinforcement against the exact verifier has to find the right mode.

Reward: 1 for an exactly right answer, else `partial_credit` times the fraction of answer
digits that match position by position (0 disables shaping), minus nothing for length; a
completion that is not a well-formed integer gets 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rl_jax.tasks.base import Example, max_lengths_of

ALPHABET = "0123456789+-*="
ALL_OPS = "+-*"


def _mix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """A fixed integer hash of operand pairs (splitmix-style), independent of any seed."""
  x = a.astype(np.uint64) * np.uint64(1_000_003) + b.astype(np.uint64)
  x = x ^ np.uint64(0x9E3779B97F4A7C15)
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


class ArithmeticTask:
  """`a op b =` with operands of 1..max_digits digits; ops from "+-*"."""

  name = "arithmetic"

  def __init__(
    self,
    *,
    max_digits: int = 3,
    ops: str = "+",
    heldout_fraction: float = 1 / 16,
    partial_credit: float = 0.0,
    sft_slip_prob: float = 0.0,
  ):
    if max_digits < 1:
      raise ValueError(f"task.max_digits must be >= 1, got {max_digits}")
    if not ops or set(ops) - set("+-*"):
      raise ValueError(f"task.ops must be a non-empty subset of '+-*', got {ops!r}")
    if not 0 < heldout_fraction < 1:
      raise ValueError(f"task.heldout_fraction must be in (0, 1), got {heldout_fraction}")
    self.max_digits, self.ops = max_digits, ops
    if not 0 <= partial_credit < 1:
      raise ValueError(
        f"task.partial_credit must be in [0, 1) so that only an "
        f"exact answer "
        f"earns 1, got {partial_credit}"
      )
    if not 0 <= sft_slip_prob <= 1:
      raise ValueError(f"task.sft_slip_prob must be in [0, 1], got {sft_slip_prob}")
    self.heldout_fraction, self.partial_credit = heldout_fraction, partial_credit
    self.sft_slip_prob = sft_slip_prob
    self.max_prompt_len = 1 + 2 * max_digits + 2  # bos a op b =
    longest = 2 * max_digits if "*" in ops else max_digits + 1
    self.max_answer_len = longest + ("-" in ops) + 1  # sign, eos

  def _is_heldout(self, a, b, op_idx):
    # Hash the operator itself (its index in "+-*"), not its position in `self.ops`, so a
    # problem's split is the same whichever operator set a run uses.
    op_code = np.asarray([ALL_OPS.index(o) for o in self.ops])[np.asarray(op_idx)]
    h = _mix(np.asarray(a) * 4 + op_code, np.asarray(b))
    return (h % np.uint64(1 << 20)).astype(np.float64) < self.heldout_fraction * (1 << 20)

  def _draw(self, rng: np.random.Generator, n: int):
    # Digit count uniform in 1..max_digits, then the value uniform among numbers of that length.
    def operand(size):
      d = rng.integers(1, self.max_digits + 1, size)
      lo = np.where(d == 1, 0, 10 ** (d - 1))
      return rng.integers(lo, 10**d)

    return operand(n), operand(n), rng.integers(0, len(self.ops), n), rng.random(n)

  def _example(self, a: int, b: int, op: str, slip: bool = False) -> Example:
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return Example(prompt=f"{a}{op}{b}=", answer=str(value), meta=(a, op, b, slip))

  def train_examples(self, rng: np.random.Generator, n: int) -> list[Example]:
    out: list[Example] = []
    while len(out) < n:
      a, b, o, u = self._draw(rng, 2 * (n - len(out)) + 8)
      keep = ~self._is_heldout(a, b, o)
      out.extend(
        self._example(int(x), int(y), self.ops[k], bool(s < self.sft_slip_prob))
        for x, y, k, s in zip(a[keep], b[keep], o[keep], u[keep])
      )
    return out[:n]

  def heldout_examples(self, n: int) -> list[Example]:
    rng = np.random.default_rng(20261126)  # fixed: the held-out set never depends on the run
    out: list[Example] = []
    seen = set()
    for _ in range(64):
      if len(out) >= n:
        break
      a, b, o, _ = self._draw(rng, 4 * n)
      keep = self._is_heldout(a, b, o)
      for x, y, k in zip(a[keep], b[keep], o[keep]):
        key = (int(x), int(y), int(k))
        if key not in seen:
          seen.add(key)
          out.append(self._example(int(x), int(y), self.ops[k]))
    if len(out) < n:
      raise ValueError(
        f"the held-out split of this task has only about {len(out)} distinct "
        f"problems, fewer than eval.num_prompts={n}; raise "
        f"task.max_digits or lower eval.num_prompts"
      )
    return out[:n]

  def alphabet(self) -> str:
    return ALPHABET

  def max_lengths(self, tokenizer) -> tuple[int, int]:
    """The longest operands' prompt and answer (exact for the character tokenizer), or longer
    ones among 512 fixed draws (other tokenizers)."""
    d, sign = self.max_digits, "-" * ("-" in self.ops)
    digits = 2 * d if "*" in self.ops else d + 1
    widest = Example(prompt=f"{'9' * d}{self.ops[0]}{'9' * d}=", answer=sign + "9" * digits)
    drawn = self.train_examples(np.random.default_rng(0), 512)
    return max_lengths_of(tokenizer, [widest, *drawn])

  def sft_target(self, example: Example) -> str:
    """The demonstration: the answer, or (a slip, additions only) the carry-free sum."""
    a, op, b, slip = example.meta
    if slip and op == "+":
      return carry_free_sum(a, b)
    return example.answer

  def score(self, examples: Sequence[Example], completions: Sequence[str]) -> dict[str, np.ndarray]:
    rewards = np.zeros(len(examples), np.float32)
    correct = np.zeros(len(examples), bool)
    for i, (ex, c) in enumerate(zip(examples, completions)):
      if c == ex.answer:
        rewards[i], correct[i] = 1.0, True
      elif self.partial_credit and _is_int(c):
        target = ex.answer
        width = max(len(c), len(target))
        a, b = c.rjust(width), target.rjust(width)  # align least significant digits
        rewards[i] = self.partial_credit * sum(x == y for x, y in zip(a, b)) / width
    return dict(reward=rewards, correct=correct)


def _is_int(s: str) -> bool:
  return bool(s) and (s.lstrip("-").isdigit()) and s.count("-") <= 1 and not s.endswith("-")


def carry_free_sum(a: int, b: int) -> str:
  """Digit-wise sums mod 10, i.e. addition that forgets every carry: 58 + 67 -> "15"."""
  x, y = str(a)[::-1], str(b)[::-1]
  width = max(len(x), len(y))
  digits = [
    (int(x[i]) if i < len(x) else 0) + (int(y[i]) if i < len(y) else 0) for i in range(width)
  ]
  return str(int("".join(str(d % 10) for d in digits)[::-1]))
