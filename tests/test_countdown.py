"""Tests of rl_jax.tasks.countdown: the expression parser, the verifier, the problem generator
with its train / held-out split, and the brute-force solver."""

import re
import time
from fractions import Fraction

import numpy as np
import pytest

from rl_jax.tasks.base import Example
from rl_jax.tasks.countdown import MAX_DEPTH, CountdownTask, parse_expression, problem_key, solve
from rl_jax.tokenizers import CharTokenizer

PROMPT = re.compile(r"^(\d+(?:,\d+)*):(\d+)=$")


def _example(numbers, target):
  return Example(
    prompt=",".join(map(str, numbers)) + f":{target}=", answer="", meta=(tuple(numbers), target)
  )


def _score(task, numbers, target, completions):
  scores = task.score([_example(numbers, target)] * len(completions), completions)
  return scores["reward"].tolist(), scores["correct"].tolist()


# --- parser ---------------------------------------------------------------------------


@pytest.mark.parametrize(
  "text, value, numbers",
  [
    ("3*(4+5)", 27, (3, 4, 5)),
    ("3*4+5", 17, (3, 4, 5)),  # * binds tighter than +
    ("3+4*5", 23, (3, 4, 5)),
    ("20-4-3", 13, (20, 4, 3)),  # left-associative
    ("20-(4-3)", 19, (20, 4, 3)),
    ("64/4/2", 8, (64, 4, 2)),
    ("64/(4/2)", 32, (64, 4, 2)),
    ("8/3*3", 8, (8, 3, 3)),  # exact: 8/3 is a Fraction, not a float
    ("((7))", 7, (7,)),  # redundant parentheses are fine
    ("3-5+4", 2, (3, 5, 4)),  # intermediate values may be negative ...
    ("1/2+1/2", 1, (1, 2, 1, 2)),  # ... or fractions
    (" 12 * 3 - 7 ", 29, (12, 3, 7)),  # spaces between tokens are ignored
    ("0", 0, (0,)),
  ],
)
def test_parse_values_and_numbers(text, value, numbers):
  got_value, got_numbers = parse_expression(text)
  assert isinstance(got_value, Fraction) and got_value == value
  assert got_numbers == numbers


def test_parse_exact_fraction_value():
  assert parse_expression("7/3")[0] == Fraction(7, 3)
  assert parse_expression("8/3*3")[0] == 8


def test_division_by_zero_is_well_formed_without_a_value():
  assert parse_expression("4/(3-3)") == (None, (4, 3, 3))
  assert parse_expression("4/0+1") == (None, (4, 0, 1))


@pytest.mark.parametrize(
  "text",
  [
    "",
    "   ",
    "3+",
    "(3",
    "3)(",
    "3)",
    "()",
    "++",
    "3++4",
    "3 4",
    "(3)(4)",
    "3(4)",
    "-3+5",  # no unary minus
    "+3",  # no unary plus
    "03+4",  # no leading zeros
    "3+4=7",  # nothing but the expression
    "3.5",
    "3^2",
    "3**2",
    "2x3",
    "abs(3)",
    "__import__('os')",
    "３",
  ],
)
def test_parse_rejects_malformed(text):
  with pytest.raises(ValueError):
    parse_expression(text)


def test_parse_bounds_length_and_depth():
  with pytest.raises(ValueError, match="longer"):
    parse_expression("1+" * 40 + "1")  # 81 characters > 64
  ok = "(" * MAX_DEPTH + "1" + ")" * MAX_DEPTH
  assert parse_expression(ok)[0] == 1
  too_deep = "(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1)
  with pytest.raises(ValueError, match="deeper"):
    parse_expression(too_deep)
  # Even with the length bound lifted, deep nesting fails fast instead of blowing the stack.
  with pytest.raises(ValueError, match="deeper"):
    parse_expression("(" * 100_000 + "1" + ")" * 100_000, max_len=10**6)


# --- verifier ----------------------------------------------------------------------------


def test_score_correct_wrong_and_garbage():
  task = CountdownTask(format_reward=0.1)
  rewards, correct = _score(
    task,
    (3, 7, 12),
    29,
    [
      "12*3-7",  # correct
      "3*12-7",  # correct, other order
      "(12*3)-7",  # correct, redundant parentheses
      "12+3+7",  # well formed, all numbers, wrong value -> format reward
      "12*3",  # well formed, a number unused -> format reward
      "12*3-7-7",  # 7 used twice -> 0
      "12*3-8",  # 8 not given -> 0
      "12*3-7+0",  # 0 not given -> 0
      "12*3-",  # malformed -> 0
      "29",  # the target itself is not a given number -> 0
      "",  # empty -> 0
      "12*3-7=29",  # trailing text -> 0
    ],
  )
  assert correct == [True, True, True] + [False] * 9
  np.testing.assert_allclose(rewards, [1, 1, 1, 0.1, 0.1, 0, 0, 0, 0, 0, 0, 0])


def test_score_exact_arithmetic_and_division_by_zero():
  task = CountdownTask(format_reward=0.25)
  rewards, correct = _score(task, (8, 3, 3), 8, ["8/3*3", "8/(3-3)", "8*3/3"])
  assert correct == [True, False, True]
  assert rewards == [1.0, 0.25, 1.0]


def test_score_uses_numbers_as_a_multiset():
  task = CountdownTask(format_reward=0.1)
  # Duplicated given numbers must each be used once: 5,5,2 -> 12 is 5+5+2.
  rewards, correct = _score(task, (5, 5, 2), 12, ["5+5+2", "5+2+5", "5*2+2", "5+5", "5+5+5-3"])
  assert correct == [True, True, False, False, False]
  np.testing.assert_allclose(rewards, [1, 1, 0, 0.1, 0])


def test_score_hostile_input_is_zero_and_fast():
  task = CountdownTask()
  hostile = [
    "(" * 10_000 + "1" + ")" * 10_000,
    "(" * 30 + "3" + ")" * 30,  # short but deeper than MAX_DEPTH
    "9" * 50_000,
    "3*" * 5000 + "3",
    "1/" * 30 + "0",
    "\x00" * 100,
  ]
  start = time.perf_counter()
  scores = task.score([_example((3, 7, 12), 29)] * len(hostile), hostile)
  assert time.perf_counter() - start < 0.5
  assert scores["reward"].tolist() == [0.0] * len(hostile)
  assert not scores["correct"].any()


def test_score_types_and_prompt_fallback():
  task = CountdownTask()
  scores = task.score([Example(prompt="3,7,12:29=", answer="12*3-7")], ["3*12-7"])
  assert scores["reward"].dtype == np.float32 and scores["correct"].dtype == bool
  assert scores["correct"].tolist() == [True]  # the problem is read from the prompt without meta


# --- generator and split -----------------------------------------------------------------


def _check_example(task, ex):
  m = PROMPT.match(ex.prompt)
  assert m, ex
  numbers, target = tuple(int(x) for x in m.group(1).split(",")), int(m.group(2))
  assert ex.meta == (numbers, target)
  assert len(numbers) == task.num_numbers
  assert all(1 <= x <= task.max_number for x in numbers)
  assert 1 <= target <= task.max_target
  assert task.sft_target(ex) == ex.answer
  assert len(CharTokenizer(task.alphabet()).encode_prompt(ex.prompt)) <= task.max_prompt_len
  assert len(CharTokenizer(task.alphabet()).encode(ex.answer, eos=True)) <= task.max_answer_len


def test_default_lengths():
  task = CountdownTask()
  assert task.name == "countdown"
  # bos + "dd,dd,dd:ddd=" is 14 tokens; "18/(20-17)" + eos is 11.
  assert task.max_lengths(CharTokenizer(task.alphabet())) == (14, 11)
  assert CharTokenizer(task.alphabet()).vocab_size == 3 + 20


@pytest.mark.parametrize(
  "kwargs",
  [
    {},
    {"num_numbers": 4, "max_number": 12, "max_target": 50},
    {"num_numbers": 2, "max_number": 50, "heldout_fraction": 0.25},
    {"num_numbers": 5, "max_number": 9, "max_target": 200},
  ],
)
def test_generated_answers_are_correct_and_fit(kwargs):
  task = CountdownTask(**kwargs)
  train = task.train_examples(np.random.default_rng(0), 500)
  heldout = task.heldout_examples(200)
  assert len(train) == 500 and len(heldout) == 200
  examples = train + heldout
  for ex in examples:
    _check_example(task, ex)
  scores = task.score(examples, [ex.answer for ex in examples])
  assert scores["correct"].all() and (scores["reward"] == 1).all()


def test_default_length_bounds_are_attained():
  task = CountdownTask()
  examples = task.train_examples(np.random.default_rng(2), 5000)
  assert max(len(CharTokenizer(task.alphabet()).encode_prompt(ex.prompt)) for ex in examples) == 14
  assert (
    max(len(CharTokenizer(task.alphabet()).encode(ex.answer, eos=True)) for ex in examples) == 11
  )


def test_generator_uses_every_operator_and_parentheses():
  task = CountdownTask()
  answers = "".join(ex.answer for ex in task.train_examples(np.random.default_rng(1), 2000))
  assert set("+-*/()") <= set(answers)


def test_train_examples_reproducible_per_rng():
  task = CountdownTask()
  a = task.train_examples(np.random.default_rng(7), 100)
  b = task.train_examples(np.random.default_rng(7), 100)
  c = task.train_examples(np.random.default_rng(8), 100)
  assert a == b and a != c


def test_heldout_disjoint_from_training_and_deterministic():
  task = CountdownTask()
  heldout = task.heldout_examples(200)
  assert heldout == CountdownTask().heldout_examples(200)
  assert heldout[:50] == CountdownTask().heldout_examples(50)
  keys = [problem_key(*ex.meta) for ex in heldout]
  assert len(set(keys)) == 200  # distinct problems, whatever the order of the numbers
  train_keys = {
    problem_key(*ex.meta) for ex in task.train_examples(np.random.default_rng(123), 20_000)
  }
  assert not train_keys & set(keys)
  # The split depends on the problem only, not on the task's other settings.
  wider = CountdownTask(max_number=30, max_target=200)
  assert all(wider._is_heldout(*k) for k in keys)


def test_heldout_raises_when_too_few_problems():
  task = CountdownTask(num_numbers=2, max_number=2, max_target=2, heldout_fraction=0.5)
  with pytest.raises(ValueError, match="held-out"):
    task.heldout_examples(100)


# --- solver ----------------------------------------------------------------------------


def test_solve_generated_problems():
  task = CountdownTask(num_numbers=4, max_number=15, max_target=60)
  examples = task.train_examples(np.random.default_rng(3), 30) + task.heldout_examples(30)
  for ex in examples:
    numbers, target = ex.meta
    expr = solve(numbers, target)
    assert expr is not None, ex
    assert task.score([ex], [expr])["correct"].tolist() == [True], (ex, expr)


def test_solve_defaults_and_impossible():
  task = CountdownTask()
  for ex in task.heldout_examples(40):
    assert solve(*ex.meta) is not None
  assert solve([1, 1], 97) is None
  assert solve([2, 3], 7) is None
  expr = solve([3, 7, 12], 29)
  value, used = parse_expression(expr)
  assert value == 29 and sorted(used) == [3, 7, 12]
  assert solve([4], 4) == "4" and solve([4], 5) is None


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
  "kwargs, field",
  [
    ({"num_numbers": 1}, "task.num_numbers"),
    ({"num_numbers": 6}, "task.num_numbers"),
    ({"max_number": 1}, "task.max_number"),
    ({"max_target": 0}, "task.max_target"),
    ({"heldout_fraction": 0.0}, "task.heldout_fraction"),
    ({"heldout_fraction": 1.0}, "task.heldout_fraction"),
    ({"format_reward": -0.1}, "task.format_reward"),
    ({"format_reward": 1.0}, "task.format_reward"),
  ],
)
def test_constructor_validation(kwargs, field):
  with pytest.raises(ValueError, match=re.escape(field)):
    CountdownTask(**kwargs)
