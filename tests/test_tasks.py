"""Tests of rl_jax.tasks: the character tokenizer and the arithmetic task with its verifier."""

import re
import signal

import numpy as np
import pytest

from rl_jax import tasks
from rl_jax.components import Component
from rl_jax.tasks import ArithmeticTask, Example
from rl_jax.tasks.arithmetic import carry_free_sum
from rl_jax.tokenizers import CharTokenizer

ALPHABET = "0123456789+-*="


# --- arithmetic: examples ---------------------------------------------------------

PROMPT = re.compile(r"^(\d+)([+\-*])(\d+)=$")


def _parse(example):
  a, op, b = PROMPT.match(example.prompt).groups()
  return int(a), op, int(b)


def test_prompts_parse_and_answers_are_right():
  task = ArithmeticTask(max_digits=3, ops="+-*")
  examples = task.train_examples(np.random.default_rng(0), 3000)
  assert len(examples) == 3000
  seen_ops, digit_counts = set(), set()
  for ex in examples:
    a, op, b = _parse(ex)
    assert ex.answer == str({"+": a + b, "-": a - b, "*": a * b}[op]), ex
    assert str(a) == ex.prompt[: len(str(a))]  # no leading zeros
    seen_ops.add(op)
    digit_counts |= {len(str(a)), len(str(b))}
    # The advertised bucket sizes hold: BOS + prompt, answer + EOS.
    assert len(CharTokenizer(task.alphabet()).encode_prompt(ex.prompt)) <= task.max_prompt_len
    assert len(CharTokenizer(task.alphabet()).encode(ex.answer, eos=True)) <= task.max_answer_len
  assert seen_ops == {"+", "-", "*"} and digit_counts == {1, 2, 3}
  # Hand values: BOS + "999*999=" is 9 tokens; sign + 6 digits + EOS is 8.
  assert task.max_lengths(CharTokenizer(task.alphabet())) == (9, 8)


def test_train_examples_are_reproducible_per_seed():
  task = ArithmeticTask(ops="+-")
  a = task.train_examples(np.random.default_rng(3), 50)
  b = task.train_examples(np.random.default_rng(3), 50)
  c = task.train_examples(np.random.default_rng(4), 50)
  assert a == b and a != c


def test_heldout_never_drawn_for_training():
  # 2 digits and 3 ops: 30000 problems, ~1900 held out. 20000 unfiltered draws would hit
  # hundreds of held-out problems, so a leak cannot hide.
  task = ArithmeticTask(max_digits=2, ops="+-*")
  heldout = {_parse(ex) for ex in task.heldout_examples(400)}
  train = set()
  for seed in range(20):
    train |= {_parse(ex) for ex in task.train_examples(np.random.default_rng(seed), 1000)}
  assert len(train) > 8000  # the draws really cover the space
  assert not heldout & train, sorted(heldout & train)[:5]


def test_heldout_is_deterministic_and_unique():
  task = ArithmeticTask(max_digits=3, ops="+-*")
  first = task.heldout_examples(300)
  assert len(first) == 300
  assert len({ex.prompt for ex in first}) == 300
  assert first == ArithmeticTask(max_digits=3, ops="+-*").heldout_examples(300)
  for ex in first:
    a, op, b = _parse(ex)
    assert ex.answer == str({"+": a + b, "-": a - b, "*": a * b}[op])


def test_split_of_a_problem_does_not_depend_on_the_other_ops():
  only_minus = ArithmeticTask(max_digits=2, ops="-")
  plus_minus = ArithmeticTask(max_digits=2, ops="+-")
  heldout = {_parse(ex) for ex in only_minus.heldout_examples(200)}
  train = set()
  for seed in range(5):
    train |= {_parse(ex) for ex in plus_minus.train_examples(np.random.default_rng(seed), 2000)}
  assert not heldout & train, sorted(heldout & train)[:5]


class _Timeout(Exception):
  pass


def test_heldout_examples_beyond_split_size_fails_fast():
  task = ArithmeticTask(max_digits=1, ops="+")
  assert len(task.heldout_examples(6)) == 6

  def on_alarm(signum, frame):
    raise _Timeout("heldout_examples(7) did not return within 2 s")

  previous = signal.signal(signal.SIGALRM, on_alarm)
  signal.alarm(2)
  try:
    with pytest.raises(ValueError, match="held"):
      task.heldout_examples(7)
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# --- arithmetic: verifier -----------------------------------------------------------

EX = Example(prompt="348+67=", answer="415", meta=(348, "+", 67, False))
NEG = Example(prompt="3-8=", answer="-5", meta=(3, "-", 8, False))


def test_score_exact_answers_only_without_partial_credit():
  task = ArithmeticTask()
  completions = ["415", "425", "", "-", "1-2", "12a", "0415", " 415", "415 "]
  scores = task.score([EX] * len(completions), completions)
  assert scores["reward"].dtype == np.float32 and scores["correct"].dtype == bool
  np.testing.assert_array_equal(scores["reward"], [1, 0, 0, 0, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(scores["correct"], [1, 0, 0, 0, 0, 0, 0, 0, 0])


def test_score_partial_credit_hand_values():
  task = ArithmeticTask(ops="+-", partial_credit=0.5)
  cases = [
    (EX, "415", 1.0),
    (EX, "425", 0.5 * 2 / 3),  # 4 and 5 match
    (EX, "15", 0.5 * 2 / 3),  # right-aligned: " 15" vs "415"
    (EX, "4150", 0.0),  # "4150" vs " 415": nothing lines up
    (EX, "999", 0.0),
    (EX, "", 0.0),
    (EX, "-", 0.0),
    (EX, "1-2", 0.0),
    (EX, "12a", 0.0),
    (EX, "41-", 0.0),
    (EX, "--415", 0.0),
    (NEG, "-5", 1.0),
    (NEG, "5", 0.5 * 1 / 2),  # " 5" vs "-5"
    (NEG, "-4", 0.5 * 1 / 2),
  ]
  scores = task.score([c[0] for c in cases], [c[1] for c in cases])
  np.testing.assert_allclose(scores["reward"], [c[2] for c in cases], rtol=1e-6)
  np.testing.assert_array_equal(scores["correct"], [c[2] == 1.0 for c in cases])


def test_score_of_decoded_sampler_output():
  """The verifier sees what the tokenizer decodes: text up to EOS, specials dropped."""
  task = ArithmeticTask()
  tok = CharTokenizer(task.alphabet())
  ids = tok.encode("415", eos=True) + [tok.pad_id] * 3
  assert task.score([EX], [tok.decode(ids)])["correct"].tolist() == [True]


# --- arithmetic: SFT demonstrations --------------------------------------------------


@pytest.mark.parametrize(
  "a, b, expected",
  [
    (58, 67, "15"),
    (999, 1, "990"),
    (5, 5, "0"),
    (348, 67, "305"),
    (5, 99, "94"),
    (0, 0, "0"),
    (123, 0, "123"),
    (50, 50, "0"),
  ],
)
def test_carry_free_sum_hand_cases(a, b, expected):
  assert carry_free_sum(a, b) == expected
  assert carry_free_sum(b, a) == expected


def test_sft_target_with_and_without_slips():
  rng = np.random.default_rng(0)
  always = ArithmeticTask(ops="+-*", sft_slip_prob=1.0)
  for ex in always.train_examples(rng, 300):
    a, op, b = _parse(ex)
    expected = carry_free_sum(a, b) if op == "+" else ex.answer
    assert always.sft_target(ex) == expected, ex
  assert any(always.sft_target(ex) != ex.answer for ex in always.train_examples(rng, 50))
  never = ArithmeticTask(ops="+-*", sft_slip_prob=0.0)
  for ex in never.train_examples(rng, 300):
    assert never.sft_target(ex) == ex.answer


def test_sft_slip_rate_matches_probability():
  task = ArithmeticTask(ops="+", sft_slip_prob=0.3)
  examples = task.train_examples(np.random.default_rng(1), 4000)
  rate = np.mean([ex.meta[3] for ex in examples])
  assert abs(rate - 0.3) < 0.03, rate  # ~4 standard errors


# --- construction ---------------------------------------------------------------------


@pytest.mark.parametrize(
  "kwargs, field",
  [
    (dict(max_digits=0), "max_digits"),
    (dict(ops=""), "ops"),
    (dict(ops="+/"), "ops"),
    (dict(heldout_fraction=0.0), "heldout_fraction"),
    (dict(heldout_fraction=1.0), "heldout_fraction"),
    (dict(sft_slip_prob=-0.1), "sft_slip_prob"),
    (dict(sft_slip_prob=1.5), "sft_slip_prob"),
  ],
)
def test_invalid_arguments_name_the_field(kwargs, field):
  with pytest.raises(ValueError, match=f"task.{field}"):
    ArithmeticTask(**kwargs)


def test_partial_credit_out_of_range_raises():
  with pytest.raises(ValueError, match="task.partial_credit"):
    ArithmeticTask(partial_credit=1.5)


def test_build_task_by_name_with_checked_arguments():
  task = tasks.build(Component.of("arithmetic", max_digits="2", ops="-"))  # strings from a CLI
  assert isinstance(task, ArithmeticTask) and task.max_digits == 2 and task.ops == "-"
  with pytest.raises(ValueError, match="task.name"):
    tasks.build(Component.of("chess"))
  with pytest.raises(ValueError, match=r"task\.max_digit'.*did you mean.*max_digits"):
    tasks.check(Component.of("arithmetic", max_digit=2))
  with pytest.raises(ValueError, match="task.max_digits' must be int"):
    tasks.check(Component.of("arithmetic", max_digits="two"))
