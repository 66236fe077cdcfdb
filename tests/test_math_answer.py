"""Tests of rl_jax.tasks.math_answer: answer extraction, normalisation, matching, scoring."""

import time
from fractions import Fraction

import numpy as np
import pytest

from rl_jax.tasks.base import Example
from rl_jax.tasks.math_answer import (
  answers_match,
  extract_answer,
  normalize_answer,
  reference_answer,
  score_math,
)

GSM8K_SOLUTION = (
  "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
  "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
  "#### 72"
)


# --- extraction -------------------------------------------------------------------------


@pytest.mark.parametrize(
  "text, answer",
  [
    (GSM8K_SOLUTION, "72"),
    ("#### 5\nsecond try: 7 apples\n#### 1,000 \nthanks, 3", "1,000"),  # the last ####
    ("#### $18.00", "$18.00"),
    ("total 12\n####", None),  # an empty #### line is no answer (no fallback)
    ("so $x = \\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("\\boxed{3} or rather \\boxed{\\sqrt{\\frac{3}{4}}} done", "\\sqrt{\\frac{3}{4}}"),
    ("the answer is \\fbox{7}, not 8", "7"),
    ("\\boxed 5$ and more", "5"),
    ("\\boxed{}", None),
    ("1 then \\boxed{\\frac{1}{2} never closed 9", "9"),  # an unclosed box is ignored
    ("first 3 then 4.", "4"),
    ("The total is -1,234.5 dollars", "-1,234.5"),
    ("It takes 3/4 of an hour", "3/4"),
    ("10-5", "5"),  # a minus after a digit is subtraction, not a sign
    ("x = -5", "-5"),
    ("so it is .5", ".5"),
    ("half: \\dfrac{1}{2}", "\\dfrac{1}{2}"),
    ("1234,567", "567"),  # not a thousands grouping
    ("no numbers here", None),
    ("", None),
  ],
)
def test_extract_answer(text, answer):
  assert extract_answer(text) == answer


def test_reference_answer():
  assert reference_answer(GSM8K_SOLUTION) == "72"
  assert reference_answer("42") == "42"
  assert reference_answer("  x^2 + 1 \n") == "x^2 + 1"  # one line: the whole reference
  assert reference_answer("\\frac{\\pi}{2}") == "\\frac{\\pi}{2}"
  assert reference_answer("We get 3 + 4 = 7.\nSo 7 times 2 is 14.") == "14"
  assert reference_answer("so \\boxed{(1, 2)}") == "(1, 2)"
  assert reference_answer("") is None


# --- normalisation and matching ------------------------------------------------------------


@pytest.mark.parametrize(
  "text, value",
  [
    ("0.5", Fraction(1, 2)),
    ("\\frac{1}{2}", Fraction(1, 2)),
    ("\\dfrac12", Fraction(1, 2)),
    ("\\tfrac{1}2", Fraction(1, 2)),
    ("1/2", Fraction(1, 2)),
    ("-\\frac{3}{4}", Fraction(-3, 4)),
    ("\\frac{-3}{4}", Fraction(-3, 4)),
    ("-0.75", Fraction(-3, 4)),
    (" 1,000 ", 1000),
    ("1{,}000", 1000),
    ("1\\,000", 1000),
    ("-1,234.5", Fraction(-2469, 2)),
    ("3.0", 3),
    ("3.", 3),
    ("$3$", 3),
    ("\\$18.00", 18),
    ("50\\%", 50),
    ("90^\\circ", 90),
    ("90^{\\circ}", 90),
    ("5\\text{ cm}^2", 5),
    ("12 \\mathrm{m}", 12),
    ("x = 7", 7),
    ("\\left( 7 \\right)", "(7)"),
    ("{7}", 7),
    ("2.5e3", 2500),
    ("1/0", "1/0"),  # a zero denominator is not a number
    ("\\text{Monday}", "Monday"),
    ("x^2 + 1", "x^2+1"),
    ("\\left(1, 2\\right)", "(1,2)"),
    ("\\dfrac{\\pi}{2}", "\\frac{\\pi}{2}"),
  ],
)
def test_normalize_answer(text, value):
  got = normalize_answer(text)
  assert type(got) is type(value if isinstance(value, str) else Fraction(value))
  assert got == value


@pytest.mark.parametrize(
  "pred, ref, match",
  [
    ("0.5", "\\frac{1}{2}", True),
    ("1/2", "\\frac{1}{2}", True),
    ("\\frac12", "0.5", True),
    ("1,000", "1000", True),
    ("3.0", "3", True),
    ("-2", "-2.00", True),
    ("$1,234", "1234", True),
    ("0.33", "\\frac{1}{3}", False),  # exact, not approximate
    ("-3", "3", False),
    ("Monday", "\\text{Monday}", True),
    ("x^2+1", "x^2 + 1", True),
    ("X^2+1", "x^2+1", False),  # case is kept
    ("five", "5", False),  # a string never matches a number
    ("\\frac{\\pi}{2}", "\\dfrac{\\pi}{2}", True),
    (None, "5", False),
    ("", "", False),  # an empty answer is no answer
    ("$", "$", False),
  ],
)
def test_answers_match(pred, ref, match):
  assert answers_match(pred, ref) is match


def test_hostile_inputs_are_fast():
  hostile = [
    "1" * 1_000_000,
    "1," * 500_000,
    "-" * 1_000_000,
    "#" * 1_000_000,
    "{" * 1_000_000,
    "\\boxed{" * 150_000,
    "\\frac{1}{" * 100_000,
    "\\text{" * 150_000 + "}",
    "1.2/3" * 200_000,
    "9" * 9_990 + "/" + "9" * 9_990,
    ("a" * 5_000 + "\n") * 200,
    "#### " + "1" * 20_000,
  ]
  start = time.perf_counter()
  for text in hostile:
    pred = extract_answer(text)
    answers_match(pred, "42")
    normalize_answer(text)
    score_math([Example("p", text)], [text])
  assert time.perf_counter() - start < 2.0


# --- scoring -----------------------------------------------------------------------------


def test_score_math_batch():
  examples = [
    Example("q0", GSM8K_SOLUTION),
    Example("q1", "42"),
    Example("q2", "\\frac{1}{2}"),
    Example("q3", "x^2+1"),
    Example("q4", "#### 1,000"),
    Example("q5", "42"),
  ]
  completions = [
    "48/2 = 24, then 48 + 24 = 72.\n#### 72",  # right
    "I think it is 41.",  # answered, wrong
    "so the probability is \\boxed{0.5}",  # right (0.5 == 1/2)
    "no idea",  # no answer
    "The sum is 1000.",  # right by the last-number fallback
    "#### forty-two",  # answered, wrong
  ]
  scores = score_math(examples, completions)
  assert set(scores) == {"reward", "correct", "answered"}
  assert scores["reward"].dtype == np.float32 and scores["answered"].dtype == np.float32
  assert scores["correct"].dtype == bool
  np.testing.assert_array_equal(scores["reward"], [1, 0, 1, 0, 1, 0])
  np.testing.assert_array_equal(scores["correct"], [True, False, True, False, True, False])
  np.testing.assert_array_equal(scores["answered"], [1, 1, 1, 0, 1, 1])
  empty = score_math([], [])
  assert empty["reward"].shape == (0,) and empty["correct"].shape == (0,)
  with pytest.raises(ValueError, match="2 examples but 1 completions"):
    score_math(examples[:2], completions[:1])
