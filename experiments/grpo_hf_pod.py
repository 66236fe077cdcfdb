"""GRPO with LoRA on a 7-8 B Hugging Face checkpoint (Llama-3.1-8B-Instruct, Qwen2.5-7B-Instruct,
Qwen3-8B, Gemma-2-9b-it) on a TPU slice, with your own JSONL prompts.

  rl-jax train --config=experiments/grpo_hf_pod.py \\
      --config.model.path=/path/to/Qwen2.5-7B-Instruct --config.task.path=train.jsonl

Memory plan for an 8 B model (the numbers to redo for another size):
- base weights in bfloat16 (`model.param_dtype`): 16 GB, split over the `fsdp` axis (all the
  chips by default: `mesh.fsdp=-1`), so 2 GB a chip on 8 chips. Frozen under LoRA, they are also
  the KL reference: no second copy.
- LoRA rank 16 on every projection: about 42 M float32 adapter weights, plus Adam's two moments:
  0.5 GB in all (replicated over `data`, sharded like their kernels over `fsdp` / `tensor`).
- activations in bfloat16 (`model.dtype`), each block rematerialised (`model.remat`), the
  log-softmax over a 128 k-152 k vocabulary 64 completion positions at a time
  (`train.logits_chunk`), and 4 micro-batches a step (`train.num_microbatches`).
- the rollout: 32 prompts x 8 samples of up to 1,024 new tokens; the KV cache of 256 rows x
  1,536 slots is 256 x 1,536 x 32 layers x 2 x 8 KV heads x 128 x 2 bytes = 51 GB in all,
  split over the batch axes with the rows.
On a v5p-8 host (4 chips of 95 GB) or a v4-8 (4 x 32 GB) this fits with `fsdp=4`; `tensor=2`
or `4` splits the heads and the MLP when a larger batch needs it (the partition rules are in
`rl_jax/parallel.py`). One host runs as is; several hosts (a pod slice) need the multi-host
launch of issue 13 (`jax.distributed`), which this configuration does not change.
"""

import ml_collections

from experiments.grpo_hf import get_config as one_accelerator


def get_config() -> ml_collections.ConfigDict:
  c = one_accelerator()
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "bfloat16"
  c.model.remat = True
  c.lora.rank = 16
  c.lora.alpha = 32.0
  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.mesh.tensor = 1
  c.rl.prompts_per_step = 32
  c.rl.group_size = 8
  c.sampling.max_new_tokens = 1024
  c.train.logits_chunk = 64
  c.train.num_microbatches = 4
  c.train.learning_rate = 1e-5  # adapters take a larger rate than full fine-tuning
  return c
