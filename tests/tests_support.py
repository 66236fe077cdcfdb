"""Helpers shared by test modules (importable because pytest puts tests/ on sys.path)."""

import os

from conftest import SMALL_OVERRIDES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_small_config(**overrides):
  """A validated RunConfig from experiments/default.py with the small CI overrides."""
  from rl_jax import config as config_lib

  cd = config_lib.load_config_file(os.path.join(ROOT, "experiments", "default.py"))
  merged = dict(SMALL_OVERRIDES)
  if "task.name" in overrides:  # another task: the arithmetic override does not apply
    merged.pop("task.max_digits")
  merged.update({k: str(v) for k, v in overrides.items()})
  return config_lib.from_configdict(config_lib.apply_overrides(cd, merged))


def dot_generals(jaxpr):
  """Every matrix product (dot_general equation) of a jaxpr, its sub-jaxprs included."""
  import jax.extend  # pylint: disable=import-outside-toplevel

  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      yield eqn
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from dot_generals(sub)


def interval_reward(examples, completions):
  """A stand-in for a calibrated quantile reward model: the median score is the completion's
  length / 10 and the interval width grows with the prompt's length."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  return {
    "reward": np.array([len(c) / 10 for c in completions], np.float32),
    "rm_interval_width": np.array([0.05 * len(e.prompt) for e in examples], np.float32),
  }
