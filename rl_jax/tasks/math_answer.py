"""A math-answer verifier: extract the final answer of a solution, normalise it, compare.

Extraction (`extract_answer`, for completions). The final answer of a text is, in this order:

1. the text after the LAST `####` (GSM8K style): the rest of that line, stripped (no answer
   if it is empty);
2. else the content of the LAST `\\boxed{...}` or `\\fbox{...}`, with balanced nested braces
   (`\\boxed{\\frac{1}{2}}` -> `\\frac{1}{2}`), or the token after `\\boxed ` (`\\boxed 5`); a
   box whose braces never close is ignored (no answer if it is empty);
3. else the LAST number of the text: an integer or decimal (`42`, `-3`, `2.5`, `.5`), with
   thousands commas (`1,234`), optionally a simple fraction (`3/4`), or a LaTeX fraction of
   such numbers (`\\frac{1}{2}`, `\\dfrac{3}{4}`, `\\frac12`). A `-` is its sign only where
   it does not follow a letter, digit, `_` or closing bracket (`10-5` ends with `5`);
4. else None.

A reference (`reference_answer`, for `Example.answer`) is read the same way for rules 1 and 2;
without a `####` or a box, a one-line reference is its own answer as a whole (`"42"`,
`"\\frac{\\pi}{2}"`, `"(1,2)"`), and a longer one its last number.

Normalisation (`normalize_answer`), in this order: whitespace at either end is stripped;
`$` and `\\$` are removed; LaTeX spacing `\\!` `\\,` `\\;` `\\:` `\\ ` `\\quad` `\\qquad` and
`\\displaystyle` are removed; `\\left` and `\\right` are removed; `\\dfrac` and `\\tfrac`
become `\\frac`; degrees (`^\\circ`, `^{\\circ}`, `°`) and percent signs (`\\%`, `%`) are
removed; trailing units in `\\text{...}`, `\\textrm{...}`, `\\textbf{...}`, `\\textit{...}`,
`\\mbox{...}` or `\\mathrm{...}` (optionally squared/cubed: `^2`, `^{3}`) are dropped when
something precedes them (`5\\text{ cm}^2` -> `5`), and the remaining such wrappers are
unwrapped (`\\text{Monday}` -> `Monday`); a leading variable assignment `x =` (one letter,
optionally with a subscript) is dropped; one trailing period is removed; all whitespace is
removed; `{,}` becomes `,`, and thousands commas are removed when the whole answer is a number
written with them (`1,234.5`); `\\frac12`, `\\frac1{2}`, `\\frac{1}2` become `\\frac{1}{2}`;
one pair of braces around the whole answer is removed. If what is left is a number, the result
is that number as an exact `fractions.Fraction`: an integer or decimal with an optional sign
and an optional exponent of at most three digits (`-3`, `3.0`, `.5`, `2.5e3`), a quotient `a/b`
of two such numbers, or `\\frac{a}{b}` of two such numbers with an optional sign before it
(`-\\frac{1}{2}`, `\\frac{-1}{2}`); a zero denominator is not a number. Otherwise the result is
the normalised string (case is kept: `X` and `x` differ).

Comparison (`answers_match`): two numbers match when they are equal as Fractions (`"0.5"`,
`"\\frac{1}{2}"`, `"1/2"` all match; `"1,000"` matches `"1000"`; `"3.0"` matches `"3"`); two
strings when they are equal and non-empty; a number never matches a string; None (no answer)
never matches.

Hostile input: only the last `MAX_CHARS` characters of a text are examined, the regular
expressions have no nested unbounded repetition (linear time), and numbers too long for exact
parsing compare as strings.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

MAX_CHARS = 10_000  # only the last MAX_CHARS characters of a completion or reference count
_MAX_NUMBER_CHARS = 1_000  # longer "numbers" compare as strings (no huge-integer parsing)

# --- extraction ---------------------------------------------------------------------------

_DEC = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?"  # 12, 1,234, 2.5, 1,234.5
_TEX_FRAC = r"\\[dt]?frac(?:\{\s*-?" + _DEC + r"\s*\}\{\s*-?" + _DEC + r"\s*\}|\d\d)"
_LAST_NUMBER_RE = re.compile(
  r"(?:(?<![\w)\]}])-)?"  # a sign, unless it follows a word character or a closing bracket
  r"(?:" + _TEX_FRAC + r"|" + _DEC + r"(?:/\d+(?:\.\d+)?)?|(?<![\w.])\.\d+)"
)
_BOX_COMMANDS = ("\\boxed", "\\fbox")


def _last_boxed(text: str) -> str | None:
  """The content of the last `\\boxed{...}` / `\\fbox{...}` (or `\\boxed x`), None if none."""
  start, command = max((text.rfind(c), c) for c in _BOX_COMMANDS)
  if start < 0:
    return None
  i = start + len(command)
  if text.startswith(" ", i):  # `\boxed 5`: the next token
    token = text[i:].lstrip(" ").split(maxsplit=1)
    return token[0].split("$", 1)[0] if token else ""
  if not text.startswith("{", i):
    return None
  depth = 0
  for j in range(i, len(text)):
    c = text[j]
    if c == "{":
      depth += 1
    elif c == "}":
      depth -= 1
      if depth == 0:
        return text[i + 1 : j].strip()
  return None  # never closed


def extract_answer(text: str) -> str | None:
  """The final answer of a solution or completion (see the module docstring), or None."""
  if not text:
    return None
  text = text[-MAX_CHARS:]
  i = text.rfind("####")
  if i >= 0:
    return text[i + 4 :].split("\n", 1)[0].strip() or None
  boxed = _last_boxed(text)
  if boxed is not None:
    return boxed or None
  last = None
  for match in _LAST_NUMBER_RE.finditer(text):
    last = match
  return last.group(0) if last is not None else None


def reference_answer(reference: str) -> str | None:
  """The answer of a reference (`Example.answer`): after `####`, else the last box, else the
  whole reference when it is one line, else its last number."""
  if not reference:
    return None
  text = reference[-MAX_CHARS:]
  if "####" in text or any(c in text for c in _BOX_COMMANDS):
    if (answer := extract_answer(text)) is not None:
      return answer
  stripped = text.strip()
  if stripped and "\n" not in stripped:
    return stripped
  return extract_answer(text)


# --- normalisation ------------------------------------------------------------------------

_SPACING_RE = re.compile(r"\\(?:[!,;: ]|q?quad(?![a-zA-Z])|displaystyle(?![a-zA-Z]))")
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right)(?![a-zA-Z])")
_DEGREES_RE = re.compile(r"\^\s*(?:\{\s*\\circ\s*\}|\\circ(?![a-zA-Z]))|°")
_WRAPPER = r"\\(?:text|textrm|textbf|textit|mbox|mathrm)\s*\{([^{}]*)\}"
_TRAILING_UNIT_RE = re.compile(_WRAPPER + r"(?:\^\s*(?:\d|\{\s*\d\s*\}))?\s*$")
_WRAPPER_RE = re.compile(_WRAPPER)
_ASSIGNMENT_RE = re.compile(r"[A-Za-z](?:_[A-Za-z0-9]|_\{[A-Za-z0-9]+\})?=")
_THOUSANDS_RE = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_FRAC_SHORT_RE = re.compile(r"\\frac(?:(\d)(\d)|(\d)\{|\{([^{}]*)\}(\d))")
_NUM = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,3})?"
_NUMBER_RE = re.compile(_NUM)
_QUOTIENT_RE = re.compile(r"(" + _NUM + r")/(" + _NUM + r")")
_TEX_QUOTIENT_RE = re.compile(r"([+-]?)\\frac\{(" + _NUM + r")\}\{(" + _NUM + r")\}")


def _frac_short(m: re.Match) -> str:
  if m.group(1) is not None:  # \frac12
    return "\\frac{" + m.group(1) + "}{" + m.group(2) + "}"
  if m.group(3) is not None:  # \frac1{2}
    return "\\frac{" + m.group(3) + "}{"
  return "\\frac{" + m.group(4) + "}{" + m.group(5) + "}"  # \frac{1}2


def _as_number(s: str) -> Fraction | None:
  """`s` as an exact number, or None when it is not one of the number forms."""
  if len(s) > _MAX_NUMBER_CHARS:
    return None
  try:
    if _NUMBER_RE.fullmatch(s):
      return Fraction(s)
    if m := _QUOTIENT_RE.fullmatch(s):
      num, den = Fraction(m.group(1)), Fraction(m.group(2))
    elif m := _TEX_QUOTIENT_RE.fullmatch(s):
      num, den = Fraction(m.group(2)), Fraction(m.group(3))
      num = -num if m.group(1) == "-" else num
    else:
      return None
  except (ValueError, OverflowError):  # e.g. more digits than int() parses
    return None
  return num / den if den != 0 else None


def normalize_answer(ans: str) -> Fraction | str:
  """`ans` normalised for comparison (see the module docstring): a `Fraction` when the whole
  answer is a number, else the canonical string."""
  s = ans[:MAX_CHARS].strip()
  s = s.replace("\\$", "").replace("$", "")
  s = _SPACING_RE.sub("", s)
  s = _LEFT_RIGHT_RE.sub("", s)
  s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
  s = _DEGREES_RE.sub("", s)
  s = s.replace("\\%", "").replace("%", "")
  for _ in range(3):  # trailing units, e.g. `5\text{ m}\text{/s}`
    m = _TRAILING_UNIT_RE.search(s)
    if m is None or not s[: m.start()].strip():
      break
    s = s[: m.start()].rstrip()
  s = _WRAPPER_RE.sub(lambda m: m.group(1), s)
  s = "".join(s.split())
  if s.count("=") == 1 and (m := _ASSIGNMENT_RE.match(s)):
    s = s[m.end() :]
  if s.endswith("."):
    s = s[:-1]
  s = s.replace("{,}", ",")
  if _THOUSANDS_RE.fullmatch(s):
    s = s.replace(",", "")
  s = _FRAC_SHORT_RE.sub(_frac_short, s)
  if len(s) >= 2 and s[0] == "{" and s[-1] == "}" and _balanced(s[1:-1]):
    s = s[1:-1]
  number = _as_number(s)
  return number if number is not None else s


def _balanced(s: str) -> bool:
  depth = 0
  for c in s:
    depth += (c == "{") - (c == "}")
    if depth < 0:
      return False
  return depth == 0


def answers_match(pred: str | None, reference: str) -> bool:
  """Whether the answer `pred` equals the answer `reference` after normalisation: numbers
  exactly as Fractions, other answers as non-empty normalised strings; None never matches."""
  if pred is None or reference is None:
    return False
  a, b = normalize_answer(pred), normalize_answer(reference)
  if isinstance(a, Fraction) and isinstance(b, Fraction):
    return a == b
  return isinstance(a, str) and isinstance(b, str) and a != "" and a == b


def score_math(examples: Sequence, completions: Sequence[str]) -> dict[str, np.ndarray]:
  """The math verifier, one completion per example: `reward` (float32[N]) 1 where the
  completion's extracted answer matches the reference answer of `example.answer`, else 0;
  `correct` (bool[N]) the same as booleans; `answered` (float32[N]) 1 where an answer could
  be extracted from the completion at all."""
  if len(examples) != len(completions):
    raise ValueError(f"{len(examples)} examples but {len(completions)} completions")
  n = len(examples)
  correct = np.zeros(n, bool)
  answered = np.zeros(n, np.float32)
  references: dict[str, str | None] = {}  # a group of completions shares one reference
  for i, (ex, completion) in enumerate(zip(examples, completions)):
    pred = extract_answer(completion)
    if pred is None:
      continue
    answered[i] = 1.0
    if ex.answer not in references:
      references[ex.answer] = reference_answer(ex.answer)
    ref = references[ex.answer]
    correct[i] = ref is not None and answers_match(pred, ref)
  return dict(reward=correct.astype(np.float32), correct=correct, answered=answered)
