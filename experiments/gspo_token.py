"""GSPO-token (arXiv:2507.18071): GSPO's value with a per-token gradient path.

The default experiment (experiments/default.py: tiny policy, arithmetic with a flawed warm
start) with this algorithm. Countdown instead: --config.task.name=countdown.
"""

import os

from rl_jax.config import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py"))
  c.algorithm.name = "gspo_token"
  return c
