"""GSPO (arXiv:2507.18071): clipped sequence-level ratio (eps 3e-4 / 4e-4), no KL.

The default experiment (experiments/default.py: tiny policy, arithmetic with a flawed warm
start) with this algorithm. Countdown instead: --config.task.name=countdown.
"""

import os

from rl_jax.config import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py"))
  c.algorithm.name = "gspo"
  return c
