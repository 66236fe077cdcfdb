"""GRPO on your own question / answer pairs from a JSONL file, scored by the math-answer verifier.

Each line of the file is a JSON object; the prompt and answer fields are configurable, every
other field reaches the rewards (`Example.meta`). The answer may be a bare answer ("42") or a
whole solution ending in "#### 42" (GSM8K style); a completion is right when its final answer
(after "####", in \\boxed{}, or its last number) equals the reference's, compared exactly as
numbers (integers, decimals, fractions, simple LaTeX) or as normalised text.

  rl-jax train --config=experiments/jsonl_math.py --config.task.path=train.jsonl \\
      [--config.task.heldout_path=test.jsonl] [--config.task.prompt_field=question] \\
      [--config.task.answer_field=answer] [--config.model.tokenizer=char|/path/to/tokenizer]

Without `task.heldout_path` a fixed hash of each question puts 5% of the rows in the held-out
split (`task.heldout_fraction`). `model.tokenizer=char` builds a character vocabulary from the
file; a folder holding a `tokenizer.json` (e.g. saved by `transformers`' `save_pretrained`)
uses that tokenizer (and its chat template, if it has one: `model.chat_template`). The run
directory is the same as the default experiment's: metrics, eval, checkpoints and reward.png.
"""

import ml_collections

from rl_jax.config import default_configdict


def get_config() -> ml_collections.ConfigDict:
  c = default_configdict()
  c.task = ml_collections.ConfigDict(
    dict(name="jsonl", path="", prompt_field="question", answer_field="answer")
  )
  c.model.preset = "tiny"
  c.model.tokenizer = "char"
  c.sft.steps = 500  # warm start on the reference answers (a random model cannot start RL)
  c.sft.batch_size = 32
  c.train.steps = 200
  c.train.learning_rate = 2e-4
  c.rl.group_size = 8
  c.rl.prompts_per_step = 16
  c.algorithm.name = "grpo"
  c.eval.every = 50
  c.eval.num_prompts = 256
  return c
