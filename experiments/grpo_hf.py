"""GRPO on a Hugging Face checkpoint from a local folder, with your own JSONL prompts.

  rl-jax train --config=experiments/grpo_hf.py --config.model.path=/path/to/Qwen2.5-0.5B-Instruct \\
      --config.task.path=train.jsonl [--config.task.heldout_path=test.jsonl] \\
      [--config.task.prompt_field=question] [--config.task.answer_field=answer]

The folder holds `config.json`, the safetensors weights (one file or shards with their index)
and the tokenizer files; nothing is downloaded. Supported families: Llama 3.x, Qwen2 / Qwen2.5,
Qwen3, Gemma 2, Gemma 3 text (`rl_jax/models/hf.py`); 7-8 B models: `grpo_hf_pod.py`. Prompts
go through the tokenizer's chat template when it has one (`model.chat_template=false` sends the
raw text); completions are scored by the math-answer verifier (the final answer after `####`,
in `\\boxed{}`, or the last number). No warm start: the checkpoint is the starting policy and
the KL reference.

The settings below are for a 0.5-1 B model on one accelerator: 16 prompts x 8 samples of up to
512 new tokens per step, the log-softmax over 128 positions at a time (a 150 k vocabulary's
float32 logits of a whole batch would not fit), each block rematerialised in the backward pass.
LoRA (`--config.lora.rank=16 --config.lora.alpha=32`, targets `lora.targets`) trains adapters
on the frozen checkpoint, which is also the KL reference; bf16 compute with float32 master
weights: `--config.model.dtype=bfloat16`. Export the result with
`rl_jax.models.hf.save_pretrained(policy, lora.merge(base, adapters, cfg), path)`.
"""

import ml_collections

from rl_jax.config import default_configdict


def get_config() -> ml_collections.ConfigDict:
  c = default_configdict()
  c.model.family = "hf"
  c.model.path = ""  # required: --config.model.path=/path/to/checkpoint
  c.model.remat = True
  c.task = ml_collections.ConfigDict(
    dict(name="jsonl", path="", prompt_field="question", answer_field="answer")
  )
  c.sft.steps = 0
  c.train.steps = 200
  c.train.learning_rate = 1e-6
  c.train.warmup_steps = 10
  c.train.logits_chunk = 128
  c.rl.group_size = 8
  c.rl.prompts_per_step = 16
  c.sampling.max_new_tokens = 512
  c.sampling.temperature = 1.0
  c.algorithm.name = "grpo"
  c.eval.every = 50
  c.eval.num_prompts = 128
  c.checkpoint.every = 50
  return c
