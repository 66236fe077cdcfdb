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
  # Soft overlong penalty: answers are at most 5 tokens (4 digits + EOS); allow 8 and punish
  # lengths 6-8 on a ramp, as DAPO punishes lengths beyond 16k of 20k.
  c.sampling.max_new_tokens = 8
  c.algorithm.overlong_cache_len = 3
  return c
