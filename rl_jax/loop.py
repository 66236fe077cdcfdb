"""The RL loop, top-down: warm start, then per step sample -> score -> reference -> advantages ->
update -> log -> evaluate -> checkpoint.

`run(config, workdir)` is the whole experiment. Everything numeric happens in jitted functions
built once in `Experiment`; this file only tells the story and moves host data (prompt text,
completions, rewards) in and out.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax import algorithms, logprobs, parallel, trainer
from rl_jax import config as config_lib
from rl_jax.checkpoint import Checkpointer, CheckpointError
from rl_jax.metrics import MetricsWriter, Progress, format_duration, plot_rewards, read_jsonl
from rl_jax.models import transformer
from rl_jax.sampling import SamplingConfig, generate
from rl_jax.tasks import Example, make_task
from rl_jax.types import TrainBatch

# Separate, fixed streams for the host-side data of each phase.
_SFT_STREAM, _RL_STREAM = 1, 2


def _print(msg: str) -> None:
  print(msg, flush=True)


@dataclasses.dataclass
class Experiment:
  """Everything built from a config before the first step: mesh, task, model, jitted steps."""

  config: config_lib.RunConfig
  mesh: Any
  task: Any
  graphdef: Any
  model_cfg: transformer.TransformerConfig
  algo: algorithms.Algorithm
  prompt_len: int
  sampling: SamplingConfig
  greedy: SamplingConfig

  @classmethod
  def build(
    cls, config: config_lib.RunConfig, devices=None, algorithm: algorithms.Algorithm | None = None
  ) -> Experiment:
    devices = list(jax.devices() if devices is None else devices)
    sizes = config_lib.mesh_shape(config.mesh, len(devices))
    mesh = parallel.make_mesh(sizes, devices)
    div = sizes["data"] * sizes["fsdp"]
    if config.rl.prompts_per_step % div:
      raise config_lib.ConfigError(
        f"config field 'rl.prompts_per_step'={config.rl.prompts_per_step} must be a multiple "
        f"of the batch-sharding degree mesh.data * mesh.fsdp = {div}"
      )
    if config.sft.steps and config.sft.batch_size % div:
      raise config_lib.ConfigError(
        f"config field 'sft.batch_size'={config.sft.batch_size} must be a multiple of "
        f"mesh.data * mesh.fsdp = {div}"
      )
    t = config.task
    try:
      if not hasattr(t, t.name):
        raise ValueError(
          f"task.name={t.name!r} is unknown; choose one of "
          f"{[f.name for f in dataclasses.fields(t) if f.name != 'name']}"
        )
      task = make_task(t.name, **dataclasses.asdict(getattr(t, t.name)))
    except ValueError as e:
      raise config_lib.ConfigError(str(e)) from None
    m = config.model
    overrides = {k: v for k, v in dataclasses.asdict(m).items() if k != "preset" and v is not None}
    model_cfg = transformer.preset(m.preset, task.tokenizer.vocab_size, **overrides)
    graphdef, _ = transformer.abstract_model(model_cfg)
    algo = algorithm or algorithms.make_algorithm(**dataclasses.asdict(config.algorithm))
    max_new = config.sampling.max_new_tokens or task.max_answer_len
    eos, pad = task.tokenizer.eos_id, task.tokenizer.pad_id
    sampling = SamplingConfig(
      max_new_tokens=max_new,
      temperature=config.sampling.temperature,
      top_k=config.sampling.top_k,
      top_p=config.sampling.top_p,
      eos_id=eos,
      pad_id=pad,
      cache_phases=config.sampling.cache_phases,
      streams=config.sampling.streams,
    )
    greedy = dataclasses.replace(sampling, temperature=0.0, top_k=0, top_p=1.0)
    prompt_len = task.max_prompt_len  # one fixed prompt shape per run: nothing recompiles
    return cls(config, mesh, task, graphdef, model_cfg, algo, prompt_len, sampling, greedy)

  # --- placement -------------------------------------------------------------------------------

  def init_params(self, seed: int):
    """Initialises parameters directly at their shardings (jit with out_shardings)."""
    _, abstract = transformer.abstract_model(self.model_cfg)
    shardings = parallel.param_shardings(abstract, self.mesh)
    init = jax.jit(lambda: transformer.init_model(self.model_cfg, seed)[1], out_shardings=shardings)
    return init()

  def init_state(self, params, tx, critic_tx=None):
    """Train state at its shardings; with `critic_tx`, also a critic initialised from `params`."""

    def init(p):
      critic = (
        None
        if critic_tx is None
        else logprobs.init_critic(p, self.model_cfg.d_model, shared_trunk=self.algo.shared_trunk)
      )
      return trainer.init_state(p, tx, critic, critic_tx)

    abstract = jax.eval_shape(init, params)
    shardings = parallel.state_shardings(abstract, self.mesh)
    return jax.jit(init, out_shardings=shardings)(params), shardings

  def rl_optimizers(self):
    """(policy optimizer, critic optimizer or None) for the RL phase."""
    t = self.config.train
    make = lambda lr: trainer.make_optimizer(
      learning_rate=lr,
      warmup_steps=t.warmup_steps,
      weight_decay=t.weight_decay,
      max_grad_norm=t.max_grad_norm,
    )
    critic_tx = make(t.critic_learning_rate or t.learning_rate) if self.algo.critic else None
    return make(t.learning_rate), critic_tx

  def shard(self, tree):
    return parallel.shard_batch(tree, self.mesh)

  # --- host <-> device -----------------------------------------------------------------------

  def encode_prompts(self, examples: list[Example]):
    return self.task.tokenizer.batch_encode_left_padded(
      [e.prompt for e in examples], self.prompt_len
    )

  def encode_targets(self, examples: list[Example]):
    T = self.sampling.max_new_tokens
    tokens = np.full((len(examples), T), self.task.tokenizer.pad_id, np.int32)
    mask = np.zeros((len(examples), T), bool)
    for i, ex in enumerate(examples):
      ids = self.task.tokenizer.encode(self.task.sft_target(ex), eos=True)[:T]
      tokens[i, : len(ids)], mask[i, : len(ids)] = ids, True
    return tokens, mask

  def decode(self, tokens_NxT) -> list[str]:
    return [self.task.tokenizer.decode(row) for row in np.asarray(tokens_NxT)]

  # --- evaluation ----------------------------------------------------------------------------

  def evaluate(self, params, examples: list[Example]) -> dict[str, float]:
    """Greedy accuracy and mean reward on `examples` (padded to the batch-sharding degree)."""
    div = parallel.batch_divisor(self.mesh)
    padded = examples + examples[: (-len(examples)) % div]
    prompts, mask = self.shard(self.encode_prompts(padded))
    out = generate(
      self.graphdef, params, prompts, mask, jax.random.key(0), cfg=self.greedy, group_size=1
    )
    completions = self.decode(out.tokens_NxT)[: len(examples)]
    scores = self.task.score(examples, completions)
    result = dict(
      reward_mean=float(scores.rewards.mean()),
      n=len(examples),
      response_len_mean=float(np.asarray(out.lengths_N)[: len(examples)].mean()),
    )
    if scores.correct is not None:
      result["accuracy"] = float(scores.correct.mean())
    return result


def warm_start(exp: Experiment, params, *, log: Callable[[str], None] = _print):
  """Supervised fine-tuning on the task's reference answers (train split only)."""
  c = exp.config.sft
  tx = trainer.make_optimizer(learning_rate=c.learning_rate, warmup_steps=c.warmup_steps)
  state, state_sh = exp.init_state(params, tx)
  batch_sh = parallel.batch_sharding(exp.mesh)
  step_fn = trainer.make_sft_step(
    exp.graphdef, tx, state_sharding=state_sh, batch_sharding=batch_sh
  )
  t0, report = time.time(), max(1, c.steps // 5)
  for i in range(c.steps):
    rng = np.random.default_rng([exp.config.seed, _SFT_STREAM, i])
    examples = exp.task.train_examples(rng, c.batch_size)
    batch = exp.shard((*exp.encode_prompts(examples), *exp.encode_targets(examples)))
    state, m = step_fn(state, *batch)
    if (i + 1) % report == 0 or i + 1 == c.steps:
      log(
        f"sft step {i + 1:5d}/{c.steps} | loss {float(m['loss']):.4f} | "
        f"{format_duration(time.time() - t0)}"
      )
  return state.params


class HostRollout(NamedTuple):
  """One step's training batch on the host: N = B*G rows, prompt-major."""

  prompt_NxP: np.ndarray
  prompt_mask_NxP: np.ndarray
  tokens_NxT: np.ndarray
  logp_NxT: np.ndarray
  mask_NxT: np.ndarray
  rewards_N: np.ndarray  # shaped rewards (task reward + the algorithm's shaping)


def collect_rollout(exp: Experiment, params, step: int, key) -> tuple[HostRollout, dict]:
  """Samples B prompts x G completions and scores them.

  Under dynamic sampling (DAPO) groups whose rewards are all equal carry no signal and are
  dropped; more prompts are drawn, up to `dynamic_sampling_max_rounds` extra rounds, until B
  groups are kept. If the rounds run out, dropped groups fill the batch (their advantages are
  0) so shapes never change. Reward and accuracy metrics describe the first round: a fresh
  on-policy sample, unbiased by the filtering.
  """
  c, algo = exp.config, exp.algo
  B, G = c.rl.prompts_per_step, c.rl.group_size
  T = exp.sampling.max_new_tokens
  extra_rounds = algo.dynamic_sampling_max_rounds if algo.dynamic_sampling else 0
  kept: list[dict] = []
  dropped: list[dict] = []
  metrics: dict[str, float] = {}
  rounds = 0
  for rnd in range(1 + extra_rounds):
    # Data position = step (and round): each has its own seeded prompt stream.
    seed_seq = [c.seed, _RL_STREAM, step] + ([rnd] if rnd else [])
    examples = exp.task.train_examples(np.random.default_rng(seed_seq), B)
    prompts, prompt_mask = exp.encode_prompts(examples)
    out = generate(
      exp.graphdef,
      params,
      *exp.shard((prompts, prompt_mask)),
      jax.random.fold_in(key, rnd),
      cfg=exp.sampling,
      group_size=G,
    )
    tokens, logp, mask, lengths = jax.device_get(
      (out.tokens_NxT, out.logp_NxT, out.mask_NxT, out.lengths_N)
    )
    scores = exp.task.score([ex for ex in examples for _ in range(G)], exp.decode(tokens))
    shaped = np.asarray(
      algorithms.shape_rewards(algo, jnp.asarray(scores.rewards), jnp.asarray(lengths), T)
    )
    rounds += 1
    if rnd == 0:
      metrics.update(
        reward_mean=float(scores.rewards.mean()),
        reward_std=float(scores.rewards.std()),
        response_len_mean=float(lengths.mean()),
        generated_tokens=0,
      )
      if scores.correct is not None:
        metrics["accuracy"] = float(scores.correct.mean())
      if algo.overlong_cache_len is not None:
        metrics["reward_shaped_mean"] = float(shaped.mean())
    metrics["generated_tokens"] += int(lengths.sum())
    for b in range(B):
      rows = slice(b * G, (b + 1) * G)
      group = dict(
        prompt_NxP=np.repeat(prompts[b : b + 1], G, 0),
        prompt_mask_NxP=np.repeat(prompt_mask[b : b + 1], G, 0),
        tokens_NxT=tokens[rows],
        logp_NxT=logp[rows],
        mask_NxT=mask[rows],
        rewards_N=shaped[rows],
      )
      informative = not algo.dynamic_sampling or np.ptp(shaped[rows]) > 0
      (kept if informative else dropped).append(group)
    if len(kept) >= B:
      break
  filled = max(0, B - len(kept))
  groups = (kept + dropped[:filled])[:B]
  roll = HostRollout(**{k: np.concatenate([g[k] for g in groups]) for k in HostRollout._fields})
  if algo.dynamic_sampling:
    metrics.update(ds_rounds=rounds, ds_dropped_groups=len(dropped), ds_filled_groups=filled)
  return roll, metrics


def run(
  config: config_lib.RunConfig,
  workdir: str,
  *,
  log: Callable[[str], None] = _print,
  stream=sys.stdout,
  algorithm: algorithms.Algorithm | None = None,
) -> dict[str, Any]:
  """Runs (or resumes) an RL experiment in `workdir`. Returns the final summary.

  `algorithm` replaces the config's preset with any `Algorithm` (e.g. one defined in a
  notebook); `config.algorithm` is then only recorded.
  """
  t_start = time.time()
  config_lib.validate(config, jax.device_count())
  exp = Experiment.build(config, algorithm=algorithm)
  c = config
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config_lib.to_json(c))
  log(
    f"rl_jax: {exp.algo.name} on {exp.task.name} | model {c.model.preset} "
    f"({exp.model_cfg.num_params() / 1e6:.2f} M params) | {jax.device_count()} "
    f"{jax.devices()[0].platform} device(s), mesh {dict(exp.mesh.shape)} | workdir {workdir}"
  )

  tx, critic_tx = exp.rl_optimizers()
  ckpt = Checkpointer(workdir, keep=c.checkpoint.keep, async_save=c.checkpoint.async_save)
  writer = MetricsWriter(
    workdir, tensorboard=c.log.tensorboard, wandb_project=c.log.wandb_project, config=c.to_dict()
  )
  heldout = exp.task.heldout_examples(c.eval.num_prompts)
  root_key = jax.random.key(c.seed)

  # 1. Initial state: resume, or warm-start and save the reference policy.
  params = exp.init_params(c.seed)
  start = ckpt.latest_step()
  if start is not None:
    state, state_sh = exp.init_state(params, tx, critic_tx)
    state, root_key, meta = ckpt.restore(start, state, root_key)
    ref_params = ckpt.restore_reference(params)
    if meta.get("data_position") != start:
      raise CheckpointError(
        f"checkpoint step {start} has data position "
        f"{meta.get('data_position')}; the workdir is inconsistent"
      )
    log(f"resumed from checkpoint step {start} in {ckpt.directory}")
  else:
    writer.truncate_from(0)  # a fresh run owns the workdir's logs
    if ckpt.has_reference():
      params = ckpt.restore_reference(params)
      log(f"warm start loaded from {ckpt.reference_dir}")
    elif c.sft.steps:
      log(f"warm start: {c.sft.steps} supervised steps on the train split")
      params = warm_start(exp, params, log=log)
      ckpt.save_reference(params)
    else:
      ckpt.save_reference(params)
    ref_params = params
    state, state_sh = exp.init_state(params, tx, critic_tx)
    start = 0
    before = exp.evaluate(state.params, heldout)
    writer.write_eval(0, before)
    log(f"held-out before RL: {_fmt_eval(before)}")
  writer.truncate_from(start + 1)  # drop rows a crashed run logged after its last checkpoint

  # 2. The jitted pieces of one step. Rows come in groups of G sharing a prompt: with
  # train.share_prompt each group's prompt is computed once in the log-prob and update passes.
  batch_sh = parallel.batch_sharding(exp.mesh)
  share = c.rl.group_size if c.train.share_prompt else 1
  update = trainer.make_rl_update(
    exp.graphdef,
    exp.algo,
    tx,
    critic_tx=critic_tx,
    num_minibatches=c.train.num_minibatches,
    num_iterations=c.train.num_iterations,
    num_microbatches=c.train.num_microbatches,
    temperature=c.sampling.temperature,
    aggregation_constant=exp.algo.aggregation_constant or exp.sampling.max_new_tokens,
    group_size=share,
    logits_chunk=c.train.logits_chunk,
    off_policy=c.train.async_rollout,
    state_sharding=state_sh,
    batch_sharding=batch_sh,
  )
  logprob_fn = trainer.make_logprob_fn(
    exp.graphdef,
    temperature=c.sampling.temperature,
    group_size=share,
    logits_chunk=c.train.logits_chunk,
  )
  value_fn = trainer.make_value_fn(exp.graphdef) if exp.algo.critic else None
  advantages_fn = jax.jit(functools.partial(algorithms.compute_advantages, exp.algo))
  # One-step-off mode: the rollout of step n+1 is generated (in a background thread, from a
  # copy of the parameters before update n) while update n runs; every batch is then one update
  # stale and the clipped importance ratio against the sampler's log-probs corrects for it.
  stale = c.train.async_rollout
  on_policy = c.train.num_minibatches == 1 and c.train.num_iterations == 1 and not stale
  sampler_logp_exact = (
    c.sampling.temperature == 1.0 and c.sampling.top_k == 0 and c.sampling.top_p == 1.0
  )
  B, G = c.rl.prompts_per_step, c.rl.group_size
  rollout_thread = concurrent.futures.ThreadPoolExecutor(max_workers=1) if stale else None
  pending = None  # (future of (HostRollout, metrics), behaviour params) for the next step

  def step_keys(step):  # (sample key, update key) of a step, whichever step samples it
    return jax.random.split(jax.random.fold_in(root_key, step))

  # 3. The RL steps.
  progress = Progress(c.train.steps, stream=stream, every=c.log.progress_every)
  for step in range(start + 1, c.train.steps + 1):
    t0 = time.time()
    sample_key, update_key = step_keys(step)

    # Rollout: B prompts x G samples, scored by the task (more rounds under dynamic sampling).
    if pending is None:
      behaviour_params = state.params
      roll, roll_metrics = collect_rollout(exp, behaviour_params, step, sample_key)
    else:
      future, behaviour_params = pending
      roll, roll_metrics = future.result()
    t_rollout = time.time() - t0
    if stale and step < c.train.steps:
      # Sample step + 1 from the parameters before this update (a copy: the update donates them).
      nxt = jax.tree.map(jnp.copy, state.params)
      pending = (
        rollout_thread.submit(collect_rollout, exp, nxt, step + 1, step_keys(step + 1)[0]),
        nxt,
      )

    # Reference and behaviour log-probs, advantages, the update.
    t1 = time.time()
    prompt_N, prompt_mask_N, tokens, mask = exp.shard(
      (roll.prompt_NxP, roll.prompt_mask_NxP, roll.tokens_NxT, roll.mask_NxT)
    )
    zeros = jnp.zeros(tokens.shape, jnp.float32)
    ref_logp = (
      logprob_fn(ref_params, prompt_N, prompt_mask_N, tokens, mask)
      if exp.algo.needs_reference
      else zeros
    )
    sampler_logp = exp.shard(roll.logp_NxT)
    if on_policy:
      old_logp = zeros  # the update uses stop_gradient(current log-probs): ratio exactly 1
    elif sampler_logp_exact:
      old_logp = sampler_logp
    else:  # the behaviour policy's log-probs at the training temperature, without truncation
      old_logp = logprob_fn(behaviour_params, prompt_N, prompt_mask_N, tokens, mask)
    values = (
      value_fn(state.params, state.critic_params, prompt_N, prompt_mask_N, tokens, mask)
      if value_fn
      else None
    )
    adv_NxT, returns = advantages_fn(
      algorithms.AdvantageInputs(
        jnp.asarray(roll.rewards_N.reshape(B, G)),
        mask.astype(jnp.float32),
        sampler_logp,
        ref_logp if exp.algo.needs_reference else None,
        values,
      )
    )
    batch = exp.shard(
      TrainBatch(
        prompt_N, prompt_mask_N, tokens, mask, adv_NxT, old_logp, ref_logp, values, returns
      )
    )
    state, m = update(state, batch, update_key)
    m = jax.device_get(m)
    t_update = time.time() - t1

    metrics = dict(
      **roll_metrics,
      loss=float(m["loss"]),
      pg_loss=float(m["pg_loss"]),
      kl=float(m["kl"]),
      entropy=float(m["entropy"]),
      clip_frac=float(m["clip_frac"]),
      grad_norm=float(m["grad_norm"]),
      skipped_updates=int(m["skipped_updates"]),
      rollout_s=t_rollout,
      update_s=t_update,
      gen_tokens_per_s=roll_metrics["generated_tokens"] / max(t_rollout, 1e-9),
      step_s=time.time() - t0,
    )
    for key in ("value_loss", "value_mean", "value_abs_err"):  # present with a critic
      if key in m:
        metrics[key] = float(m[key])
    writer.write(step, metrics)
    progress.update(step, metrics)

    if (c.eval.every and step % c.eval.every == 0) or step == c.train.steps:
      last_eval = exp.evaluate(state.params, heldout)
      writer.write_eval(step, last_eval)
      progress.log(f"held-out at step {step}: {_fmt_eval(last_eval)}")
    if step % c.checkpoint.every == 0 or step == c.train.steps:
      meta = dict(step=step, data_position=step, config=c.to_dict())
      try:
        ckpt.save(step, state, root_key, meta)
      except CheckpointError as e:  # never replace a good checkpoint with a bad state
        progress.log(f"warning: {e}")
  progress.close()
  if rollout_thread is not None:
    rollout_thread.shutdown()
  ckpt.close()
  writer.close()

  # 4. Summary: held-out accuracy before and after RL.
  evals = read_jsonl(os.path.join(workdir, "eval.jsonl"))
  summary: dict[str, Any] = {}
  if evals:
    first, final = evals[0], evals[-1]
    summary = dict(before=first, after=final, wall_s=time.time() - t_start, workdir=workdir)
    if "accuracy" in first and first["step"] == 0:
      log(
        f"held-out accuracy: {first['accuracy']:.1%} before RL -> {final['accuracy']:.1%} "
        f"after {final['step']} RL steps ({final['n']} prompts never trained on)"
      )
  plot_rewards(workdir)
  log(
    f"done in {format_duration(time.time() - t_start)}; metrics, checkpoints and reward.png "
    f"in {workdir}"
  )
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def _fmt_eval(e: dict) -> str:
  acc = f"accuracy {e['accuracy']:.1%} | " if "accuracy" in e else ""
  return f"{acc}reward {e['reward_mean']:.3f} | n {e['n']}"


def run_sft_only(
  config: config_lib.RunConfig, workdir: str, *, log: Callable[[str], None] = _print
) -> dict[str, Any]:
  """`rl-jax sft`: the supervised warm start alone, saved as the workdir's reference policy.

  A later `rl-jax train` on the same workdir starts RL from it instead of warm-starting again.
  """
  config_lib.validate(config, jax.device_count())
  exp = Experiment.build(config)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config_lib.to_json(config))
  ckpt = Checkpointer(workdir)
  if ckpt.has_reference():
    raise CheckpointError(
      f"{ckpt.reference_dir} already holds a warm-start policy; use a new --workdir"
    )
  params = exp.init_params(config.seed)
  before = exp.evaluate(params, exp.task.heldout_examples(config.eval.num_prompts))
  log(f"held-out before SFT: {_fmt_eval(before)}")
  params = warm_start(exp, params, log=log)
  ckpt.save_reference(params)
  after = exp.evaluate(params, exp.task.heldout_examples(config.eval.num_prompts))
  log(f"held-out after SFT: {_fmt_eval(after)}; saved to {ckpt.reference_dir}")
  ckpt.close()
  return dict(before=before, after=after)


def evaluate_workdir(
  workdir: str,
  overrides: dict[str, str] | None = None,
  *,
  step: int | None = None,
  log: Callable[[str], None] = _print,
) -> dict[str, Any]:
  """`rl-jax eval`: greedy held-out metrics of the policy saved in `workdir`.

  Uses the checkpoint at `step` (default: the latest); with no RL checkpoint, the warm-start
  reference policy. The run's own `config.json` defines the model and task.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise CheckpointError(f"{workdir} has no config.json: is it an rl_jax workdir?")
  with open(path) as f:
    cd = json.load(f)
  import ml_collections

  cd = config_lib.apply_overrides(ml_collections.ConfigDict(cd), overrides or {})
  config = config_lib.from_configdict(cd)
  exp = Experiment.build(config)
  ckpt = Checkpointer(workdir, keep=config.checkpoint.keep)
  params = exp.init_params(config.seed)
  if step is not None or ckpt.latest_step() is not None:
    tx, critic_tx = exp.rl_optimizers()
    state, _ = exp.init_state(params, tx, critic_tx)
    state, _, meta = ckpt.restore(step, state, jax.random.key(config.seed))
    params, source = state.params, f"checkpoint step {meta['step']}"
  else:
    params, source = ckpt.restore_reference(params), "the warm-start reference policy"
  result = exp.evaluate(params, exp.task.heldout_examples(config.eval.num_prompts))
  log(f"{source}: held-out {_fmt_eval(result)}")
  ckpt.close()
  return result
