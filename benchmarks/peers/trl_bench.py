"""TRL / Hugging Face peer for the W1, W2, W4 and W5 workloads of shared/benchmarks.md.

Runs in its own virtual environment (benchmarks/.venvs/trl, made by benchmarks/peers/setup.sh:
torch 2.13.0 CPU build, transformers 5.24, trl 1.16, peft 0.21.2), never in rl_jax's:

  benchmarks/.venvs/trl/bin/python benchmarks/peers/trl_bench.py [--workloads w1,w2] [--json PATH]
  benchmarks/.venvs/trl/bin/python benchmarks/peers/trl_bench.py --workloads w4 --folder DIR
  benchmarks/.venvs/trl/bin/python benchmarks/peers/trl_bench.py --workloads w5 --folder DIR

The default is W1 and W2. W4 and W5 need --folder (see "W4, W5" below); run W5 in a process of
its own (a separate invocation with --workloads w5, after the folder exists) so that the peak
RSS it reports is W5's alone: ru_maxrss is the whole process's peak, and making the folder or a
workload run before W5 in the same process would count too.

Everything is built locally (no model hub): the benchmark model is a randomly initialised
`LlamaForCausalLM` (vocabulary 512, hidden 256, 4 layers, 4 heads of 64, 4 KV heads, SwiGLU MLP
1024, RoPE theta 10000, RMSNorm eps 1e-6, untied embeddings, float32, 4,458,752 parameters) and
the tokenizer a `tokenizers` WordLevel model over the 512 words "<pad>", "<bos>", "<eos>",
"<unk>", "t4".."t511" with a whitespace pre-tokenizer, so a prompt of 32 words is exactly 32 ids
(no BOS is added). Prompts are 32 random words from "t4".."t511". torch uses 2 threads; seed 0.

W2, sampling throughput: `model.generate` (KV cache, the default dynamic cache) under
`torch.inference_mode()` on 64 prompts of 32 tokens, do_sample=True, temperature 1.0, top_p 1.0,
top_k 0 (no top-k filter), max_new_tokens = min_new_tokens = 128 (min_new_tokens masks EOS, so
every row generates 128 tokens; the output shape and the absence of EOS are checked). Reports
64 * 128 / median seconds over 5 calls after 1 warm-up, and the min / max seconds.

W1, one full GRPO step with TRL's `GRPOTrainer` (plain text prompts, `GRPOConfig` settings):
- batch: per_device_train_batch_size=64, num_generations=8, gradient_accumulation_steps=1 and
  steps_per_generation=1 (so generation_batch_size = 64 = 8 prompts x 8 completions), and
  num_iterations=1: every optimizer step generates for 8 fresh prompts and takes exactly one
  AdamW step on all 64 sequences. In this on-policy setting TRL does not run a separate
  "old log-probs" forward: it uses the detached log-probs of the loss forward (ratio 1).
- generation: TRL's transformers `generate` path (no vLLM, no continuous batching),
  temperature 1.0, top_p 1.0, top_k 0, max_completion_length=64, and
  generation_kwargs={"min_new_tokens": 64}, which masks EOS for all 64 steps, so every
  completion is exactly 64 tokens (checked on every step, together with the absence of EOS).
- loss: loss_type="dapo" (the TRL 1.16 default), beta=0.04 (TRL builds a reference model from
  the same initial weights and runs its forward every step; checked once), epsilon=0.2,
  scale_rewards="group" (default), importance_sampling_level="token" (default).
- optimisation: learning_rate=1e-5 with lr_scheduler_type="constant" and no warm-up, optimizer
  the transformers default "adamw_torch_fused" (torch AdamW, fused=True, weight decay 0),
  max_grad_norm=1.0 (default gradient clipping).
- runtime: use_cpu=True, bf16=False / fp16=False (float32 throughout),
  activation_checkpointing=False (transformers 5.24's name for gradient_checkpointing, whose TRL
  default is True), report_to="none", logging_strategy="no", save_strategy="no",
  disable_tqdm=True.
- reward: the fraction of completion tokens with an even id (a trivial Python function).
- timing: a `TrainerCallback` takes time.perf_counter() at on_step_begin and on_step_end; that
  span holds generation, the reference forward, rewards and advantages, the loss forward,
  backward, gradient clipping and the optimizer step (only the data loader's fetch of the
  8 x 8 prompt rows and TRL's metric logging fall outside it). The generation share is timed by
  wrapping the trainer's `_generate_single_turn` (left-pad the prompt ids, `model.generate`
  under no_grad, cut the completions at EOS), which is generation only: prompt tokenisation,
  decoding and scoring happen outside it. Reports the median, min and max over 10 steps after
  2 warm-up steps, the median generation seconds per step, and the peak RSS of the process
  (ru_maxrss) after W1.

W4, W5 (real vocabulary shapes): the model is the Qwen2.5-0.5B configuration truncated to 4
layers, `Qwen2ForCausalLM` (vocabulary 151,936, hidden 896, 14 heads of 64, 2 KV heads, q/k/v
bias, SwiGLU MLP 4,864, RoPE theta 1e6, RMSNorm eps 1e-6, tied embeddings, max positions 32,768,
float32, 195,785,088 parameters) with random weights, kept in a Hugging Face folder that every
framework loads. `--folder DIR` loads DIR; when DIR has no config.json the folder is made there
first: the model initialised by transformers after torch.manual_seed(0) and written with
`save_pretrained` (config.json, generation_config.json, model.safetensors; transformers 5 writes
safetensors only and has no safe_serialization argument), and the tokenizer (tokenizer.json,
tokenizer_config.json): a `tokenizers` WordLevel model over the 151,936 words "<pad>", "<bos>",
"<eos>", "<unk>", "t4".."t151935" (ids 0..151935) with a whitespace pre-tokenizer, wrapped in
`PreTrainedTokenizerFast` (pad / bos / eos / unk set, left padding, no BOS added), so a prompt of
64 words is exactly 64 ids. The config's pad / bos / eos ids are this tokenizer's 0 / 1 / 2 (not
Qwen's 151643). The tokenizer is loaded with `PreTrainedTokenizerFast.from_pretrained` (not
AutoTokenizer, which for a qwen2 config.json may rebuild a Qwen2Tokenizer). Prompts: W4's
16 x 64 ids `numpy.random.default_rng(4).integers(3, 151936, (16, 64))` (as rl_jax's bench);
as text, id i is the word "t<i>" and id 3 the word "<unk>" (the encoding is checked to give back
the same ids).

W4, sampling throughput at a real vocabulary: `model.generate` (KV cache, dynamic cache) under
`torch.inference_mode()` on the 16 prompts with num_return_sequences=4 (transformers expands
each prompt to 4 adjacent rows before the prefill, so 64 rows are prefilled and decoded),
do_sample=True, temperature 1.0, top_p 0.95, top_k 0 (no top-k filter),
max_new_tokens = min_new_tokens = 128 (EOS masked: the output shape and the absence of EOS are
checked). Reports 16 * 4 * 128 / median seconds over 3 calls after 1 warm-up, and min / max.

W5, one GRPO step with LoRA, with TRL's `GRPOTrainer` and a PEFT `LoraConfig(r=16,
lora_alpha=32, target_modules=q/k/v/o/gate/up/down_proj, lora_dropout=0.0,
task_type="CAUSAL_LM")` passed as peft_config (1,466,368 trainable parameters, checked). The
settings are W1's except:
- batch: 8 prompts x 4 samples: per_device_train_batch_size=32, num_generations=4,
  steps_per_generation=1 (generation_batch_size 32, checked), gradient_accumulation_steps=1,
  num_iterations=1. The dataset is W4's 16 prompts; TRL's sampler draws 8 of them for each
  step (shuffled with seed 0, each prompt once every 2 steps).
- generation: temperature 1.0, top_p 0.95, top_k 0, max_completion_length=64 and
  generation_kwargs={"min_new_tokens": 64} (every completion exactly 64 tokens, no EOS;
  checked every step). The use of the KV cache in generation is checked once and recorded.
- reference: beta=0.04. With a peft_config (a new adapter) TRL 1.16 builds no reference model
  (trainer.ref_model is None) and adds no "ref" adapter: the reference log-probs are a forward
  of the same model inside `use_adapter(model, None)`, i.e. `model.disable_adapter()`, the base
  weights without adapters. Checked in the first step: ref_model is None, disable_adapter was
  entered, and the KL metric was computed.
- gradient checkpointing: TRL's default is kept (GRPOConfig.gradient_checkpointing=True, which
  transformers 5.24 maps onto activation_checkpointing=True; TRL then calls
  enable_input_require_grads for PEFT). The value in effect is recorded in the JSON
  ("activation_checkpointing") together with the model's own flag.
- timing as W1 (TrainerCallback from on_step_begin to on_step_end, generation share from
  `_generate_single_turn`); median, min and max over 4 steps after 1 warm-up step, and the peak
  RSS of the process (ru_maxrss) after W5 ("rss_own_process" says whether W5 was the only thing
  this process ran; see above).

With --json PATH the numbers are written as
{"peer": "trl", "versions": {...}, "machine": {...}, "w1": {...}, "w2": {...}, "w4": {...},
"w5": {...}} (the workloads run), plus "smoke": true for a --smoke run (a hidden flag that
shrinks W4 and W5 to a few seconds on the real folder, to check the script, not to measure).
"""

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import (  # noqa: E402
  LlamaConfig,
  LlamaForCausalLM,
  PreTrainedTokenizerFast,
  PrinterCallback,
  Qwen2Config,
  Qwen2ForCausalLM,
  TrainerCallback,
)

SEED = 0
THREADS = 2
VOCAB = 512
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
FIRST_WORD = len(SPECIALS)  # prompts use the words "t4".."t511"
PROMPT_LEN = 32
NUM_PARAMS = 4_458_752

W1_PROMPTS, W1_GENERATIONS, W1_COMPLETION = 8, 8, 64
W2_BATCH, W2_NEW_TOKENS = 64, 128

# W4 / W5: the Qwen2.5-0.5B configuration truncated to 4 layers.
W45_VOCAB = 151_936
W45_PROMPT_LEN = 64
W45_NUM_PARAMS = 195_785_088
W45_PROMPTS_SEED = 4  # numpy default_rng(4).integers(3, W45_VOCAB, (16, 64)), as rl_jax's bench
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_RANK, LORA_ALPHA = 16, 32
LORA_PARAMS = 1_466_368  # 4 layers x 16 x (1792 + 1024 + 1024 + 1792 + 3 x 5760)
W4 = dict(prompts=16, samples=4, new_tokens=128, warmup=1, repeats=3)
W5 = dict(prompts=8, samples=4, completion=64, warmup=1, steps=4, dataset=16)
# --smoke: a few seconds each on the real folder, to check the script (never a measurement).
W4_SMOKE = dict(prompts=2, samples=4, new_tokens=8, warmup=1, repeats=1)
W5_SMOKE = dict(prompts=2, samples=2, completion=8, warmup=0, steps=1, dataset=2)


# GRPOConfig settings W1 and W5 share: one on-policy AdamW step per generation, float32 on CPU,
# no logging or saving. Each workload adds its batch, lengths, top-p and checkpointing.
GRPO_COMMON = dict(
  gradient_accumulation_steps=1,
  steps_per_generation=1,
  num_iterations=1,
  temperature=1.0,
  top_k=0,
  beta=0.04,
  epsilon=0.2,
  loss_type="dapo",
  learning_rate=1e-5,
  lr_scheduler_type="constant",
  warmup_steps=0,
  use_cpu=True,
  bf16=False,
  fp16=False,
  model_init_kwargs={"dtype": "float32"},
  report_to="none",
  logging_strategy="no",
  save_strategy="no",
  disable_tqdm=True,
  log_level="error",
  seed=SEED,
  data_seed=SEED,
)


def build_tokenizer(vocab: int = VOCAB) -> PreTrainedTokenizerFast:
  words = SPECIALS + [f"t{i}" for i in range(FIRST_WORD, vocab)]
  backend = Tokenizer(
    models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>")
  )
  backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok = PreTrainedTokenizerFast(
    tokenizer_object=backend,
    pad_token="<pad>",
    bos_token="<bos>",
    eos_token="<eos>",
    unk_token="<unk>",
    padding_side="left",
  )
  assert len(tok) == vocab and (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (
    PAD_ID,
    BOS_ID,
    EOS_ID,
  )
  return tok


def build_model() -> LlamaForCausalLM:
  torch.manual_seed(SEED)
  cfg = LlamaConfig(
    vocab_size=VOCAB,
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    head_dim=64,
    intermediate_size=1024,
    hidden_act="silu",
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    max_position_embeddings=256,
    pad_token_id=PAD_ID,
    bos_token_id=BOS_ID,
    eos_token_id=EOS_ID,
  )
  model = LlamaForCausalLM(cfg).to(torch.float32)
  check_model(model)
  return model


def check_model(model) -> None:
  n = sum(p.numel() for p in model.parameters())
  assert n == NUM_PARAMS, f"model has {n:,} parameters, expected {NUM_PARAMS:,}"
  assert all(p.dtype == torch.float32 for p in model.parameters())


def random_prompts(n: int, seed: int) -> list[str]:
  g = torch.Generator().manual_seed(seed)
  ids = torch.randint(FIRST_WORD, VOCAB, (n, PROMPT_LEN), generator=g)
  return [" ".join(f"t{i}" for i in row.tolist()) for row in ids]


def encode_prompts(tok, prompts: list[str]) -> list[list[int]]:
  ids = tok(text=prompts)["input_ids"]
  assert all(len(x) == PROMPT_LEN for x in ids), "a prompt does not encode to exactly 32 ids"
  assert all(x[0] != BOS_ID for x in ids)
  return ids


def summary(times: list[float]) -> dict[str, float]:
  return {"median": statistics.median(times), "min": min(times), "max": max(times)}


# ---------------------------------------------------------------- W2: model.generate throughput


def w2_sampling(repeats: int, warmup: int = 1) -> dict:
  tok = build_tokenizer()
  model = build_model().eval()
  ids = torch.tensor(encode_prompts(tok, random_prompts(W2_BATCH, seed=2)))
  attention_mask = torch.ones_like(ids)

  def call():
    with torch.inference_mode():
      return model.generate(
        input_ids=ids,
        attention_mask=attention_mask,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_new_tokens=W2_NEW_TOKENS,
        min_new_tokens=W2_NEW_TOKENS,
        use_cache=True,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
      )

  torch.manual_seed(SEED)
  for _ in range(warmup):
    out = call()
  assert out.shape == (W2_BATCH, PROMPT_LEN + W2_NEW_TOKENS), (
    f"generate returned {tuple(out.shape)}"
  )
  assert not (out[:, PROMPT_LEN:] == EOS_ID).any(), "EOS was generated"
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = call()
    times.append(time.perf_counter() - t0)
    assert out.shape == (W2_BATCH, PROMPT_LEN + W2_NEW_TOKENS)
  s = summary(times)
  return {"tokens_per_s": W2_BATCH * W2_NEW_TOKENS / s["median"], "seconds": s}


# ---------------------------------------------------------------- W1: one GRPO step in TRL


def even_token_reward(completion_ids, **kwargs) -> list[float]:
  return [sum(1 for t in ids if t % 2 == 0) / max(len(ids), 1) for ids in completion_ids]


class StepTimer(TrainerCallback):
  """Wall time of each optimizer step, and of the generation inside it."""

  def __init__(self):
    self.steps: list[float] = []
    self.generation: list[float] = []
    self._gen = 0.0
    self._t0 = None

  def add_generation(self, seconds: float) -> None:
    self._gen += seconds

  def on_step_begin(self, args, state, control, **kwargs):
    self._gen = 0.0
    self._t0 = time.perf_counter()

  def on_step_end(self, args, state, control, **kwargs):
    self.steps.append(time.perf_counter() - self._t0)
    self.generation.append(self._gen)


def w1_grpo_step(steps: int, warmup: int) -> dict:
  import datasets
  from trl import GRPOConfig, GRPOTrainer

  datasets.disable_progress_bars()
  total = warmup + steps
  tok = build_tokenizer()
  prompts = random_prompts(total * W1_PROMPTS, seed=1)
  encode_prompts(tok, prompts)
  dataset = datasets.Dataset.from_dict({"prompt": prompts})

  with tempfile.TemporaryDirectory(prefix="trl_bench_") as tmp:
    # TRL builds the reference model with from_pretrained(config._name_or_path), so the policy is
    # handed over as a local checkpoint: policy and reference then start from the same weights.
    model_dir = os.path.join(tmp, "model")
    build_model().save_pretrained(model_dir)
    config = GRPOConfig(
      output_dir=os.path.join(tmp, "out"),
      per_device_train_batch_size=W1_PROMPTS * W1_GENERATIONS,
      num_generations=W1_GENERATIONS,
      max_steps=total,
      max_completion_length=W1_COMPLETION,
      generation_kwargs={"min_new_tokens": W1_COMPLETION},
      top_p=1.0,
      activation_checkpointing=False,
      **GRPO_COMMON,
    )
    timer = StepTimer()
    trainer = GRPOTrainer(
      model=model_dir,
      reward_funcs=even_token_reward,
      args=config,
      train_dataset=dataset,
      processing_class=tok,
      callbacks=[timer],
    )
    check_model(trainer.model)
    check_model(trainer.ref_model)
    assert not trainer.model.is_activation_checkpointing
    trainer.remove_callback(PrinterCallback)  # it prints TRL's end-of-training summary
    assert config.generation_batch_size == W1_PROMPTS * W1_GENERATIONS
    assert config.steps_per_generation == 1
    assert trainer.eos_token_ids == [EOS_ID], trainer.eos_token_ids

    # Generation timer around the trainer's generation method (instance attribute, so only this
    # trainer is affected); completion lengths are checked outside the timed span.
    generate = trainer._generate_single_turn

    def timed_generate(*args, **kwargs):
      t0 = time.perf_counter()
      completion_ids, logprobs = generate(*args, **kwargs)
      timer.add_generation(time.perf_counter() - t0)
      n = W1_PROMPTS * W1_GENERATIONS
      assert len(completion_ids) == n, f"{len(completion_ids)} completions, expected {n}"
      assert all(len(c) == W1_COMPLETION for c in completion_ids), "a completion is not 64 tokens"
      assert not any(EOS_ID in c for c in completion_ids), "EOS was generated"
      return completion_ids, logprobs

    trainer._generate_single_turn = timed_generate

    # Checked once, at the end of the first (warm-up) step: the reference model's forward ran and
    # the loss took its KL term.
    ref_calls = []
    hook = trainer.ref_model.register_forward_pre_hook(lambda module, args: ref_calls.append(1))
    checked = []

    class CheckReference(TrainerCallback):
      def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
          hook.remove()
          assert ref_calls, "the reference model forward did not run"
          assert trainer._metrics["train"]["kl"], "no KL term was computed"
          assert torch.get_num_threads() == THREADS, torch.get_num_threads()
          checked.append(True)

    trainer.add_callback(CheckReference())
    trainer.train()
    assert checked

  assert len(timer.steps) == total, f"{len(timer.steps)} steps timed, expected {total}"
  timed, gen = timer.steps[warmup:], timer.generation[warmup:]
  s = summary(timed)
  gen_s = statistics.median(gen)
  return {
    "seconds": s,
    "generation_s": gen_s,
    "generation_share": gen_s / s["median"],
    "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    "steps": timed,
  }


# ---------------------------------------------------------------- W4 / W5: the model folder


def w45_config() -> Qwen2Config:
  return Qwen2Config(
    vocab_size=W45_VOCAB,
    hidden_size=896,
    num_hidden_layers=4,
    num_attention_heads=14,
    num_key_value_heads=2,
    head_dim=64,
    intermediate_size=4864,
    hidden_act="silu",
    rope_parameters={"rope_type": "default", "rope_theta": 1e6},
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    use_sliding_window=False,
    max_position_embeddings=32768,
    pad_token_id=PAD_ID,
    bos_token_id=BOS_ID,
    eos_token_id=EOS_ID,
  )


def check_w45_model(model, extra: int = 0) -> None:
  """`extra`: the parameters an adapter adds (the base weights are counted once when tied)."""
  n = sum(p.numel() for p in model.parameters())
  assert n == W45_NUM_PARAMS + extra, f"model has {n:,} parameters, expected {W45_NUM_PARAMS:,}"
  assert all(p.dtype == torch.float32 for p in model.parameters())
  out, emb = model.get_output_embeddings(), model.get_input_embeddings()
  assert getattr(out, "weight", out) is emb.weight, "the embeddings are not tied"
  assert model.config.model_type == "qwen2" and model.config.vocab_size == W45_VOCAB


def ensure_folder(path: str) -> bool:
  """Makes the W4 / W5 folder at `path` unless it holds a config.json; True when it was made.
  Written to a sibling folder first and renamed, so an interrupted run leaves no half folder."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isfile(os.path.join(path, "config.json")):
    return False
  if os.path.isdir(path) and os.listdir(path):
    raise SystemExit(f"--folder {path}: not empty and without config.json; pick another path")
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  with tempfile.TemporaryDirectory(prefix=".w45_", dir=parent) as tmp:
    staging = os.path.join(tmp, "folder")
    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(w45_config()).to(torch.float32)
    check_w45_model(model)
    model.save_pretrained(staging)
    del model
    build_tokenizer(W45_VOCAB).save_pretrained(staging)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
      assert os.path.isfile(os.path.join(staging, name)), (name, os.listdir(staging))
    for name in os.listdir(staging):  # model.safetensors is written 0600; others read it too
      os.chmod(os.path.join(staging, name), 0o644)
    os.replace(staging, path)  # also onto an empty folder
  return True


def load_w45_model(folder: str) -> Qwen2ForCausalLM:
  model = Qwen2ForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
  check_w45_model(model)
  return model


def load_w45_tokenizer(folder: str) -> PreTrainedTokenizerFast:
  tok = PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
  tok.padding_side = "left"
  assert len(tok) == W45_VOCAB, len(tok)
  assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (PAD_ID, BOS_ID, EOS_ID)
  return tok


def w45_prompt_ids(n: int) -> np.ndarray:
  """The first `n` of W4's 16 prompts (rl_jax's bench draws the same 16 x 64 ids)."""
  rng = np.random.default_rng(W45_PROMPTS_SEED)
  return rng.integers(3, W45_VOCAB, (16, W45_PROMPT_LEN))[:n]


def w45_prompt_texts(tok, ids: np.ndarray) -> list[str]:
  """The prompts as words (id 3 is "<unk>"); their encoding is checked to give back `ids`."""
  word = lambda i: SPECIALS[i] if i < FIRST_WORD else f"t{i}"
  texts = [" ".join(word(i) for i in row) for row in ids.tolist()]
  assert tok(text=texts)["input_ids"] == ids.tolist(), "the prompts do not encode to their ids"
  return texts


# ---------------------------------------------------------------- W4: generate, vocabulary 151,936


def w4_sampling(folder: str, sizes: dict) -> dict:
  n, k, new = sizes["prompts"], sizes["samples"], sizes["new_tokens"]
  model = load_w45_model(folder).eval()
  ids = torch.from_numpy(w45_prompt_ids(n)).long()
  attention_mask = torch.ones_like(ids)

  def call():
    with torch.inference_mode():
      return model.generate(
        input_ids=ids,
        attention_mask=attention_mask,
        do_sample=True,
        temperature=1.0,
        top_p=0.95,
        top_k=0,
        num_return_sequences=k,
        max_new_tokens=new,
        min_new_tokens=new,
        use_cache=True,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
      )

  def check(out):
    assert out.shape == (n * k, W45_PROMPT_LEN + new), f"generate returned {tuple(out.shape)}"
    assert (out[:, :W45_PROMPT_LEN] == ids.repeat_interleave(k, dim=0)).all()
    assert not (out[:, W45_PROMPT_LEN:] == EOS_ID).any(), "EOS was generated"

  torch.manual_seed(SEED)
  for _ in range(sizes["warmup"]):
    check(call())
  times = []
  for _ in range(sizes["repeats"]):
    t0 = time.perf_counter()
    out = call()
    times.append(time.perf_counter() - t0)
    check(out)
  s = summary(times)
  return {"tokens_per_s": n * k * new / s["median"], "seconds": s, "sizes": sizes}


# ---------------------------------------------------------------- W5: one GRPO + LoRA step in TRL


def w5_grpo_lora_step(folder: str, sizes: dict) -> dict:
  import datasets
  from peft import LoraConfig
  from trl import GRPOConfig, GRPOTrainer

  datasets.disable_progress_bars()
  n, k, length = sizes["prompts"], sizes["samples"], sizes["completion"]
  warmup, total = sizes["warmup"], sizes["warmup"] + sizes["steps"]
  tok = load_w45_tokenizer(folder)
  # W4's prompts: all 16 for the measured run (8 drawn a step), the first 2 for --smoke.
  prompts = w45_prompt_texts(tok, w45_prompt_ids(sizes["dataset"]))
  dataset = datasets.Dataset.from_dict({"prompt": prompts})
  peft_config = LoraConfig(
    r=LORA_RANK,
    lora_alpha=LORA_ALPHA,
    target_modules=LORA_TARGETS,
    lora_dropout=0.0,
    task_type="CAUSAL_LM",
  )

  with tempfile.TemporaryDirectory(prefix="trl_bench_") as tmp:
    config = GRPOConfig(
      output_dir=os.path.join(tmp, "out"),
      per_device_train_batch_size=n * k,
      num_generations=k,
      max_steps=total,
      max_completion_length=length,
      generation_kwargs={"min_new_tokens": length},
      top_p=0.95,
      # gradient_checkpointing: TRL's default (True) is kept on purpose; recorded below.
      **GRPO_COMMON,
    )
    timer = StepTimer()
    trainer = GRPOTrainer(
      model=folder,
      reward_funcs=even_token_reward,
      args=config,
      train_dataset=dataset,
      processing_class=tok,
      callbacks=[timer],
      peft_config=peft_config,
    )
    peft_model = trainer.model
    base = peft_model.get_base_model()
    check_w45_model(base, extra=LORA_PARAMS)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == LORA_PARAMS, f"{trainable:,} trainable parameters, expected {LORA_PARAMS:,}"
    assert trainer.ref_model is None, "TRL built a separate reference model"
    assert list(peft_model.peft_config) == ["default"], list(peft_model.peft_config)
    trainer.remove_callback(PrinterCallback)  # it prints TRL's end-of-training summary
    assert config.generation_batch_size == n * k
    assert config.steps_per_generation == 1
    assert trainer.eos_token_ids == [EOS_ID], trainer.eos_token_ids
    checkpointing = bool(config.activation_checkpointing)
    model_checkpointing = []  # the model's flag at the start of the first step (train() sets it)

    # The lengths of the inputs of the model's forwards during the first generation: with the
    # KV cache the prefill takes the prompt and each later forward one token.
    forward_lengths: list[int] = []
    first_generation = []

    def record_length(module, args, kwargs):
      if first_generation and not first_generation[0]:
        x = kwargs.get("input_ids", args[0] if args else None)
        forward_lengths.append(int(x.shape[1]) if x is not None else -1)

    length_hook = base.register_forward_pre_hook(record_length, with_kwargs=True)
    generate = trainer._generate_single_turn

    def timed_generate(*args, **kwargs):
      first_generation.append(False)
      t0 = time.perf_counter()
      completion_ids, logprobs = generate(*args, **kwargs)
      timer.add_generation(time.perf_counter() - t0)
      first_generation[0] = True
      assert len(completion_ids) == n * k, f"{len(completion_ids)} completions, expected {n * k}"
      assert all(len(c) == length for c in completion_ids), f"a completion is not {length} tokens"
      assert not any(EOS_ID in c for c in completion_ids), "EOS was generated"
      return completion_ids, logprobs

    trainer._generate_single_turn = timed_generate

    # The reference log-probs: TRL enters `disable_adapter()` on the (unwrapped) PEFT model.
    disable_calls = []
    disable_adapter = peft_model.disable_adapter

    def counting_disable_adapter():
      disable_calls.append(1)
      return disable_adapter()

    peft_model.disable_adapter = counting_disable_adapter
    checked = []

    class CheckReference(TrainerCallback):
      def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:
          model_checkpointing.append(bool(base.is_activation_checkpointing))

      def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
          length_hook.remove()
          assert disable_calls, "the reference forward (adapters disabled) did not run"
          assert trainer._metrics["train"]["kl"], "no KL term was computed"
          assert torch.get_num_threads() == THREADS, torch.get_num_threads()
          checked.append(True)

    trainer.add_callback(CheckReference())
    trainer.train()
    assert checked

  assert len(timer.steps) == total, f"{len(timer.steps)} steps timed, expected {total}"
  kv_cache = forward_lengths == [W45_PROMPT_LEN] + [1] * (length - 1)
  timed, gen = timer.steps[warmup:], timer.generation[warmup:]
  s = summary(timed)
  gen_s = statistics.median(gen)
  return {
    "seconds": s,
    "generation_s": gen_s,
    "generation_share": gen_s / s["median"],
    "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    "steps": timed,
    "activation_checkpointing": checkpointing,
    "model_activation_checkpointing": model_checkpointing[0],
    "generation_kv_cache": kv_cache,
    "generation_forward_lengths": sorted(set(forward_lengths)),
    "trainable_params": trainable,
    "sizes": sizes,
  }


# ---------------------------------------------------------------- driver


def versions() -> dict:
  import trl

  try:
    import peft

    peft_version = peft.__version__
  except ImportError:  # W1, W2 and W4 do not need it
    peft_version = None
  return {
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "trl": trl.__version__,
    "peft": peft_version,
    "python": platform.python_version(),
  }


def machine() -> dict:
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return {"cpu": cpu, "nproc": os.cpu_count()}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
    "--workloads", default="w1,w2", help="comma-separated subset of w1,w2,w4,w5 (default w1,w2)"
  )
  parser.add_argument(
    "--folder",
    default=None,
    help="W4 / W5 model folder: loaded, or made first when it has no config.json",
  )
  parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--steps", type=int, default=10, help="W1 timed optimizer steps")
  parser.add_argument("--warmup", type=int, default=2, help="W1 warm-up optimizer steps")
  parser.add_argument("--repeats", type=int, default=5, help="W2 timed generate calls")
  parser.add_argument("--json", default=None, help="write the results to this file")
  args = parser.parse_args(argv)
  chosen = [w.strip() for w in args.workloads.split(",") if w.strip()]
  unknown = set(chosen) - {"w1", "w2", "w4", "w5"}
  if unknown:
    parser.error(f"unknown workloads: {sorted(unknown)}")
  if {"w4", "w5"} & set(chosen) and not args.folder:
    parser.error("W4 and W5 need --folder PATH (made there when it has no config.json)")

  torch.set_num_threads(THREADS)
  transformers.set_seed(SEED)
  transformers.logging.set_verbosity_error()
  transformers.logging.disable_progress_bar()
  # TRL 1.16 reads the model's `is_gradient_checkpointing`, which transformers 5.24 deprecates.
  warnings.filterwarnings(
    "ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning
  )
  # W5 keeps TRL's default gradient_checkpointing=True, whose name (and the methods TRL calls to
  # switch it off around generation and no-grad forwards) transformers 5.24 calls deprecated.
  warnings.filterwarnings(
    "ignore",
    message=r"`gradient_checkpointing(_enable|_disable)?` is deprecated",
    category=FutureWarning,
  )
  out: dict = {"peer": "trl", "versions": versions(), "machine": machine()}
  if args.smoke:
    out["smoke"] = True
  v = out["versions"]
  print(
    f"TRL peer: trl {v['trl']}, transformers {v['transformers']}, torch {v['torch']} "
    f"({THREADS} threads) on {out['machine']['cpu']} (nproc {out['machine']['nproc']})",
    flush=True,
  )
  made = False
  if {"w4", "w5"} & set(chosen):
    t0 = time.perf_counter()
    made = ensure_folder(args.folder)
    out["folder"] = os.path.abspath(os.path.expanduser(args.folder))
    print(
      f"W4/W5 folder {out['folder']}: "
      + (f"made in {time.perf_counter() - t0:.1f} s" if made else "exists, loaded"),
      flush=True,
    )
  # W1 and W5 first, so that their peak RSS is not W2's or W4's.
  if "w1" in chosen:
    out["w1"] = w = w1_grpo_step(args.steps, args.warmup)
    print(
      f"W1 GRPO step: {w['seconds']['median']:.3f} s median "
      f"({w['seconds']['min']:.3f}-{w['seconds']['max']:.3f}, {len(w['steps'])} steps after "
      f"{args.warmup} warm-up); generation {w['generation_s']:.3f} s "
      f"({w['generation_share']:.0%}); peak RSS {w['peak_rss_gib']:.2f} GiB",
      flush=True,
    )
  if "w5" in chosen:
    out["w5"] = w = w5_grpo_lora_step(args.folder, W5_SMOKE if args.smoke else W5)
    w["rss_own_process"] = chosen == ["w5"] and not made
    print(
      f"W5 GRPO + LoRA step: {w['seconds']['median']:.3f} s median "
      f"({w['seconds']['min']:.3f}-{w['seconds']['max']:.3f}, {len(w['steps'])} steps after "
      f"{w['sizes']['warmup']} warm-up); generation {w['generation_s']:.3f} s "
      f"({w['generation_share']:.0%}); peak RSS {w['peak_rss_gib']:.2f} GiB"
      + ("" if w["rss_own_process"] else " (not W5's alone: run --workloads w5 on its own)")
      + f"; activation checkpointing {w['activation_checkpointing']}, "
      f"KV cache in generation {w['generation_kv_cache']}",
      flush=True,
    )
  if "w2" in chosen:
    out["w2"] = w = w2_sampling(args.repeats)
    print(
      f"W2 sampling: {w['tokens_per_s']:,.0f} tokens/s (median {w['seconds']['median']:.3f} s, "
      f"{w['seconds']['min']:.3f}-{w['seconds']['max']:.3f})",
      flush=True,
    )
  if "w4" in chosen:
    out["w4"] = w = w4_sampling(args.folder, W4_SMOKE if args.smoke else W4)
    z = w["sizes"]
    print(
      f"W4 sampling ({z['prompts']} x {z['samples']}, {z['new_tokens']} new tokens, top-p 0.95, "
      f"vocabulary {W45_VOCAB:,}): {w['tokens_per_s']:,.1f} tokens/s "
      f"(median {w['seconds']['median']:.3f} s, {w['seconds']['min']:.3f}-"
      f"{w['seconds']['max']:.3f})",
      flush=True,
    )
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
