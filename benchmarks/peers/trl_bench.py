"""TRL / Hugging Face peer for the W1 and W2 workloads of shared/benchmarks.md.

Runs in its own virtual environment (benchmarks/.venvs/trl, made by benchmarks/peers/setup.sh:
torch 2.13.0 CPU build, transformers 5.24, trl 1.16), never in rl_jax's:

  benchmarks/.venvs/trl/bin/python benchmarks/peers/trl_bench.py [--workloads w1,w2] [--json PATH]

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

With --json PATH the numbers are written as
{"peer": "trl", "versions": {...}, "machine": {...}, "w1": {...}, "w2": {...}}.
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

import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import (  # noqa: E402
  LlamaConfig,
  LlamaForCausalLM,
  PreTrainedTokenizerFast,
  PrinterCallback,
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


def build_tokenizer() -> PreTrainedTokenizerFast:
  words = SPECIALS + [f"t{i}" for i in range(FIRST_WORD, VOCAB)]
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
  assert len(tok) == VOCAB and (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (
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
      gradient_accumulation_steps=1,
      steps_per_generation=1,
      num_iterations=1,
      max_steps=total,
      max_completion_length=W1_COMPLETION,
      generation_kwargs={"min_new_tokens": W1_COMPLETION},
      temperature=1.0,
      top_p=1.0,
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
      activation_checkpointing=False,
      model_init_kwargs={"dtype": "float32"},
      report_to="none",
      logging_strategy="no",
      save_strategy="no",
      disable_tqdm=True,
      log_level="error",
      seed=SEED,
      data_seed=SEED,
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


# ---------------------------------------------------------------- driver


def versions() -> dict:
  import trl

  return {
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "trl": trl.__version__,
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
  parser.add_argument("--workloads", default="w1,w2", help="comma-separated subset of w1,w2")
  parser.add_argument("--steps", type=int, default=10, help="W1 timed optimizer steps")
  parser.add_argument("--warmup", type=int, default=2, help="W1 warm-up optimizer steps")
  parser.add_argument("--repeats", type=int, default=5, help="W2 timed generate calls")
  parser.add_argument("--json", default=None, help="write the results to this file")
  args = parser.parse_args(argv)
  chosen = [w.strip() for w in args.workloads.split(",") if w.strip()]
  unknown = set(chosen) - {"w1", "w2"}
  if unknown:
    parser.error(f"unknown workloads: {sorted(unknown)}")

  torch.set_num_threads(THREADS)
  transformers.set_seed(SEED)
  transformers.logging.set_verbosity_error()
  transformers.logging.disable_progress_bar()
  # TRL 1.16 reads the model's `is_gradient_checkpointing`, which transformers 5.24 deprecates.
  warnings.filterwarnings(
    "ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning
  )
  out: dict = {"peer": "trl", "versions": versions(), "machine": machine()}
  v = out["versions"]
  print(
    f"TRL peer: trl {v['trl']}, transformers {v['transformers']}, torch {v['torch']} "
    f"({THREADS} threads) on {out['machine']['cpu']} (nproc {out['machine']['nproc']})",
    flush=True,
  )
  # W1 first, so that its peak RSS is not W2's.
  if "w1" in chosen:
    out["w1"] = w = w1_grpo_step(args.steps, args.warmup)
    print(
      f"W1 GRPO step: {w['seconds']['median']:.3f} s median "
      f"({w['seconds']['min']:.3f}-{w['seconds']['max']:.3f}, {len(w['steps'])} steps after "
      f"{args.warmup} warm-up); generation {w['generation_s']:.3f} s "
      f"({w['generation_share']:.0%}); peak RSS {w['peak_rss_gib']:.2f} GiB",
      flush=True,
    )
  if "w2" in chosen:
    out["w2"] = w = w2_sampling(args.repeats)
    print(
      f"W2 sampling: {w['tokens_per_s']:,.0f} tokens/s (median {w['seconds']['median']:.3f} s, "
      f"{w['seconds']['min']:.3f}-{w['seconds']['max']:.3f})",
      flush=True,
    )
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
