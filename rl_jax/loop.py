"""The RL loop, top-down: warm start, then per step collect (examples -> rollout -> rewards)
-> learn (reference / old log-probs -> advantages -> update) -> log -> evaluate -> checkpoint.

`run(config, workdir)` is the whole experiment. The step itself is `rl_jax.step.Step`, built
from the config's components (or from objects a notebook passes); this file tells the story
and moves host data in and out.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rl_jax import algorithms, logprobs, parallel, rewards, rollouts, tasks, tokenizers, trainer
from rl_jax import config as config_lib
from rl_jax import lora as lora_lib
from rl_jax import policy as policy_lib
from rl_jax.checkpoint import Checkpointer, CheckpointError
from rl_jax.metrics import MetricsWriter, Progress, format_duration, plot_rewards, read_jsonl
from rl_jax.sampling import SamplingConfig, generate
from rl_jax.step import Step
from rl_jax.tasks import Example

# Separate, fixed streams for the host-side data of each phase.
_SFT_STREAM, _RL_STREAM = 1, 2


def _print(msg: str) -> None:
  print(msg, flush=True)


@dataclasses.dataclass
class Experiment:
  """Everything built from a config before the first step: mesh, task, policy, the step."""

  config: config_lib.RunConfig
  mesh: Any
  task: Any
  policy: policy_lib.Policy
  step: Step
  tx: Any  # the RL optimizers (policy, critic or None)
  critic_tx: Any
  lora: Any = None  # lora.LoraConfig: RL trains adapters on the frozen warm-start weights

  @classmethod
  def build(cls, config, devices=None, *, task=None, rewards=None, algorithm=None, rollout=None):
    """The experiment `config` describes; `task`, `rewards`, `algorithm`, `rollout` objects
    (a notebook's) replace the config's components (which are then only recorded)."""
    c = config
    devices = list(jax.devices() if devices is None else devices)
    mesh = parallel.make_mesh(config_lib.mesh_shape(c.mesh, len(devices)), devices)
    _check_batch_divisible(c, parallel.batch_divisor(mesh))
    try:
      task = task if task is not None else tasks.build(c.task)
      policy = policy_lib.build(c.model, task)
      algo = algorithm if algorithm is not None else algorithms.build(c.algorithm)
      rewards_obj = _build_rewards(rewards, c, task)
    except ValueError as e:
      raise config_lib.ConfigError(str(e)) from None
    lora = config_lib.lora_config(c)
    if lora is not None and algo.critic:
      raise config_lib.ConfigError(
        "config field 'lora.rank': LoRA with a critic (PPO) is not "
        "supported yet; use lora.rank=0 or a critic-free algorithm"
      )
    settings = _rollout_settings(c, policy, task, mesh)
    rollout_fn = rollout(settings) if rollout is not None else rollouts.build(c.rollout, settings)

    def draw(step: int, rnd: int) -> list[Example]:  # data position = (step, round)
      rng = np.random.default_rng([c.seed, _RL_STREAM, step] + ([rnd] if rnd else []))
      return task.train_examples(rng, c.rl.prompts_per_step)

    t = c.train
    make_tx = lambda lr: trainer.make_optimizer(
      learning_rate=lr,
      warmup_steps=t.warmup_steps,
      weight_decay=t.weight_decay,
      max_grad_norm=t.max_grad_norm,
    )
    tx = make_tx(t.learning_rate)
    critic_tx = make_tx(t.critic_learning_rate or t.learning_rate) if algo.critic else None
    exp = cls(c, mesh, task, policy, None, tx, critic_tx, lora)
    exp.step = Step.create(
      policy,
      algo,
      rollout_fn,
      rewards_obj,
      draw,
      settings,
      tx,
      share_prompt=t.share_prompt,
      critic_tx=critic_tx,
      num_minibatches=t.num_minibatches,
      num_iterations=t.num_iterations,
      num_microbatches=t.num_microbatches,
      logits_chunk=t.logits_chunk,
      off_policy=t.async_rollout,
      state_sharding=exp.state_shardings(algo)[1],
      batch_sharding=parallel.batch_sharding(mesh),
      lora=lora,
      frozen_sharding=exp.param_shardings() if lora is not None else None,
    )
    return exp

  def shard(self, tree):
    return parallel.shard_batch(tree, self.mesh)

  def param_shardings(self):
    return parallel.param_shardings(
      self.policy.abstract_params(), self.mesh, self.policy.partition_rules
    )

  def rl_state(self, params):
    """The RL train state over `params` (the warm-start weights): trained directly, or (LoRA)
    through fresh adapters on them."""
    if self.lora is None:
      return self.init_state(params)[0]
    return self.init_state(lora_lib.init_adapters(params, self.lora, self.config.seed))[0]

  def state_shardings(self, algo, tx=None):
    """(init function, shardings) of a train state: the RL optimizers and critic (over the
    adapters under LoRA), or `tx` alone (the warm start, all parameters)."""
    warm_start = tx is not None
    critic_tx = None if warm_start else self.critic_tx
    tx = tx or self.tx
    d_model = self.policy.model_cfg.d_model

    def init(p):
      critic = None
      if critic_tx is not None:
        critic = logprobs.init_critic(p, d_model, shared_trunk=algo.shared_trunk)
      return trainer.init_state(p, tx, critic, critic_tx)

    trained = self.policy.abstract_params()
    if self.lora is not None and not warm_start:
      trained = jax.eval_shape(lambda p: lora_lib.init_adapters(p, self.lora), trained)
    abstract = jax.eval_shape(init, trained)
    return init, parallel.state_shardings(abstract, self.mesh, self.policy.partition_rules)

  def init_state(self, params, tx=None):
    """Train state at its shardings (RL optimizers, or `tx` alone for the warm start)."""
    init, shardings = self.state_shardings(self.step.algo, tx)
    return jax.jit(init, out_shardings=shardings)(params), shardings

  def evaluate(self, params, examples: list[Example]) -> dict[str, float]:
    """Greedy accuracy and mean task reward on `examples` (padded to the batch sharding)."""
    div = parallel.batch_divisor(self.mesh)
    padded = examples + examples[: (-len(examples)) % div]
    prompts = tokenizers.encode_left_padded(
      self.policy.tokenizer, [e.prompt for e in padded], self.step.settings.prompt_len
    )
    greedy = dataclasses.replace(self.step.settings.sampling, temperature=0.0, top_k=0, top_p=1)
    out = generate(
      self.policy.graphdef, params, *self.shard(prompts), jax.random.key(0), cfg=greedy
    )
    tokens, lengths = jax.device_get((out.tokens_NxT, out.lengths_N))
    texts = [self.policy.tokenizer.decode(row) for row in tokens[: len(examples)]]
    scores = self.task.score(examples, texts)
    result = dict(
      reward_mean=float(np.mean(scores["reward"])),
      n=len(examples),
      response_len_mean=float(lengths[: len(examples)].mean()),
    )
    if "correct" in scores:
      result["accuracy"] = float(np.mean(scores["correct"]))
    return result


def _rollout_settings(c, policy, task, mesh) -> rollouts.RolloutSettings:
  """The sampler, group size and prompt bucket of a run (defaults from the task's lengths)."""
  prompt_len, answer_len = task.max_lengths(policy.tokenizer)
  s = c.sampling
  sampling = SamplingConfig(
    max_new_tokens=s.max_new_tokens or answer_len,
    temperature=s.temperature,
    top_k=s.top_k,
    top_p=s.top_p,
    stop_ids=policy.stop_ids,
    pad_id=policy.pad_id,
    cache_phases=s.cache_phases,
    streams=s.streams,
  )
  return rollouts.RolloutSettings(
    sampling,
    c.rl.group_size,
    s.max_prompt_tokens or prompt_len,
    shard=lambda tree: parallel.shard_batch(tree, mesh),
  )


def _build_rewards(objects, c, task) -> rewards.Rewards:
  """The run's rewards: a `Rewards` object, a mapping {key: weight or (reward, weight)} with
  `"task"` for the verifier, or (None) the config's `rewards` section."""
  if objects is None:
    return rewards.build(c.rewards, task)
  if isinstance(objects, rewards.Rewards):
    return objects
  return rewards.from_objects(objects, task)


def _check_batch_divisible(c, div: int) -> None:
  if c.rl.prompts_per_step % div:
    raise config_lib.ConfigError(
      f"config field 'rl.prompts_per_step'={c.rl.prompts_per_step} must be a multiple "
      f"of the batch-sharding degree mesh.data * mesh.fsdp = {div}"
    )
  if c.sft.steps and c.sft.batch_size % div:
    raise config_lib.ConfigError(
      f"config field 'sft.batch_size'={c.sft.batch_size} must be a multiple of "
      f"mesh.data * mesh.fsdp = {div}"
    )


def warm_start(exp: Experiment, params, *, log: Callable[[str], None] = _print):
  """Supervised fine-tuning on the task's warm-start targets (train split only)."""
  c = exp.config.sft
  tx = trainer.make_optimizer(learning_rate=c.learning_rate, warmup_steps=c.warmup_steps)
  state, state_sh = exp.init_state(params, tx)
  step_fn = trainer.make_sft_step(
    exp.policy.graphdef,
    tx,
    state_sharding=state_sh,
    batch_sharding=parallel.batch_sharding(exp.mesh),
  )
  tok, P = exp.policy.tokenizer, exp.step.settings.prompt_len
  T = exp.step.settings.sampling.max_new_tokens
  t0, report = time.time(), max(1, c.steps // 5)
  for i in range(c.steps):
    examples = exp.task.train_examples(
      np.random.default_rng([exp.config.seed, _SFT_STREAM, i]), c.batch_size
    )
    prompts = tokenizers.encode_left_padded(tok, [e.prompt for e in examples], P)
    targets = tokenizers.encode_right_padded(
      tok, [tasks.sft_target(exp.task, e) for e in examples], T
    )
    state, m = step_fn(state, *exp.shard((*prompts, *targets)))
    if (i + 1) % report == 0 or i + 1 == c.steps:
      log(
        f"sft step {i + 1:5d}/{c.steps} | loss {float(m['loss']):.4f} | "
        f"{format_duration(time.time() - t0)}"
      )
  return state.params


def run(
  config: config_lib.RunConfig,
  workdir: str,
  *,
  log: Callable[[str], None] = _print,
  stream=sys.stdout,
  task=None,
  rewards=None,
  algorithm=None,
  rollout=None,
) -> dict[str, Any]:
  """Runs (or resumes) an RL experiment in `workdir`. Returns the final summary.

  `task`, `rewards`, `algorithm` and `rollout` take objects (a notebook's) in place of the
  config's components: a Task, a `Rewards` or {key: weight or (reward_fn, weight)}, an
  `Algorithm`, and a rollout factory `settings -> rollout_fn`."""
  t_start = time.time()
  config_lib.validate(config, jax.device_count())
  exp = Experiment.build(config, task=task, rewards=rewards, algorithm=algorithm, rollout=rollout)
  c, step = config, exp.step
  ckpt = Checkpointer(workdir, keep=c.checkpoint.keep, async_save=c.checkpoint.async_save)
  _check_resume(ckpt, config, workdir)
  writer = MetricsWriter(
    workdir, tensorboard=c.log.tensorboard, wandb_project=c.log.wandb_project, config=c.to_dict()
  )
  log(
    f"rl_jax: {step.algo.name} on {exp.task.name} | model {c.model.preset} "
    f"({exp.policy.model_cfg.num_params() / 1e6:.2f} M params) | {jax.device_count()} "
    f"{jax.devices()[0].platform} device(s), mesh {dict(exp.mesh.shape)} | workdir {workdir}"
  )
  heldout = exp.task.heldout_examples(c.eval.num_prompts)
  state, ref_params, root_key, start = _initial_state(exp, ckpt, writer, heldout, log)
  writer.truncate_from(start + 1)  # drop rows a crashed run logged after its last checkpoint

  # The steps. One-step-off mode: step n+1's rollout is collected in a background thread, from a
  # copy of the parameters before update n, while update n runs.
  keys = lambda n: jax.random.split(jax.random.fold_in(root_key, n))  # (sample, update) keys
  pool = concurrent.futures.ThreadPoolExecutor(1) if c.train.async_rollout else None
  pending = None
  progress = Progress(c.train.steps, stream=stream, every=c.log.progress_every)
  for n in range(start + 1, c.train.steps + 1):
    t0 = time.time()
    behaviour = step.policy_params(state, ref_params) if pending is None else pending[1]
    roll, roll_m = (
      step.collect(behaviour, n, keys(n)[0]) if pending is None else pending[0].result()
    )
    t_rollout = time.time() - t0
    if pool is not None and n < c.train.steps:
      nxt = step.policy_params(state, ref_params)
      if step.lora is None:  # the update donates the parameters: sample from a copy
        nxt = jax.tree.map(jnp.copy, nxt)
      pending = (pool.submit(step.collect, nxt, n + 1, keys(n + 1)[0]), nxt)
    t1 = time.time()
    state, m = step.learn(state, roll, ref_params, behaviour, keys(n)[1])
    t_update = time.time() - t1
    metrics = dict(
      **roll_m,
      **m,
      rollout_s=t_rollout,
      update_s=t_update,
      gen_tokens_per_s=roll_m["generated_tokens"] / max(t_rollout, 1e-9),
      step_s=time.time() - t0,
    )
    metrics["skipped_updates"] = int(metrics["skipped_updates"])
    writer.write(n, metrics)
    progress.update(n, metrics)
    _maybe_eval_and_save(exp, ckpt, writer, progress, state, ref_params, root_key, heldout, n)
  progress.close()
  if pool is not None:
    pool.shutdown()
  ckpt.close()
  writer.close()
  return _summary(workdir, t_start, log)


def _check_resume(ckpt: Checkpointer, config, workdir: str) -> None:
  """A run resumed in `workdir` must have the config its latest checkpoint was written with,
  except for the fields that may change (`config_lib.RESUMABLE_FIELDS`); the run's config is
  then recorded in `config.json`."""
  if ckpt.latest_step() is not None:
    saved = ckpt.read_meta().get("config", {})
    changed = config_lib.changed_fields(saved, config.to_dict())
    if changed:
      raise CheckpointError(
        f"{workdir} holds a run with another config: {', '.join(changed)} changed. Resume with "
        f"the same config (only {', '.join(config_lib.RESUMABLE_FIELDS)} may change), or use a "
        "new --workdir"
      )
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config_lib.to_json(config))


def _initial_state(exp: Experiment, ckpt, writer, heldout, log):
  """(state, reference params, root key, start step): resumed from the latest checkpoint, or
  warm-started (or loaded from reference/) and evaluated before RL."""
  c = exp.config
  params = exp.policy.init_params(c.seed, exp.mesh)
  root_key = jax.random.key(c.seed)
  start = ckpt.latest_step()
  if start is not None:
    state, root_key, meta = ckpt.restore(start, exp.rl_state(params), root_key)
    ref_params = ckpt.restore_reference(params)
    if meta.get("data_position") != start:
      raise CheckpointError(
        f"checkpoint step {start} has data position "
        f"{meta.get('data_position')}; the workdir is inconsistent"
      )
    log(f"resumed from checkpoint step {start} in {ckpt.directory}")
    return state, ref_params, root_key, start
  writer.truncate_from(0)  # a fresh run owns the workdir's logs
  if ckpt.has_reference():
    params = ckpt.restore_reference(params)
    log(f"warm start loaded from {ckpt.reference_dir}")
  else:
    if c.sft.steps:
      log(f"warm start: {c.sft.steps} supervised steps on the train split")
      params = warm_start(exp, params, log=log)
    ckpt.save_reference(params)
  state = exp.rl_state(params)
  before = exp.evaluate(exp.step.policy_params(state, params), heldout)
  writer.write_eval(0, before)
  log(f"held-out before RL: {_fmt_eval(before)}")
  return state, params, root_key, 0


def _maybe_eval_and_save(exp, ckpt, writer, progress, state, ref_params, root_key, heldout, n):
  c = exp.config
  if (c.eval.every and n % c.eval.every == 0) or n == c.train.steps:
    result = exp.evaluate(exp.step.policy_params(state, ref_params), heldout)
    writer.write_eval(n, result)
    progress.log(f"held-out at step {n}: {_fmt_eval(result)}")
  if n % c.checkpoint.every == 0 or n == c.train.steps:
    try:
      ckpt.save(n, state, root_key, dict(step=n, data_position=n, config=c.to_dict()))
    except CheckpointError as e:  # never replace a good checkpoint with a bad state
      progress.log(f"warning: {e}")


def _summary(workdir: str, t_start: float, log) -> dict[str, Any]:
  """Held-out accuracy before and after RL, the reward plot, and summary.json."""
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
  params = exp.policy.init_params(config.seed, exp.mesh)
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
  cd = config_lib.apply_overrides(ml_collections.ConfigDict(cd), overrides or {})
  config = config_lib.from_configdict(cd)
  exp = Experiment.build(config)
  ckpt = Checkpointer(workdir, keep=config.checkpoint.keep)
  params = exp.policy.init_params(config.seed, exp.mesh)
  if step is not None or ckpt.latest_step() is not None:
    reference = ckpt.restore_reference(params) if exp.lora is not None else params
    state, _, meta = ckpt.restore(step, exp.rl_state(params), jax.random.key(config.seed))
    params, source = exp.step.policy_params(state, reference), f"checkpoint step {meta['step']}"
  else:
    params, source = ckpt.restore_reference(params), "the warm-start reference policy"
  result = exp.evaluate(params, exp.task.heldout_examples(config.eval.num_prompts))
  log(f"{source}: held-out {_fmt_eval(result)}")
  ckpt.close()
  return result
