"""Countdown: reach a target number with arithmetic over given numbers (arXiv 2512.07611).

Prompt `"<n1>,<n2>,...:<target>="`, answer an expression that uses every given number EXACTLY
ONCE (the TinyZero convention), with `+ - * /` and parentheses, that evaluates to the target,
e.g. `"3,7,12:29="` -> `"12*3-7"`.

Problems. Numbers are drawn uniformly from [1, `max_number`] (shown in the drawn order, not
sorted). A random expression tree over all of them is built by merging two random values at a
time (random left/right order) with an operator drawn uniformly among those that keep every
intermediate value a positive integer (`-` only when the result is positive, `/` only when
exact); the tree is kept when its value lies in [1, `max_target`]. That value is the target and
the expression, printed with minimal parentheses, is `Example.answer` (what the warm start
imitates). A fixed hash of the sorted numbers and the target assigns every problem to the train
or the held-out split once and for all, whatever the seed, so held-out problems (in any order
of their numbers, with any solution) are never drawn for training.

Verifier. A completion is parsed by a small recursive-descent parser (never `eval`) over the
grammar

    expr   := term (("+" | "-") term)*
    term   := factor (("*" | "/") factor)*
    factor := NUMBER | "(" expr ")"
    NUMBER := "0" | [1-9][0-9]*

Spaces between tokens are ignored. There is no unary minus or plus (`"-3+5"` is malformed),
numbers have no leading zeros (`"03"` is malformed), and nothing but the expression may appear
(no `"="`, no trailing text). Operators are left-associative with the usual precedence, and the
value is exact (`fractions.Fraction`: `"8/3*3"` is 8); intermediate values may be fractions or
negative. Inputs longer than `max_completion_chars` (64, or twice `max_answer_len` when that is
larger) or nested deeper than `MAX_DEPTH` parentheses are rejected before any work that could
grow, so hostile completions cost little.

Reward: 1 for a correct completion (well formed, uses exactly the given numbers as a multiset,
and evaluates to the target); `format_reward` for a well-formed completion whose numbers are a
sub-multiset of the given ones but which is not correct (a wrong value, a number left unused, or
a division by zero); 0 otherwise (malformed, too long, too deep, a number not given or used more
often than given).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from rl_jax.tasks.base import Example, max_lengths_of

ALPHABET = "0123456789+-*/()=,: "
OPS = "+-*/"
MAX_COMPLETION_CHARS = 64  # completions longer than this (or 2 * max_answer_len) earn 0
MAX_DEPTH = 16  # deepest parenthesis nesting the verifier accepts

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM = 3  # the precedence of a number or a parenthesized expression
_MASK64 = (1 << 64) - 1
_SPLIT_BITS = 20


# --- the split hash -----------------------------------------------------------------


def _mix64(x: int) -> int:
  """splitmix64's finalizer on a Python int: a fixed 64-bit hash, independent of any seed."""
  x = (x + 0x9E3779B97F4A7C15) & _MASK64
  x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
  x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
  return x ^ (x >> 31)


def problem_key(numbers: Sequence[int], target: int) -> tuple[tuple[int, ...], int]:
  """The identity of a problem: its sorted numbers and its target (order of numbers ignored)."""
  return tuple(sorted(int(x) for x in numbers)), int(target)


def _problem_hash(numbers: Sequence[int], target: int) -> int:
  sorted_numbers, target = problem_key(numbers, target)
  h = _mix64(len(sorted_numbers))
  for x in sorted_numbers:
    h = _mix64((h * 1_000_003 + x) & _MASK64)
  return _mix64((h * 1_000_003 + target) & _MASK64)


# --- formatting and parsing ---------------------------------------------------------------


def _join(op: str, left: tuple[str, int], right: tuple[str, int]) -> tuple[str, int]:
  """`left op right` as (text, precedence), with only the parentheses the value needs.

  The left operand needs them when it binds looser than `op`; the right one also when it binds
  equally and `op` is `-` or `/` (`a-(b-c)`, `a/(b*c)`). `a+(b-c)` prints as `a+b-c` and
  `a*(b/c)` as `a*b/c`: the same exact value.
  """
  (ls, lp), (rs, rp) = left, right
  p = _PREC[op]
  if lp < p:
    ls = f"({ls})"
  if rp < p or (rp == p and op in "-/"):
    rs = f"({rs})"
  return ls + op + rs, p


def _lex(text: str) -> list[str]:
  tokens: list[str] = []
  i, n = 0, len(text)
  while i < n:
    c = text[i]
    if c == " ":
      i += 1
    elif c in "0123456789":
      j = i
      while j < n and text[j] in "0123456789":
        j += 1
      if text[i] == "0" and j - i > 1:
        raise ValueError(f"number with a leading zero: {text[i:j]!r}")
      tokens.append(text[i:j])
      i = j
    elif c in "+-*/()":
      tokens.append(c)
      i += 1
    else:
      raise ValueError(f"unexpected character {c!r}")
  return tokens


class _Parser:
  """Recursive descent over the tokens; the value is a Fraction, or None after a division by 0."""

  def __init__(self, tokens: list[str], max_depth: int):
    self.tokens, self.pos, self.depth, self.max_depth = tokens, 0, 0, max_depth
    self.numbers: list[int] = []

  def peek(self) -> str | None:
    return self.tokens[self.pos] if self.pos < len(self.tokens) else None

  def expr(self) -> Fraction | None:
    value = self.term()
    while self.peek() in ("+", "-"):
      op = self.tokens[self.pos]
      self.pos += 1
      right = self.term()
      value = (
        None if value is None or right is None else (value + right if op == "+" else value - right)
      )
    return value

  def term(self) -> Fraction | None:
    value = self.factor()
    while self.peek() in ("*", "/"):
      op = self.tokens[self.pos]
      self.pos += 1
      right = self.factor()
      if value is None or right is None or (op == "/" and right == 0):
        value = None
      else:
        value = value * right if op == "*" else value / right
    return value

  def factor(self) -> Fraction | None:
    tok = self.peek()
    if tok is None:
      raise ValueError("unexpected end of expression")
    if tok == "(":
      self.depth += 1
      if self.depth > self.max_depth:
        raise ValueError(f"parentheses nested deeper than {self.max_depth}")
      self.pos += 1
      value = self.expr()
      if self.peek() != ")":
        raise ValueError("missing ')'")
      self.pos += 1
      self.depth -= 1
      return value
    if tok[0] in "0123456789":
      self.pos += 1
      self.numbers.append(int(tok))
      return Fraction(int(tok))
    raise ValueError(f"expected a number or '(', got {tok!r}")


def parse_expression(
  text: str, *, max_len: int = MAX_COMPLETION_CHARS, max_depth: int = MAX_DEPTH
) -> tuple[Fraction | None, tuple[int, ...]]:
  """Parses and evaluates an expression exactly: (value, the numbers used, in order).

  The value is None when the expression divides by zero. Raises ValueError for malformed
  input, input longer than `max_len` characters, or parentheses nested deeper than
  `max_depth`. Never calls `eval`.

  >>> parse_expression("8/3*3")
  (Fraction(8, 1), (8, 3, 3))
  """
  if len(text) > max_len:
    raise ValueError(f"expression longer than {max_len} characters")
  tokens = _lex(text)
  if not tokens:
    raise ValueError("empty expression")
  parser = _Parser(tokens, max_depth)
  value = parser.expr()
  if parser.pos != len(tokens):
    raise ValueError(f"unexpected {tokens[parser.pos]!r} after a complete expression")
  return value, tuple(parser.numbers)


# --- brute-force solver -------------------------------------------------------------------


def solve(numbers: Sequence[int], target: int) -> str | None:
  """An expression using every number exactly once that evaluates exactly to `target`, or None.

  Brute force over all expression trees with exact rational arithmetic (intermediate values
  may be fractions or negative, as the verifier allows): the values reachable from every
  subset of the numbers are built from those of its two-part splits. Fine for up to 5
  numbers; meant for tests and analysis, not for the training loop.

  >>> solve([1, 1], 97) is None
  True
  """
  nums = [int(x) for x in numbers]
  if not 1 <= len(nums) <= 6 or any(x < 0 for x in nums):
    raise ValueError(f"solve needs 1..6 non-negative numbers, got {list(numbers)}")
  goal = Fraction(target)
  full = (1 << len(nums)) - 1
  table: list[dict[Fraction, tuple[str, int]]] = [{} for _ in range(full + 1)]
  for i, x in enumerate(nums):
    table[1 << i] = {Fraction(x): (str(x), _ATOM)}
  for mask in range(1, full + 1):  # every proper submask of `mask` is a smaller integer
    if mask & (mask - 1) == 0:
      continue
    reach: dict[Fraction, tuple[str, int]] = {}
    sub = (mask - 1) & mask
    while sub:
      left_values, right_values = table[sub], table[mask ^ sub]  # both orders are visited
      for a, ea in left_values.items():
        for b, eb in right_values.items():
          for op in OPS:
            if op == "/" and b == 0:
              continue
            v = a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a / b
            if v not in reach:
              reach[v] = _join(op, ea, eb)
              if mask == full and v == goal:
                return reach[v][0]
      sub = (sub - 1) & mask
    table[mask] = reach
  return table[full][goal][0] if goal in table[full] else None


# --- the task ----------------------------------------------------------------------------


class CountdownTask:
  """Reach `target` using each of `num_numbers` numbers in [1, max_number] exactly once."""

  name = "countdown"

  def __init__(
    self,
    *,
    num_numbers: int = 3,
    max_number: int = 20,
    max_target: int = 100,
    heldout_fraction: float = 1 / 16,
    format_reward: float = 0.1,
  ):
    if not 2 <= num_numbers <= 5:
      raise ValueError(f"task.num_numbers must be in [2, 5], got {num_numbers}")
    if max_number < 2:
      raise ValueError(f"task.max_number must be >= 2, got {max_number}")
    if max_target < 1:
      raise ValueError(f"task.max_target must be >= 1, got {max_target}")
    if not 0 < heldout_fraction < 1:
      raise ValueError(f"task.heldout_fraction must be in (0, 1), got {heldout_fraction}")
    if not 0 <= format_reward < 1:
      raise ValueError(
        f"task.format_reward must be in [0, 1) so that only a "
        f"correct answer "
        f"earns 1, got {format_reward}"
      )
    self.num_numbers, self.max_number, self.max_target = num_numbers, max_number, max_target
    self.heldout_fraction, self.format_reward = heldout_fraction, format_reward
    n, d = num_numbers, len(str(max_number))
    # bos, n numbers, n-1 commas, ":", target, "="
    self.max_prompt_len = 1 + n * d + (n - 1) + 1 + len(str(max_target)) + 1
    # n numbers, n-1 operators, at most n-2 parenthesis pairs (never around the root), eos
    self.max_answer_len = n * d + (n - 1) + 2 * (n - 2) + 1
    self.max_completion_chars = max(MAX_COMPLETION_CHARS, 2 * self.max_answer_len)

  # -- problems --

  def _is_heldout(self, numbers: Sequence[int], target: int) -> bool:
    h = _problem_hash(numbers, target) % (1 << _SPLIT_BITS)
    return h < self.heldout_fraction * (1 << _SPLIT_BITS)

  def _build(self, numbers: list[int], u: list[float]) -> tuple[int, str] | None:
    """One random expression tree over `numbers` driven by uniforms `u`: (value, text) or None."""
    values = list(numbers)
    exprs = [(str(x), _ATOM) for x in numbers]
    k = 0
    while len(values) > 1:
      size = len(values)
      i = min(int(u[k] * size), size - 1)
      j = min(int(u[k + 1] * (size - 1)), size - 2)
      j += j >= i  # an ordered pair of distinct positions: (left, right)
      a, b = values[i], values[j]
      ops = "+*" + ("-" if a > b else "") + ("/" if a % b == 0 else "")
      op = ops[min(int(u[k + 2] * len(ops)), len(ops) - 1)]
      k += 3
      value = a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a // b
      expr = _join(op, exprs[i], exprs[j])
      for idx in sorted((i, j), reverse=True):
        del values[idx], exprs[idx]
      values.append(value)
      exprs.append(expr)
    return (values[0], exprs[0][0]) if 1 <= values[0] <= self.max_target else None

  def _draw(self, rng: np.random.Generator, m: int) -> list[Example]:
    """Up to `m` problems (fewer: trees whose value is out of range are dropped), both splits."""
    n = self.num_numbers
    numbers = rng.integers(1, self.max_number + 1, (m, n)).tolist()
    uniforms = rng.random((m, 3 * (n - 1))).tolist()
    out = []
    for nums, u in zip(numbers, uniforms):
      built = self._build(nums, u)
      if built is not None:
        target, expr = built
        out.append(
          Example(
            prompt=",".join(map(str, nums)) + f":{target}=", answer=expr, meta=(tuple(nums), target)
          )
        )
    return out

  def train_examples(self, rng: np.random.Generator, n: int) -> list[Example]:
    out: list[Example] = []
    attempts = 0
    while len(out) < n:
      m = 2 * (n - len(out)) + 64
      attempts += m
      out.extend(ex for ex in self._draw(rng, m) if not self._is_heldout(*ex.meta))
      if not out and attempts >= 200_000:
        raise ValueError(
          f"no training problem found in {attempts} random trees; raise "
          f"task.max_target or lower task.heldout_fraction"
        )
    return out[:n]

  def heldout_examples(self, n: int) -> list[Example]:
    rng = np.random.default_rng(20261127)  # fixed: the held-out set never depends on the run
    out: list[Example] = []
    seen = set()
    stale_rounds, attempts = 0, 0
    # Fixed-size rounds, so that heldout_examples(m) is a prefix of heldout_examples(n), m < n.
    # Stop after 4 rounds without a new problem, or after a budget of trees.
    while len(out) < n and stale_rounds < 4 and attempts < 1_000_000 + 1_000 * n:
      attempts += 4096
      before = len(out)
      for ex in self._draw(rng, 4096):
        key = problem_key(*ex.meta)
        if key not in seen and self._is_heldout(*ex.meta):
          seen.add(key)
          out.append(ex)
          if len(out) == n:
            break
      stale_rounds = stale_rounds + 1 if len(out) == before else 0
    if len(out) < n:
      raise ValueError(
        f"found only {len(out)} distinct held-out problems of this task, fewer "
        f"than eval.num_prompts={n}; raise task.max_number, "
        f"task.max_target or task.heldout_fraction, or lower "
        f"eval.num_prompts"
      )
    return out[:n]

  def alphabet(self) -> str:
    return ALPHABET

  def max_lengths(self, tokenizer) -> tuple[int, int]:
    """The widest prompt and answer this task can print (exact for the character tokenizer), or
    longer ones among 512 fixed draws (other tokenizers)."""
    n, big = self.num_numbers, str(10 ** len(str(self.max_number)) - 1)
    prompt = ",".join([big] * n) + ":" + "9" * len(str(self.max_target)) + "="
    answer = "(" * (n - 2) + big + ")".join(["+" + big] * (n - 1))
    drawn = self.train_examples(np.random.default_rng(0), 512)
    return max_lengths_of(tokenizer, [Example(prompt=prompt, answer=answer), *drawn])

  def sft_target(self, example: Example) -> str:
    """The demonstration: the generator's own expression."""
    return example.answer

  # -- verifier --

  @staticmethod
  def _problem(example: Example) -> tuple[tuple[int, ...], int]:
    if example.meta is not None:
      numbers, target = example.meta
      return tuple(int(x) for x in numbers), int(target)
    head, _, rest = example.prompt.partition(":")  # "3,7,12:23="
    return tuple(int(x) for x in head.split(",")), int(rest.rstrip("="))

  def score(self, examples: Sequence[Example], completions: Sequence[str]) -> dict[str, np.ndarray]:
    if len(examples) != len(completions):
      raise ValueError(f"{len(examples)} examples but {len(completions)} completions")
    rewards = np.zeros(len(examples), np.float32)
    correct = np.zeros(len(examples), bool)
    for i, (ex, c) in enumerate(zip(examples, completions)):
      numbers, target = self._problem(ex)
      try:
        value, used = parse_expression(c, max_len=self.max_completion_chars)
      except ValueError:
        continue
      given, used_counts = collections.Counter(numbers), collections.Counter(used)
      if used_counts - given:  # a number not given, or used more often than given
        continue
      if used_counts == given and value is not None and value == target:
        rewards[i], correct[i] = 1.0, True
      else:
        rewards[i] = self.format_reward
    return dict(reward=rewards, correct=correct)
