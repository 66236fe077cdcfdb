"""DAPO (arXiv:2503.14476): clip-higher 0.2/0.28, token mean, overlong penalty, dynamic sampling.

Switch dynamic sampling off with --config.algorithm.dynamic_sampling=false (arXiv:2512.07611
found DAPO best without it).

The default experiment (experiments/default.py: tiny policy, arithmetic with a flawed warm
start) with this algorithm. Countdown instead: --config.task.name=countdown.
"""

import os

from rl_jax.config import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py"))
  c.algorithm.name = "dapo"
  return c
