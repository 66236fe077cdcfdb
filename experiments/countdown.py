"""GRPO on Countdown (given numbers and a target, write an expression that hits it).

The comparison of PPO / GRPO / DAPO in arXiv:2512.07611 uses this task. The tiny policy is
warm-started on reference solutions, then trained against the exact verifier (reward 1 for a
correct expression using every number once, `task.format_reward` for a well-formed
wrong one). Any preset: --config.algorithm.name=dapo, ...
"""

import os

import ml_collections

from rl_jax.config import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py"))
  # A new task section: the default's keys belong to the arithmetic task.
  c.task = ml_collections.ConfigDict(
    dict(name="countdown", num_numbers=3, max_number=20, max_target=100)
  )
  c.sft.steps = 1000
  return c
