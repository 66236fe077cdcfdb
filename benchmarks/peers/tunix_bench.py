"""Tunix peer for the performance workloads W1 and W2 of shared/benchmarks.md (JAX on CPU).

Runs in its own virtual environment (benchmarks/.venvs/tunix, built by benchmarks/peers/setup.sh:
google-tunix 0.1.7 with its jax / flax):

  benchmarks/.venvs/tunix/bin/python benchmarks/peers/tunix_bench.py [--workloads w1,w2]
      [--steps 10 --warmup 2] [--repeats 5] [--json PATH]

Model. `tunix.models.llama3.model.Llama3` with a custom `ModelConfig` equal to the benchmark
model: vocabulary 512, width 256, 4 layers, 4 heads of head_dim 64, 4 KV heads, MLP 1024
(SwiGLU), rope_theta 10000, norm_eps 1e-6, weight_tying=False (separate lm_head), float32,
4,458,752 parameters (counted and printed). Random init from `nnx.Rngs(0)`. Tunix initialises
the MLP kernels (gate/up/down) with zeros, so those three are re-drawn here with the same
initializer Tunix uses for every other matrix (`nnx.initializers.normal()`, stddev 0.01),
keyed from the same seed; the work done is the same either way. Known Tunix behaviour, not
changed here: `Attention` calls `apply_rope` without `rope_theta`, so Tunix's Llama applies
RoPE with its default theta of 1e6 whatever the config says (same cost, different angles).

Tokenizer. Tunix's sampler works on strings, through `TokenizerAdapter`. A minimal local
word-level tokenizer (the adapter's duck-typed interface: encode, decode, bos_id, eos_id,
pad_id) maps the words "t0".."t511" to ids 0..511, so every id the model can emit is a word.
bos_id() is None (no BOS is prepended, so a 32-word prompt is exactly 32 tokens). eos_id() is
512 and pad_id() is 513: ids outside the model's 512 logits, which the sampler can never draw.
That is how EOS is suppressed (Tunix's rollout has no forbidden-token option): every sequence
runs to its full length, which the script checks on every generation. Neither id is ever fed
to the model, since prompts are exactly `max_prompt_length` = 32 tokens (no padding) and
completions are never shorter than `max_tokens_to_generate`. Prompts: random words drawn from
ids 3..511 with a fixed seed, exactly 32 tokens each.

W2, sampling throughput. `tunix.generate.sampler.Sampler` (the vanilla sampler) with
`CacheConfig(cache_size=160)` (32 + 128), called on 64 prompts with max_prompt_length=32,
max_generation_steps=128, temperature=1.0, top_p=1.0, top_k=None (no top-k: Tunix then draws
with `jax.random.categorical` on the full vocabulary), echo=False, a different integer seed per
call. The call returns host-side tokens and decoded text, so it is complete when it returns.
1 warm-up call (compilation), then `--repeats` timed calls; tokens/s = 64 * 128 / median.

W1, one full GRPO step. `tunix.rl.grpo.grpo_learner.GRPOLearner` on an `RLCluster` with
rollout_engine="vanilla" (the same Sampler), all roles on one 1x1 ("fsdp", "tp") CPU mesh
(actor and rollout share weights, so no weight sync), a reference model that is a copy
(`nnx.clone`) of the initial policy. `RolloutConfig`: max_tokens_to_generate=64,
max_prompt_length=32, kv_cache_size=96, temperature=1.0, top_p=1.0, top_k=None, seed=0.
`GRPOConfig`: num_generations=8, num_iterations=1, beta=0.04, epsilon=0.2 (loss_agg_mode and
the rest at their defaults). `RLTrainingConfig`: optax.adamw(1e-5, b1=0.9, b2=0.999,
weight_decay=0.0) as the actor optimizer; mini-batch, micro-batch, rollout and log-prob batch
sizes left at their defaults, which all equal the dataset batch of 8 prompts, i.e. 64 sequences:
one generate call of 64, one reference pass of 64, one optimizer step on 64, no accumulation;
max_steps = warmup + steps; no checkpoint directory (checkpointing disabled); no
metrics_logging_options (no TensorBoard / wandb backends). The dataset is a list of
warmup + steps batches `{"prompts": np.array of 8 prompt strings}`; the learner repeats each
prompt 8 times. Reward: fraction of completion words with an even id (a cheap Python function).
With num_iterations=1 Tunix computes no separate old-policy pass: the loss uses the
stop-gradient of the policy's own log-probs as the old log-probs (the same values). Tunix passes
the one RolloutConfig seed to every rollout (with seed=None it would use PRNGKey(0) every
time); the prompts differ from step to step, and the timing does not depend on the draws.
Tunix's sampler (both workloads) runs one decode step more than it keeps: the decode loop
runs while decoding_step < prompt + new tokens, and the last step's token lands past the
buffer and is dropped (1 of 64 or 128 decode steps; Tunix's cost, counted as is).
Timing: the learner's `_run_global_step` (one global step = data fetch, rollout, reference
log-probs, rewards and advantages, loss, backward, optimizer update; the learner waits for the
update's loss before it returns) is wrapped on the instance with a wall clock that also blocks
on the actor's parameters; the first `--warmup` steps (compilation) are dropped. Generation
time is the time inside `RLCluster.generate` in that step (returns host tokens, so it is
complete), the reference time the time inside `RLCluster.get_ref_per_token_logps` (blocked on
its result). Peak memory: the process's peak RSS (ru_maxrss) read right after W1, which runs
before W2.
"""

from __future__ import annotations

import os

os.environ["JAX_PLATFORMS"] = "cpu"

import argparse
import importlib.metadata
import json
import platform
import resource
import statistics
import time

import jax
import numpy as np
import optax
from flax import nnx
from tunix.generate import sampler as sampler_lib
from tunix.models.llama3 import model as llama_lib
from tunix.rl import rl_cluster as rl_cluster_lib
from tunix.rl.grpo import grpo_learner
from tunix.rl.rollout import base_rollout
from tunix.utils import mesh as mesh_lib

VOCAB, PROMPT_LEN, SEED = 512, 32, 0
EOS_ID, PAD_ID = VOCAB, VOCAB + 1  # outside the model's logits: never sampled
W1_PROMPTS, W1_GROUP, W1_NEW = 8, 8, 64
W2_PROMPTS, W2_NEW = 64, 128
EXPECTED_PARAMS = 4_458_752


class WordTokenizer:
  """Word-level tokenizer over "t0".."t511" with the interface Tunix's TokenizerAdapter needs."""

  def __init__(self, vocab: int):
    self.words = [f"t{i}" for i in range(vocab)]
    self.ids = {w: i for i, w in enumerate(self.words)}

  def encode(self, text: str, **_) -> list[int]:
    return [self.ids[w] for w in str(text).split()]

  def decode(self, ids, **_) -> str:
    return " ".join(self.words[i] for i in ids if 0 <= i < len(self.words))

  def bos_id(self):
    return None

  def eos_id(self) -> int:
    return EOS_ID

  def pad_id(self) -> int:
    return PAD_ID


def build_model() -> llama_lib.Llama3:
  cfg = llama_lib.ModelConfig(
    num_layers=4,
    vocab_size=VOCAB,
    embed_dim=256,
    hidden_dim=1024,
    num_heads=4,
    head_dim=64,
    num_kv_heads=4,
    rope_theta=10_000,
    norm_eps=1e-6,
    weight_tying=False,
  )
  model = llama_lib.Llama3(cfg, rngs=nnx.Rngs(SEED))
  # Tunix zero-initialises the MLP kernels; draw them like its other matrices instead.
  init = nnx.initializers.normal()
  key = jax.random.key(SEED + 1)
  for layer in model.layers:
    for proj in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
      key, sub = jax.random.split(key)
      proj.kernel[...] = init(sub, proj.kernel.shape, proj.kernel.dtype)
  return model


def count_params(model: nnx.Module) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def random_prompts(tok: WordTokenizer, n: int, seed: int) -> list[str]:
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, VOCAB, (n, PROMPT_LEN))
  prompts = [tok.decode(row.tolist()) for row in ids]
  assert all(len(tok.encode(p)) == PROMPT_LEN for p in prompts)
  return prompts


def summary(times: list[float]) -> dict[str, float]:
  return dict(median=statistics.median(times), min=min(times), max=max(times))


def check_lengths(tokens, expected: int, what: str) -> None:
  lengths = {len(t) for t in tokens}
  if lengths != {expected}:
    raise RuntimeError(f"{what}: completion lengths {sorted(lengths)}, expected all {expected}")


def run_w2(repeats: int) -> dict:
  tok = WordTokenizer(VOCAB)
  model = build_model()
  sampler = sampler_lib.Sampler(
    model,
    tok,
    sampler_lib.CacheConfig(
      cache_size=PROMPT_LEN + W2_NEW, num_layers=4, num_kv_heads=4, head_dim=64
    ),
  )
  prompts = random_prompts(tok, W2_PROMPTS, seed=1)

  def call(seed: int):
    out = sampler(
      input_strings=prompts,
      max_generation_steps=W2_NEW,
      max_prompt_length=PROMPT_LEN,
      echo=False,
      temperature=1.0,
      top_p=1.0,
      top_k=None,
      seed=seed,
    )
    check_lengths(out.tokens, W2_NEW, "W2")
    return out

  call(0)  # warm-up (compilation)
  times = []
  for i in range(repeats):
    t0 = time.perf_counter()
    call(i + 1)
    times.append(time.perf_counter() - t0)
  s = summary(times)
  return dict(tokens_per_s=W2_PROMPTS * W2_NEW / s["median"], seconds=s, calls=times)


def even_word_reward(prompts, completions, **_) -> list[float]:
  """Cheap reward: fraction of completion words whose id is even."""
  out = []
  for c in completions:
    words = c.split()
    out.append(sum(int(w[1:]) % 2 == 0 for w in words) / max(len(words), 1))
  return out


def run_w1(steps: int, warmup: int) -> dict:
  tok = WordTokenizer(VOCAB)
  policy = build_model()
  reference = nnx.clone(policy)
  mesh = mesh_lib.create_mesh((1, 1), ("fsdp", "tp"))  # Auto axis types
  roles = rl_cluster_lib.Role
  cluster_config = rl_cluster_lib.ClusterConfig(
    role_to_mesh={roles.ACTOR: mesh, roles.REFERENCE: mesh, roles.ROLLOUT: mesh},
    rollout_engine="vanilla",
    offload_to_cpu=False,
    training_config=rl_cluster_lib.RLTrainingConfig(
      actor_optimizer=optax.adamw(1e-5, b1=0.9, b2=0.999, weight_decay=0.0),
      eval_every_n_steps=10**9,
      max_steps=warmup + steps,
      checkpoint_root_directory=None,
      metrics_logging_options=None,
    ),
    rollout_config=base_rollout.RolloutConfig(
      max_tokens_to_generate=W1_NEW,
      max_prompt_length=PROMPT_LEN,
      kv_cache_size=PROMPT_LEN + W1_NEW,
      temperature=1.0,
      top_p=1.0,
      top_k=None,
      seed=SEED,
    ),
  )
  cluster = rl_cluster_lib.RLCluster(
    actor=policy, reference=reference, tokenizer=tok, cluster_config=cluster_config
  )
  learner = grpo_learner.GRPOLearner(
    rl_cluster=cluster,
    algo_config=grpo_learner.GRPOConfig(
      num_generations=W1_GROUP, num_iterations=1, beta=0.04, epsilon=0.2
    ),
    reward_fns=even_word_reward,
  )
  if learner.should_sync_weights:
    raise RuntimeError("actor and rollout do not share weights: a sync would go untimed")

  # Instrumentation: wrap the instance's methods; times accumulate into `current`.
  current = dict(gen=0.0, ref=0.0)
  steps_s, gens_s, refs_s = [], [], []

  generate = cluster.generate

  def timed_generate(*args, **kwargs):
    t0 = time.perf_counter()
    out = generate(*args, **kwargs)
    current["gen"] += time.perf_counter() - t0
    check_lengths(out.tokens, W1_NEW, "W1 rollout")
    if len(out.tokens) != W1_PROMPTS * W1_GROUP:
      raise RuntimeError(f"W1 rollout: {len(out.tokens)} sequences, expected 64")
    return out

  ref_logps = cluster.get_ref_per_token_logps

  def timed_ref(*args, **kwargs):
    t0 = time.perf_counter()
    out = jax.block_until_ready(ref_logps(*args, **kwargs))
    current["ref"] += time.perf_counter() - t0
    return out

  global_step = learner._run_global_step  # pylint: disable=protected-access

  def timed_global_step(*args, **kwargs):
    current.update(gen=0.0, ref=0.0)
    t0 = time.perf_counter()
    global_step(*args, **kwargs)
    jax.block_until_ready(nnx.state(cluster.actor_trainer.model))
    steps_s.append(time.perf_counter() - t0)
    gens_s.append(current["gen"])
    refs_s.append(current["ref"])

  cluster.generate = timed_generate
  cluster.get_ref_per_token_logps = timed_ref
  learner._run_global_step = timed_global_step  # pylint: disable=protected-access

  prompts = random_prompts(tok, W1_PROMPTS * (warmup + steps), seed=2)
  dataset = [
    {"prompts": np.array(prompts[i * W1_PROMPTS : (i + 1) * W1_PROMPTS])}
    for i in range(warmup + steps)
  ]
  learner.train(dataset)
  peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

  if len(steps_s) != warmup + steps or cluster.actor_trainer.train_steps != warmup + steps:
    raise RuntimeError(
      f"W1: {len(steps_s)} steps timed, "
      f"{cluster.actor_trainer.train_steps} optimizer steps; "
      f"expected {warmup + steps}"
    )
  timed, gen, ref = steps_s[warmup:], gens_s[warmup:], refs_s[warmup:]
  s = summary(timed)
  return dict(
    seconds=s,
    generation_s=statistics.median(gen),
    generation_share=statistics.median(gen) / s["median"],
    reference_s=statistics.median(ref),
    peak_rss_gib=peak_rss,
    steps=timed,
    warmup_steps=steps_s[:warmup],
  )


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workloads", default="w1,w2", help="comma-separated: w1, w2")
  parser.add_argument("--steps", type=int, default=10, help="W1 timed steps")
  parser.add_argument("--warmup", type=int, default=2, help="W1 warm-up steps")
  parser.add_argument("--repeats", type=int, default=5, help="W2 timed calls")
  parser.add_argument("--json", help="write the results to this path")
  args = parser.parse_args()
  workloads = [w.strip().lower() for w in args.workloads.split(",") if w.strip()]
  unknown = set(workloads) - {"w1", "w2"}
  if unknown:
    parser.error(f"unknown workloads: {sorted(unknown)}")

  n_params = count_params(build_model())
  print(
    f"tunix {importlib.metadata.version('google-tunix')}, jax {jax.__version__}, "
    f"backend {jax.default_backend()}, {os.cpu_count()} CPUs ({cpu_model()})"
  )
  print(
    f"model: Tunix Llama3, {n_params:,} parameters"
    + ("" if n_params == EXPECTED_PARAMS else f" (benchmark model: {EXPECTED_PARAMS:,})")
  )

  result = {
    "peer": "tunix",
    "versions": {
      "google-tunix": importlib.metadata.version("google-tunix"),
      "jax": jax.__version__,
      "flax": importlib.metadata.version("flax"),
      "python": platform.python_version(),
    },
    "machine": {"cpu": cpu_model(), "nproc": os.cpu_count()},
    "params": n_params,
  }
  if "w1" in workloads:
    w1 = run_w1(args.steps, args.warmup)
    result["w1"] = w1
    s = w1["seconds"]
    print(
      f"W1 GRPO step (8x8 sequences, 64 new tokens): {s['median']:.2f} s "
      f"({s['min']:.2f}-{s['max']:.2f}) over {len(w1['steps'])} steps; "
      f"generation {w1['generation_s']:.2f} s ({w1['generation_share']:.0%}), "
      f"reference pass {w1['reference_s']:.2f} s; peak RSS {w1['peak_rss_gib']:.2f} GiB"
    )
  if "w2" in workloads:
    w2 = run_w2(args.repeats)
    result["w2"] = w2
    s = w2["seconds"]
    print(
      f"W2 sampling (64 x 128 new tokens): {w2['tokens_per_s']:,.0f} tokens/s "
      f"(call {s['median']:.2f} s, {s['min']:.2f}-{s['max']:.2f})"
    )
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)
      f.write("\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
  main()
