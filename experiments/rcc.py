"""RCC (Right meets wrong, arXiv:2603.13134): the group baseline corrected by 2 Cov(r, delta),
delta the sequence log-ratio to the reference policy; clip 0.2 / 0.28, no KL term.

The default experiment (experiments/default.py: tiny policy, arithmetic with a flawed warm
start) with this algorithm. Countdown instead: --config.task.name=countdown.
"""

import os

from rl_jax.config import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py"))
  c.algorithm.name = "rcc"
  return c
