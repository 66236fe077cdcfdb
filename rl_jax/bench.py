"""`rl-jax bench`: the rl_jax half of the performance workloads in shared/benchmarks.md.

  W1  one full GRPO step: 8 prompts x 8 samples, 32-token prompts, 64 new tokens (EOS
      suppressed), temperature 1, beta 0.04 (reference pass), eps 0.2, one AdamW step (lr 1e-5)
      on the 64 sequences, a cheap Python reward. Median seconds per step over 10 steps after 2
      warm-up steps, the generation share, and peak resident memory.
  W2  sampling throughput: 64 sequences, 32-token prompts, 128 new tokens. Generated tokens per
      second, median of 5 after 1 warm-up.
  W3  training throughput: forward + backward + AdamW on 64 x 96 tokens with the GRPO loss.
      Tokens per second and the fraction of the float32 matmul rate measured in the same process
      (6 x matmul parameters x tokens + attention FLOPs).
  W1 async (--workloads=w1async): W1 in the loop's one-step-off mode (`train.async_rollout`),
      to compare with the synchronous W1 in the same process.
  W1 floor (--workloads=w1floor): W1's dense matmuls alone, with W1's shapes: the time below
      which no float32 implementation of W1 goes on this machine (`w1_matmul_floor`).

The model is the Llama-style benchmark model (`bench` preset: vocabulary 512, width 256,
4 layers, 4 heads of 64, MLP 1024, 4,458,752 parameters, float32). `--model=0.5b
--dtype=bfloat16` runs W2 and W3 at the 0.5 B-parameter model of the accelerator target
(Qwen2.5-0.5B's shape) with bf16 activations; W3's fraction is then the MFU against the bf16
matmul rate. Prints a table and, with --json, writes the numbers for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax import algorithms, allocator, rollouts, trainer
from rl_jax import policy as policy_lib
from rl_jax import rewards as rewards_lib
from rl_jax.models import transformer
from rl_jax.sampling import SamplingConfig, generate
from rl_jax.step import Step
from rl_jax.tasks.base import Example
from rl_jax.types import TrainBatch

VOCAB, PROMPT, SEED = 512, 32, 0
# Models W2 and W3 run on (`--model`): the benchmark model, and the 0.5 B-parameter model of the
# accelerator targets at its own vocabulary. Any other `transformer.PRESETS` name takes VOCAB.
VOCABS = {"bench": VOCAB, "0.5b": 151_936}


def _config(model: str = "bench", dtype: str = "float32") -> transformer.TransformerConfig:
  """The preset at its vocabulary, activations (and matmuls) in `dtype`; parameters float32."""
  return transformer.preset(model, VOCABS.get(model, VOCAB), dtype=dtype)


def _model(model: str = "bench", dtype: str = "float32"):
  cfg = _config(model, dtype)
  graphdef, params = transformer.init_model(cfg, SEED)
  return cfg, graphdef, params


def _prompts(n: int, seed: int = 1, vocab: int = VOCAB):
  rng = np.random.default_rng(seed)
  return (rng.integers(3, vocab, (n, PROMPT)).astype(np.int32), np.ones((n, PROMPT), bool))


def _timed(fn, repeats: int, warmup: int) -> list[float]:
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return times


def _summary(times: list[float]) -> dict[str, float]:
  return dict(median=statistics.median(times), min=min(times), max=max(times))


def matmul_rate(n: int | None = None, repeats: int = 10, dtype: str = "float32") -> float:
  """The machine's FLOP/s on a large jitted `dtype` matmul (the denominator of W3): the best of
  `repeats` calls, so that a momentarily busy machine does not inflate W3's fraction. n: 2048 on
  a CPU, 8192 on an accelerator (large enough to reach its rate)."""
  n = n or (2048 if jax.default_backend() == "cpu" else 8192)
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  f = jax.jit(lambda x, y: x @ y)
  times = _timed(lambda: f(a, b), repeats, 1)
  return 2 * n**3 / min(times)


def w2_sampling(repeats: int = 5, model: str = "bench", dtype: str = "float32") -> dict:
  cfg, graphdef, params = _model(model, dtype)
  prompts, mask = _prompts(64, vocab=cfg.vocab_size)
  sampling = SamplingConfig(max_new_tokens=128, temperature=1.0, stop_ids=())
  keys = iter(jax.random.split(jax.random.key(0), repeats + 1))
  times = _timed(
    lambda: (
      generate(graphdef, params, prompts, mask, next(keys), cfg=sampling, group_size=1).tokens_NxT
    ),
    repeats,
    1,
  )
  s = _summary(times)
  return dict(tokens_per_s=64 * 128 / s["median"], seconds=s)


# W4's model (shared/benchmarks.md): the Qwen2.5-0.5B configuration truncated to 4 layers.
W4_MODEL = dict(transformer.PRESETS["0.5b"], vocab_size=151_936, num_layers=4)


def w4_model(folder: str | None = None):
  """(config, graphdef, params) of `W4_MODEL`: random weights, or those of the Hugging Face
  folder every framework of the side-by-side loads (`benchmarks/peers/trl_bench.py --folder`
  writes it), which must hold exactly this configuration."""
  cfg = transformer.TransformerConfig(**W4_MODEL)
  if folder is None:
    return (cfg, *transformer.init_model(cfg, SEED))
  from rl_jax.models import hf  # pylint: disable=import-outside-toplevel

  with open(os.path.join(folder, "config.json")) as f:
    found = hf.config_from_hf(json.load(f))
  if found != cfg:
    raise ValueError(f"{folder} does not hold W4's model: {found} != {cfg}")
  return cfg, transformer.abstract_model(cfg)[0], hf.load_params(folder, cfg)


def _w4_prompts(vocab: int) -> np.ndarray:
  """W4's (and W5's) 16 prompts of 64 token ids, the peers' too."""
  return np.random.default_rng(4).integers(3, vocab, (16, 64)).astype(np.int32)


def w4_sampling(repeats: int = 3, folder: str | None = None) -> dict:
  """W4: sampling at a real vocabulary. 16 prompts x 4 samples, 64-token prompts, 128 new
  tokens (EOS suppressed), temperature 1, top-p 0.95, on `W4_MODEL` (float32; random weights,
  or `folder`'s). Generated tokens per second, median of `repeats` calls after 1 warm-up."""
  cfg, graphdef, params = w4_model(folder)
  prompts = _w4_prompts(cfg.vocab_size)
  mask = np.ones((16, 64), bool)
  sampling = SamplingConfig(max_new_tokens=128, temperature=1.0, top_p=0.95, stop_ids=())
  keys = iter(jax.random.split(jax.random.key(0), repeats + 1))
  times = _timed(
    lambda: generate(graphdef, params, prompts, mask, next(keys), cfg=sampling, group_size=4)[0],
    repeats,
    1,
  )
  s = _summary(times)
  return dict(tokens_per_s=16 * 4 * 128 / s["median"], seconds=s)


class _IdTokenizer:
  """Prompts and completions as space-separated token ids: W1's prompts are exactly 32 tokens."""

  vocab_size, pad_id, eos_id, stop_ids = VOCAB, 0, -1, ()

  def __init__(self, vocab_size: int = VOCAB):
    self.vocab_size = vocab_size

  def encode_prompt(self, text: str) -> list[int]:
    return [int(t) for t in text.split()]

  encode = lambda self, text, eos=False: self.encode_prompt(text)

  def decode(self, ids) -> str:
    return " ".join(str(int(i)) for i in ids)


def _even_fraction(examples, completions) -> np.ndarray:
  """W1's cheap Python reward: the fraction of even token ids in the completion."""
  return np.array([np.mean([int(t) % 2 == 0 for t in c.split()]) for c in completions])


def w1_step(async_rollout: bool = False):
  """W1's `Step` (the same step `rl-jax train` runs) and its initial train state: GRPO with
  beta 0.04 on the benchmark model, 8 fixed prompts x 8 samples, 64 new tokens (EOS
  suppressed), AdamW lr 1e-5, the even-token reward."""
  cfg, graphdef, params = _model()
  policy = policy_lib.Policy("bench", cfg, graphdef, _IdTokenizer())
  prompts, _ = _prompts(8)
  examples = [Example(prompt=" ".join(map(str, row)), answer="") for row in prompts]
  sampling = SamplingConfig(max_new_tokens=64, temperature=1.0, top_p=1.0, stop_ids=())
  settings = rollouts.RolloutSettings(sampling, group_size=8, prompt_len=PROMPT)
  step, tx = _grpo_step(policy, settings, lambda step, rnd: examples, off_policy=async_rollout)
  return step, trainer.init_state(params, tx), jax.tree.map(jnp.copy, params)


def _grpo_step(policy, settings, draw, **update_options):
  """(the W1 / W5 GRPO step, beta 0.04, on the `_even_fraction` reward; its optimizer)."""
  tx = trainer.make_optimizer(learning_rate=1e-5, max_grad_norm=None)
  step = Step.create(
    policy,
    algorithms.grpo(kl_coef=0.04, clip_eps_low=0.2, clip_eps_high=0.2),
    rollouts.group(settings),
    rewards_lib.Rewards([rewards_lib.Term("even", _even_fraction, 1.0)]),
    draw,
    settings,
    tx,
    **update_options,
  )
  return step, tx


def w1_grpo_step(steps: int = 10, warmup: int = 2, async_rollout: bool = False) -> dict:
  """W1 through `step.Step` (collect, then learn). With `async_rollout` the one-step-off mode
  of the loop (`train.async_rollout`): the rollout of step i+1 is collected in a background
  thread, from a copy of the parameters before update i, while update i runs. `generation_s`
  is then the time a step waits for its rollout."""
  step, state, ref_params = w1_step(async_rollout)
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=1) if async_rollout else None
  pending = None
  totals, gens, refs = [], [], []
  for i in range(steps + warmup):
    t0 = time.perf_counter()
    key = jax.random.key(i)
    if pending is None:
      behaviour = state.params
      roll, _ = step.collect(behaviour, i, key)
    else:
      (roll, _), behaviour = pending[0].result(), pending[1]
    t_gen = time.perf_counter() - t0
    if async_rollout:  # collect step i + 1 while update i runs
      nxt = jax.tree.map(jnp.copy, state.params)
      pending = (pool.submit(step.collect, nxt, i + 1, jax.random.key(i + 1)), nxt)
    timings = {}
    state, _ = step.learn(state, roll, ref_params, behaviour, key, timings=timings)
    if i >= warmup:
      totals.append(time.perf_counter() - t0)
      gens.append(t_gen)
      refs.append(timings["reference_s"])
  if pool is not None:
    pool.shutdown(wait=True)
  s = _summary(totals)
  return dict(
    seconds=s,
    generation_s=statistics.median(gens),
    generation_share=statistics.median(gens) / s["median"],
    reference_s=statistics.median(refs),
    update_s=statistics.median([t - g - r for t, g, r in zip(totals, gens, refs)]),
    peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
  )


def w5_lora_grpo(
  steps: int = 4, warmup: int = 1, folder: str | None = None, chunk: int = 8, remat: bool = True
):
  """W5: one GRPO step with LoRA (rank 16, alpha 32 on q/k/v/o/gate/up/down; the reference is
  the base without adapters, so it costs no parameters of its own) on `W4_MODEL`, beta 0.04,
  AdamW lr 1e-5: 8 of W4's prompts x 4 samples a step (the 16 taken in turn), 64 new tokens
  (EOS suppressed), temperature 1, top-p 0.95, the even-token reward, the log-softmax over the
  vocabulary `chunk` completion positions at a time (`train.logits_chunk`), each block's
  activations recomputed in the backward pass (`model.remat`, as TRL's default gradient
  checkpointing does for the peer). Median seconds of
  `steps` steps after `warmup`, and the process's peak RSS (run W5 alone for its own)."""
  from rl_jax import lora as lora_lib  # pylint: disable=import-outside-toplevel

  cfg, _, params = w4_model(folder)
  cfg = dataclasses.replace(cfg, remat=remat)
  graphdef = transformer.abstract_model(cfg)[0]
  policy = policy_lib.Policy("bench", cfg, graphdef, _IdTokenizer(cfg.vocab_size))
  prompts = _w4_prompts(cfg.vocab_size)
  examples = [Example(prompt=" ".join(map(str, row)), answer="") for row in prompts]
  sampling = SamplingConfig(max_new_tokens=64, temperature=1.0, top_p=0.95, stop_ids=())
  settings = rollouts.RolloutSettings(sampling, group_size=4, prompt_len=64)
  lora = lora_lib.LoraConfig(rank=16, alpha=32.0)
  draw = lambda i, rnd: [examples[(8 * i + j) % 16] for j in range(8)]
  step, tx = _grpo_step(policy, settings, draw, lora=lora, logits_chunk=chunk)
  state = trainer.init_state(lora_lib.init_adapters(params, lora, SEED), tx)
  totals, gens = [], []
  for i in range(steps + warmup):
    t0 = time.perf_counter()
    merged = step.policy_params(state, params)
    roll, _ = step.collect(merged, i, jax.random.key(i))
    t_gen = time.perf_counter() - t0
    state, _ = step.learn(state, roll, params, merged, jax.random.key(i))
    jax.block_until_ready(state)
    if i >= warmup:
      totals.append(time.perf_counter() - t0)
      gens.append(t_gen)
  s = _summary(totals)
  return dict(
    seconds=s,
    generation_s=statistics.median(gens),
    trainable=sum(x.size for x in jax.tree.leaves(state.params)),
    peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
  )


def w1_matmul_floor(repeats: int = 5) -> dict:
  """What W1's three phases would take if everything but their dense matmuls were free: the
  same products, with W1's shapes (each prompt once per group, as rl_jax computes it), run with
  nothing else in this process. Attention, norms, softmax, RoPE, the sampler's choice, the
  optimizer and the memory traffic of the activations between the products are left out, so
  no float32 implementation of W1 runs faster than this on the machine; the ratio of the step
  to this floor is what all of that costs.

    update      forward + backward of the products over 8 x 32 prompt + 64 x 63 completion rows
                (the LM head on 64 x 64), gradients of every weight
    reference   the same forward
    generation  prefill of 4 prompts and 64 decode steps of 32 rows, as two concurrent streams
  """
  cfg = _config()
  D, F, V = cfg.d_model, cfg.mlp_dim, cfg.vocab_size
  HD, KD = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  rng = np.random.default_rng(0)
  w = lambda *shape: jnp.asarray(rng.normal(size=shape).astype(np.float32) * D**-0.5)
  weights = dict(
    layers=[
      dict(qkv=w(D, HD + 2 * KD), o=w(HD, D), gate_up=w(D, 2 * F), down=w(F, D))
      for _ in range(cfg.num_layers)
    ],
    head=w(D, V),
  )

  def trunk(weights, x):
    for layer in weights["layers"]:
      x = x + (x @ layer["qkv"])[:, :HD] @ layer["o"]
      x = x + (x @ layer["gate_up"])[:, :F] @ layer["down"]
    return x

  G, B, P, T = 8, 8, PROMPT, 64
  rows, head_rows = B * P + B * G * (T - 1), B * G * T
  loss = lambda weights, x: jnp.sum(trunk(weights, x)[-head_rows:] @ weights["head"])
  x = w(rows, D)
  reference = jax.jit(loss)
  update = jax.jit(jax.grad(loss))
  streams, stream_rows = 2, B * G // 2

  @jax.jit
  def stream(weights, prompt_x, x):
    trunk(weights, prompt_x)  # prefill of the stream's prompts
    step = lambda _, x: jnp.tanh((trunk(weights, x) @ weights["head"])[:, :D])
    return jax.lax.fori_loop(0, T, step, x)

  prompt_x, row_x = w(B // streams * P, D), w(stream_rows, D)
  pool = concurrent.futures.ThreadPoolExecutor(streams)
  generation = lambda: list(
    pool.map(lambda _: jax.block_until_ready(stream(weights, prompt_x, row_x)), range(streams))
  )
  out = {}
  for name, fn in (
    ("generation_s", generation),
    ("reference_s", lambda: reference(weights, x)),
    ("update_s", lambda: update(weights, x)),
  ):
    out[name] = statistics.median(_timed(fn, repeats, 1))
  pool.shutdown()
  out["step_s"] = out["generation_s"] + out["reference_s"] + out["update_s"]
  return out


def w3_train(
  repeats: int = 5, rate: float | None = None, model: str = "bench", dtype: str = "float32"
) -> dict:
  """W3. `model` / `dtype`: another preset (the 0.5 B model of the accelerator target) and the
  activation dtype; the fraction is then of the measured `dtype` matmul rate (MFU). The
  log-softmax runs 16 positions at a time, which keeps a 150 k vocabulary's logits small."""
  cfg, graphdef, params = _model(model, dtype)
  N, T = 64, 64
  rng = np.random.default_rng(2)
  prompts, mask = _prompts(N, vocab=cfg.vocab_size)
  algo = dataclasses.replace(algorithms.grpo(kl_coef=0.04), aggregation_constant=T)
  tx = trainer.make_optimizer(learning_rate=1e-5, max_grad_norm=None)
  update = trainer.make_rl_update(
    graphdef, algo, tx, logits_chunk=16 if cfg.vocab_size > 4096 else 0
  )
  batch = TrainBatch(
    prompts,
    mask,
    rng.integers(3, cfg.vocab_size, (N, T)).astype(np.int32),
    np.ones((N, T), bool),
    np.ones((N, T), bool),
    np.repeat(rng.normal(size=(N, 1)), T, 1).astype(np.float32),
    np.zeros((N, T), np.float32),
    -np.ones((N, T), np.float32) * 6.0,
  )
  batch = jax.device_put(batch)
  holder = [trainer.init_state(params, tx)]

  def step():
    holder[0], m = update(holder[0], batch, jax.random.key(0))
    return m

  times = _timed(step, repeats, 1)
  s = _summary(times)
  tokens = N * (PROMPT + T)
  flops = train_flops(cfg, N, PROMPT, T)
  rate = max(rate or 0.0, matmul_rate(dtype=dtype))  # measured again right after, best kept
  return dict(
    tokens_per_s=tokens / s["median"],
    seconds=s,
    step_gflop=flops / 1e9,
    achieved_gflops=flops / s["median"] / 1e9,
    matmul_gflops=rate / 1e9,
    fraction_of_matmul_rate=flops / s["median"] / rate,
  )


def train_flops(cfg: transformer.TransformerConfig, n: int, prompt: int, completion: int) -> int:
  """FLOPs of one forward + backward over n sequences of prompt + completion tokens: 6 x the
  layers' matmul parameters x all tokens, 6 x the LM head x the completion tokens (the only
  positions whose logits the loss needs, and the only ones computed), and the attention
  products (QK^T and PV: 4 L^2 H Dh per sequence and layer forward, 3x that with the backward).
  Embedding lookups, norms and biases are not counted."""
  D, H, K, Dh, F = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
  layer = D * H * Dh + 2 * D * K * Dh + H * Dh * D + 3 * D * F
  L = prompt + completion
  attention = 4 * n * L * L * H * Dh * cfg.num_layers
  return (
    6 * cfg.num_layers * layer * n * L + 6 * cfg.vocab_size * D * n * completion + 3 * attention
  )


def machine() -> dict:
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  import flax  # pylint: disable=import-outside-toplevel

  return dict(
    cpu=cpu,
    nproc=os.cpu_count(),
    devices=f"{jax.device_count()} x {jax.devices()[0].platform}",
    jax=jax.__version__,
    flax=flax.__version__,
    python=platform.python_version(),
    date=time.strftime("%Y-%m-%d"),
    xla_flags=os.environ.get("XLA_FLAGS", ""),
    allocator=allocator.active(),
  )


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="rl-jax bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
    "--workloads",
    default="w1,w2,w3",
    help="comma-separated subset of w1,w2,w3,w1async (the one-step-off "
    "mode),w1floor (W1's dense matmuls alone),w4 (sampling at a 151,936-token vocabulary),"
    "w5 (a GRPO step with LoRA at that vocabulary; run it alone for its peak memory)",
  )
  parser.add_argument(
    "--folder",
    default=None,
    help="W4 / W5: load the model from this Hugging Face folder (the one the peers load; "
    "benchmarks/peers/trl_bench.py --folder writes it) instead of random weights",
  )
  parser.add_argument("--json", default=None, help="write the results to this file")
  parser.add_argument(
    "--model",
    default="bench",
    choices=sorted(transformer.PRESETS),
    help="the model of W2 and W3 (W1 always runs the benchmark model); 0.5b is "
    "the accelerator target's 0.5 B-parameter model",
  )
  parser.add_argument(
    "--dtype",
    default="float32",
    choices=("float32", "bfloat16"),
    help="activation / matmul dtype of W2 and W3 (parameters stay float32); "
    "W3's fraction is then of this dtype's matmul rate",
  )
  return parser


def main(argv: list[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  chosen = set(args.workloads.split(","))
  w1s = {"w1", "w1async", "w1floor"} & chosen
  if w1s and (args.model, args.dtype) != ("bench", "float32"):
    parser.error(f"{sorted(w1s)} run the float32 benchmark model only; drop --model/--dtype")
  out: dict = dict(
    machine=machine(),
    params=_config(args.model, args.dtype).num_params(),
    model=args.model,
    dtype=args.dtype,
  )
  print(
    f"rl_jax bench on {out['machine']['cpu']} ({out['machine']['devices']}), model "
    f"{args.model} ({out['params']:,} parameters, {args.dtype}), allocator "
    f"{out['machine']['allocator']}",
    flush=True,
  )
  _run_w1(chosen, out)
  _run_w2_w3(chosen, out, args)
  _run_w4(chosen, out, args.folder)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=2)
  return 0


def _run_w1(chosen: set[str], out: dict) -> None:
  # W1 first, so that its peak RSS is its own (W2 and W3 run later in the same process).
  for name, label in (("w1", "W1 GRPO step"), ("w1async", "W1 one-step-off (async) step")):
    if name not in chosen:
      continue
    out[name] = w = w1_grpo_step(async_rollout=name == "w1async")
    gen = "waiting for the rollout" if name == "w1async" else "generation"
    print(
      f"{label}: {w['seconds']['median']:.3f} s median "
      f"({w['seconds']['min']:.3f}-{w['seconds']['max']:.3f}); {gen} "
      f"{w['generation_s']:.3f} s ({w['generation_share']:.0%}), reference pass "
      f"{w['reference_s']:.3f} s, update {w['update_s']:.3f} s; peak RSS "
      f"{w['peak_rss_gib']:.2f} GiB",
      flush=True,
    )
  if "w1floor" in chosen:
    out["w1floor"] = f = w1_matmul_floor()
    print(
      f"W1 dense-matmul floor: {f['step_s']:.3f} s (generation {f['generation_s']:.3f} s, "
      f"reference pass {f['reference_s']:.3f} s, update {f['update_s']:.3f} s): W1's products "
      f"alone, nothing else",
      flush=True,
    )


def _run_w4(chosen: set[str], out: dict, folder: str | None) -> None:
  if "w5" in chosen:  # before W4, so that the peak RSS is W5's own
    out["w5"] = w = w5_lora_grpo(folder=folder)
    print(
      f"W5 GRPO + LoRA step (vocabulary 151,936): {w['seconds']['median']:.2f} s median "
      f"({w['seconds']['min']:.2f}-{w['seconds']['max']:.2f}); generation "
      f"{w['generation_s']:.2f} s; {w['trainable']:,} trainable parameters; peak RSS "
      f"{w['peak_rss_gib']:.2f} GiB",
      flush=True,
    )
  if "w4" in chosen:
    out["w4"] = w = w4_sampling(folder=folder)
    print(
      f"W4 sampling (vocabulary 151,936, top-p 0.95): {w['tokens_per_s']:,.1f} tokens/s "
      f"(median {w['seconds']['median']:.1f} s a call, {w['seconds']['min']:.1f}-"
      f"{w['seconds']['max']:.1f})",
      flush=True,
    )


def _run_w2_w3(chosen: set[str], out: dict, args) -> None:
  if "w3" in chosen:
    out["w3"] = w = w3_train(rate=matmul_rate(dtype=args.dtype), model=args.model, dtype=args.dtype)
    out["matmul_gflops"] = w["matmul_gflops"]
    print(
      f"{args.dtype} matmul rate: {w['matmul_gflops']:.0f} GFLOP/s (best of 10 calls, before "
      f"and after the step)",
      flush=True,
    )
    print(
      f"W3 train: {w['tokens_per_s']:,.0f} tokens/s, {w['achieved_gflops']:.0f} GFLOP/s = "
      f"{w['fraction_of_matmul_rate']:.1%} of the matmul rate "
      f"(median {w['seconds']['median']:.3f} s)",
      flush=True,
    )
  if "w2" in chosen:
    out["w2"] = w2_sampling(model=args.model, dtype=args.dtype)
    w = out["w2"]
    print(
      f"W2 sampling: {w['tokens_per_s']:,.0f} tokens/s (median {w['seconds']['median']:.3f} s,"
      f" {w['seconds']['min']:.3f}-{w['seconds']['max']:.3f})",
      flush=True,
    )


if __name__ == "__main__":
  sys.exit(main())
