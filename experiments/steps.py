"""GRPO on the step-lines task: chained addition that writes one running sum per line, scored
for the outcome (the last line) and the process (the intermediate lines), so process-reward
methods have something to read: --config.algorithm.name=papo (outcome + process among the
correct), =segment (one clipped ratio per line).

The tiny policy is warm-started on flawed demonstrations: 30% slip once (a line that forgets its
carries, the lines after it continuing from the wrong value) and half of the others skip the
work (the answer alone). Then outcome-only GRPO (no KL, as the PAPO and segment arms of
experiments/papo_steps.py and segment_steps.py).
"""

import os

import ml_collections

from rl_jax.config import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py"))
  c.task = ml_collections.ConfigDict(
    dict(name="steps", num_terms=4, max_digits=2, sft_slip_prob=0.3, sft_skip_prob=0.5)
  )
  c.sft.steps = 1000
  c.algorithm.kl_coef = 0.0
  return c
