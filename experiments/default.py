"""The default experiment: GRPO on embedded multi-digit addition with a tiny decoder.

A 0.79 M-parameter policy is warm-started by supervised fine-tuning on demonstrations from a
flawed teacher that forgets every carry 60% of the time, so it is left deliberately weak: on
problems with a carry it usually prefers the slip. GRPO against the exact-answer verifier then
has to find the right answers. Runs on a 2-core CPU in a few minutes.

  rl-jax train                                 # this file
  rl-jax train --config.train.steps=50         # any field can be overridden
"""

import ml_collections

from rl_jax.config import default_configdict


def get_config() -> ml_collections.ConfigDict:
  c = default_configdict()
  c.seed = 0
  c.model.preset = "tiny"
  c.task.name = "arithmetic"
  c.task.max_digits = 3
  c.task.ops = "+"
  c.task.sft_slip_prob = 0.6
  c.sft.steps = 1500
  c.sft.batch_size = 64
  c.sft.learning_rate = 1e-3
  c.train.steps = 200
  c.train.learning_rate = 2e-4
  c.rl.group_size = 8
  c.rl.prompts_per_step = 32
  c.sampling.temperature = 1.0
  c.algorithm.name = "grpo"
  c.eval.every = 25
  c.eval.num_prompts = 512
  c.checkpoint.every = 50
  return c
