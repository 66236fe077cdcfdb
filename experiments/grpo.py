"""GRPO (arXiv:2402.03300): group z-score advantages, clip 0.2, k3 KL 0.04 in the loss.

The default experiment (experiments/default.py: tiny policy, arithmetic with a flawed warm
start) with this algorithm. Countdown instead: --config.task.name=countdown.
"""

import os

from rl_jax.config import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py"))
  c.algorithm.name = "grpo"
  return c
