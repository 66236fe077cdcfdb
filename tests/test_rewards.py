"""Rewards over batches: named components, weights, classes with parameters, config checks."""

import numpy as np
import pytest

from rl_jax import rewards
from rl_jax.components import Component, ComponentError
from rl_jax.tasks import ArithmeticTask, Example


class KeywordBonus:
  """A reward holding its own parameter: `bonus` for completions that contain `word`."""

  def __init__(self, word: str, bonus: float = 1.0):
    self.word, self.bonus = word, bonus

  def __call__(self, examples, completions):
    hit = np.array([self.word in c for c in completions])
    return {"reward": self.bonus * hit, "hit": hit}


def length(examples, completions, scale: float = 1.0):
  return scale * np.array([len(c) for c in completions], np.float32)


EXAMPLES = [Example("1+2=", "3"), Example("2+2=", "4"), Example("9+9=", "18")]
COMPLETIONS = ["3", "5", "18x"]


def test_weighted_sum_and_named_components_by_hand():
  task = ArithmeticTask(max_digits=1)
  section = rewards.check(
    (
      ("task", Component.of("task", weight="1.0")),
      ("bonus", Component.of("test_rewards:KeywordBonus", word="x", bonus="0.5", weight=2)),
      ("len", Component.of("test_rewards:length", scale="0.1", weight=-1)),
    )
  )
  total, parts = rewards.build(section, task)(EXAMPLES, COMPLETIONS)
  np.testing.assert_allclose(parts["reward/task"], [1, 0, 0])
  np.testing.assert_allclose(parts["reward/bonus"], [0, 0, 0.5])
  np.testing.assert_allclose(parts["reward/len"], [0.1, 0.1, 0.3], rtol=1e-6)
  assert parts["correct"].tolist() == [True, False, False]  # the verifier's extra
  assert parts["hit"].tolist() == [False, False, True]  # the class's extra
  # 1 * task + 2 * bonus - 1 * len
  np.testing.assert_allclose(total, [1 - 0.1, -0.1, 2 * 0.5 - 0.3], rtol=1e-6)


def test_config_errors_name_the_field():
  with pytest.raises(ComponentError, match=r"rewards\.bonus\.wrd'.*did you mean.*word"):
    rewards.check((("bonus", Component.of("test_rewards:KeywordBonus", wrd="x")),))
  with pytest.raises(ComponentError, match=r"rewards\.bonus\.word"):  # required, missing
    rewards.check((("bonus", Component.of("test_rewards:KeywordBonus")),))
  with pytest.raises(ComponentError, match=r"rewards\.task\.scale"):  # the verifier takes none
    rewards.check((("task", Component.of("task", scale=1)),))
  with pytest.raises(ComponentError, match=r"rewards\.x\.name"):
    rewards.check((("x", Component.of("no_such_reward")),))


def test_bad_outputs_are_clear_errors():
  twice = rewards.Rewards(
    [rewards.Term("a", KeywordBonus("x"), 1.0), rewards.Term("b", KeywordBonus("y"), 1.0)]
  )
  with pytest.raises(ValueError, match="both return 'hit'"):
    twice(EXAMPLES, COMPLETIONS)
  short = rewards.Rewards([rewards.Term("s", lambda e, c: np.zeros(2), 1.0)])
  with pytest.raises(
    rewards.RewardError, match=r"one value per completion, shape \(3,\); got \(2,\)"
  ):
    short(EXAMPLES, COMPLETIONS)
  no_reward = rewards.Rewards([rewards.Term("n", lambda e, c: {"score": np.zeros(3)}, 1.0)])
  with pytest.raises(ValueError, match="without a 'reward' entry"):
    no_reward(EXAMPLES, COMPLETIONS)


def test_objects_for_notebooks():
  task = ArithmeticTask(max_digits=1)
  r = rewards.from_objects({"task": 0.5, "len": (length, 2.0), "bonus": KeywordBonus("x")}, task)
  total, parts = r(EXAMPLES, COMPLETIONS)
  np.testing.assert_allclose(
    total, 0.5 * parts["reward/task"] + 2 * parts["reward/len"] + parts["reward/bonus"]
  )
