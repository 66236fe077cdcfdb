"""PPO with a critic (InstructGPT-style, arXiv:2203.02155): GAE from a value model initialised
from the policy trunk with a fresh scalar head, whitened advantages, clipped ratio with dual
clip 3, clipped value loss, per-token k1 KL folded into the reward.

The default experiment (experiments/default.py) with this algorithm. Countdown instead:
--config.task.name=countdown.
"""

import os

from rl_jax.config import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py"))
  c.algorithm.name = "ppo"
  c.train.critic_learning_rate = 1e-3  # the fresh value head needs to catch up quickly
  return c
