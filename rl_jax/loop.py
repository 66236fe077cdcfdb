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

from rl_jax import (
  algorithms,
  distributed,
  guards,
  logprobs,
  parallel,
  rewards,
  rollouts,
  storage,
  tasks,
  tokenizers,
  trainer,
)
from rl_jax import config as config_lib
from rl_jax import lora as lora_lib
from rl_jax import policy as policy_lib
from rl_jax.checkpoint import Checkpointer, CheckpointError, CheckpointStorageError
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
    sizes = config_lib.mesh_shape(c.mesh, len(devices))
    mesh = parallel.make_mesh(sizes, devices, dcn_data=c.mesh.dcn_data)
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
    masters = _master_weights(c)
    make_tx = lambda lr, master: trainer.make_optimizer(
      learning_rate=lr,
      warmup_steps=t.warmup_steps,
      weight_decay=t.weight_decay,
      max_grad_norm=t.max_grad_norm,
      master_weights=master,
    )
    tx = make_tx(t.learning_rate, masters and lora is None)  # LoRA's adapters are float32
    critic_lr = t.critic_learning_rate or t.learning_rate
    critic_tx = make_tx(critic_lr, masters) if algo.critic else None
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
      max_update_ratio=t.max_update_ratio,
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
    """Greedy accuracy, mean task reward and the mean of each other numeric component of the
    verifier (`<name>_mean`) on `examples` (padded to the batch sharding)."""
    div = parallel.batch_divisor(self.mesh)
    padded = examples + examples[: (-len(examples)) % div]
    prompts = tokenizers.encode_left_padded(
      self.policy.tokenizer, [e.prompt for e in padded], self.step.settings.prompt_len
    )
    greedy = dataclasses.replace(self.step.settings.sampling, temperature=0.0, top_k=0, top_p=1)
    out = generate(
      self.policy.graphdef, params, *self.shard(prompts), jax.random.key(0), cfg=greedy
    )
    tokens, lengths = distributed.fetch((out.tokens_NxT, out.lengths_N))
    texts = [self.policy.tokenizer.decode(row) for row in tokens[: len(examples)]]

    def score(rows: slice):  # this process's share of the rows (all of them in one process)
      part = rewards.call_with_timeout(
        "task", self.task.score, (examples[rows], texts[rows]), self.config.rl.reward_timeout_s
      )
      rewards.check_output("task", part, len(examples[rows]))
      return {k: np.asarray(v) for k, v in part.items()}

    scores = distributed.split_rows(score, len(examples))
    result = dict(
      reward_mean=float(np.mean(scores["reward"])),
      n=len(examples),
      response_len_mean=float(lengths[: len(examples)].mean()),
    )
    if "correct" in scores:
      result["accuracy"] = float(np.mean(scores["correct"]))
    for name, value in scores.items():  # the verifier's other components (process scores, ...)
      value = np.asarray(value)
      if name not in ("reward", "correct") and value.ndim == 1 and value.dtype.kind in "biuf":
        result[f"{name}_mean"] = float(np.mean(value))
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
  timeout = c.rl.reward_timeout_s
  if objects is None:
    return rewards.build(c.rewards, task, timeout)
  if isinstance(objects, rewards.Rewards):
    return objects
  return rewards.from_objects(objects, task, timeout)


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


def warm_start(
  exp: Experiment,
  params,
  *,
  log: Callable[[str], None] = _print,
  ckpt: Checkpointer | None = None,
  stop: guards.StopRequests | None = None,
):
  """Supervised fine-tuning on the task's warm-start targets (train split only). With `ckpt`,
  resumes from its newest warm-start checkpoint and saves one every `sft.checkpoint_every`
  steps; with `stop`, a signal ends it at a step boundary after a save (returns None)."""
  c = exp.config.sft
  tx = trainer.make_optimizer(
    learning_rate=c.learning_rate,
    warmup_steps=c.warmup_steps,
    master_weights=_master_weights(exp.config),
  )
  state, state_sh = exp.init_state(params, tx)
  step_fn = trainer.make_sft_step(
    exp.policy.graphdef,
    tx,
    max_update_ratio=exp.config.train.max_update_ratio,
    state_sharding=state_sh,
    batch_sharding=parallel.batch_sharding(exp.mesh),
  )
  first = 0
  found = ckpt.restore_warm(state, log) if ckpt is not None else None
  if found is not None:
    state, first = found
    log(f"warm start resumed from its checkpoint at step {first}")
  tok, P = exp.policy.tokenizer, exp.step.settings.prompt_len
  T = exp.step.settings.sampling.max_new_tokens
  t0, report = time.time(), max(1, c.steps // 5)
  skipped, since = int(state.skipped), first
  for i in range(first, c.steps):
    examples = exp.task.train_examples(
      np.random.default_rng([exp.config.seed, _SFT_STREAM, i]), c.batch_size
    )
    prompts = tokenizers.encode_left_padded(tok, [e.prompt for e in examples], P)
    targets = tokenizers.encode_right_padded(
      tok, [tasks.sft_target(exp.task, e) for e in examples], T
    )
    state, m = step_fn(state, *exp.shard((*prompts, *targets)))
    done = i + 1
    saving = ckpt is not None and c.checkpoint_every and done % c.checkpoint_every == 0
    if done % report == 0 or done == c.steps or saving:
      skipped, new = int(state.skipped), int(state.skipped) - skipped
      log(
        f"sft step {done:5d}/{c.steps} | loss {float(m['loss']):.4f} | "
        f"{format_duration(time.time() - t0)}"
      )
      if new:
        _check_sft_skips(exp.config, done, new, done - since, int(m["skip_reason"]), log)
      since = done
    stopping = stop is not None and done < c.steps and _stop_agreed(stop)  # else RL stops it
    if ckpt is not None and done < c.steps and (saving or stopping):
      ckpt.save_warm(done, state)
    if stopping:
      log(f"warm start stopped after step {done} (checkpoint saved)")
      return None
  return state.params


def _check_sft_skips(config, step: int, new: int, window: int, reason: int, log) -> None:
  """A warning for warm-start updates skipped in the last `window` steps; a TrainingDiverged
  when all were and they are at least `train.max_consecutive_skips`."""
  what = trainer.describe_skip(reason)
  limit = config.train.max_consecutive_skips
  if limit and new == window and new >= limit:
    raise guards.TrainingDiverged(
      f"stopped at sft step {step}: its last {new} updates were all skipped ({what}); lower "
      "sft.learning_rate or check the warm-start data (limit: train.max_consecutive_skips)"
    )
  log(f"warning: sft steps up to {step}: {new} of {window} updates skipped ({what})")


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
  allow_config_change: bool = False,
) -> dict[str, Any]:
  """Runs (or resumes) an RL experiment in `workdir`. Returns the final summary.

  `task`, `rewards`, `algorithm` and `rollout` take objects (a notebook's) in place of the
  config's components: a Task, a `Rewards` or {key: weight or (reward_fn, weight)}, an
  `Algorithm`, and a rollout factory `settings -> rollout_fn`.

  A resumed run must keep the config it was started with, except `config_lib.RESUMABLE_FIELDS`
  (or any field with `allow_config_change`). SIGTERM or SIGINT ends the run at the next step
  boundary with a checkpoint (the summary's `stopped` names the signal); a run whose updates
  keep being skipped as unsafe raises `guards.TrainingDiverged`."""
  t_start = time.time()
  if not distributed.is_primary():  # process 0 speaks and writes for a multi-process run
    log, stream = _silent, open(os.devnull, "w")  # noqa: SIM115 - lives as long as the run
  components = dict(task=task, rewards=rewards, algorithm=algorithm, rollout=rollout)
  exp, ckpt, changes = _open(config, workdir, components, allow_config_change, log)
  c, t = config, config.train
  writer = _writer(workdir, c)
  log(
    f"rl_jax: {exp.step.algo.name} on {exp.task.name} | model {c.model.preset} "
    f"({exp.policy.model_cfg.num_params() / 1e6:.2f} M params) | {jax.device_count()} "
    f"{jax.devices()[0].platform} device(s), mesh {dict(exp.mesh.shape)} | workdir {workdir}"
  )
  heldout = exp.task.heldout_examples(c.eval.num_prompts)
  guard = guards.SkipGuard(t.max_consecutive_skips, t.spike_factor, t.spike_window)
  with guards.StopRequests(log if distributed.is_primary() else _print) as stop:
    try:
      init = _initial_state(exp, ckpt, writer, heldout, log, stop)
      if init is None:  # stopped by a signal during the warm start (its checkpoint is saved)
        return _stopped(workdir, ckpt, writer, t_start, stop.requested, "a warm-start step", log)
      state, ref_params, root_key, start = init
      if start == t.steps:  # (the summary is written again: a kill may have come before it)
        log(
          f"{workdir} already holds the finished run (checkpoint step {start} = train.steps); "
          "nothing to do. Raise --config.train.steps to continue it"
        )
        ckpt.close()
        writer.close()
        return _summary(workdir, t_start, log, skipped_updates=int(state.skipped))
      _record_config(workdir, config, changes, start)
      writer.truncate_from(start + 1)  # drop rows a crashed run logged after its last checkpoint
      guard.resume(int(state.skipped), _recent_grad_norms(workdir, t.spike_window))
      progress = Progress(t.steps, stream=stream, every=c.log.progress_every)
      n = _steps(
        exp, ckpt, writer, progress, guard, stop, state, ref_params, root_key, heldout, start
      )
      progress.close()
      if stop.requested:
        return _stopped(workdir, ckpt, writer, t_start, stop.requested, f"step {n}", log)
    except guards.TrainingDiverged:
      _finish(workdir, ckpt, writer, dict(stopped="diverged", skipped_updates=guard.total))
      raise
  ckpt.close()
  writer.close()
  return _summary(workdir, t_start, log, skipped_updates=guard.total)


def _open(config, workdir: str, components: dict, allow_config_change: bool, log):
  """(experiment, checkpointer, config changes) of a run about to start or resume in
  `workdir`: everything checked before anything is written."""
  config_lib.validate(config, jax.device_count())
  if storage.exists(workdir) and not storage.isdir(workdir):
    raise config_lib.ConfigError(f"--workdir {workdir!r} is a file, not a directory")
  exp = Experiment.build(config, **components)
  c = config
  ckpt = Checkpointer(workdir, keep=c.checkpoint.keep, async_save=c.checkpoint.async_save)
  changes = _check_resume(ckpt, config, workdir, allow_config_change, log)
  latest = ckpt.latest_step()
  if latest is not None and latest > c.train.steps:
    raise CheckpointError(
      f"{workdir} holds checkpoint step {latest}, beyond train.steps={c.train.steps}: "
      f"nothing to resume. Raise --config.train.steps above {latest} to continue the run"
    )
  return exp, ckpt, changes


def _master_weights(c) -> bool:
  """Whether the optimizers keep float32 masters: parameters stored below float32."""
  return c.train.master_weights and c.model.param_dtype != "float32"


def _silent(msg: str) -> None:
  pass


class _NullWriter:
  """The metrics writer of a process that is not the primary one: writes nothing."""

  def __init__(self, workdir: str):
    self.workdir = workdir

  def write(self, step, metrics) -> None:
    pass

  write_eval = write

  def truncate_from(self, step) -> None:
    pass

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


def _writer(workdir: str, c):
  if not distributed.is_primary():
    return _NullWriter(workdir)
  return MetricsWriter(
    workdir, tensorboard=c.log.tensorboard, wandb_project=c.log.wandb_project, config=c.to_dict()
  )


def _stop_agreed(stop: guards.StopRequests) -> bool:
  """Whether to stop at this step boundary. With several processes: whether any process had
  been asked to before it reached the boundary (a signal may reach only one host of a pod),
  the same answer on every process; a signal that arrives meanwhile counts at the next one."""
  requested = stop.requested is not None
  if not distributed.is_multiprocess():
    return requested
  agreed = distributed.any_process(requested)
  if agreed and stop.requested is None:
    stop.requested = "a signal on another process"
  return agreed


def _steps(exp, ckpt, writer, progress, guard, stop, state, ref_params, root_key, heldout, start):
  """The RL steps from `start` + 1; returns the last step run (early when a signal asked the
  run to stop: that step is then checkpointed). One-step-off mode: step n+1's rollout is
  collected in a background thread, from a copy of the parameters before update n, while
  update n runs. With several processes it is collected before update n instead (the same
  parameters, so the same numbers): a second thread could issue collectives in a different
  order on different hosts."""
  step, t = exp.step, exp.config.train
  keys = lambda n: jax.random.split(jax.random.fold_in(root_key, n))  # (sample, update) keys
  pool = None
  if t.async_rollout:
    pool = _InlineExecutor() if distributed.is_multiprocess() else _thread_pool()
  pending, n = None, start
  try:
    for n in range(start + 1, t.steps + 1):
      t0 = time.time()
      behaviour = step.policy_params(state, ref_params) if pending is None else pending[1]
      roll, roll_m = (
        step.collect(behaviour, n, keys(n)[0]) if pending is None else pending[0].result()
      )
      pending = None
      t_rollout = time.time() - t0
      # (several processes: a signal is acted on only once agreed, at the step's end)
      keep_on = distributed.is_multiprocess() or stop.requested is None
      if pool is not None and n < t.steps and keep_on:
        nxt = step.policy_params(state, ref_params)
        if step.lora is None:  # the update donates the parameters: sample from a copy
          nxt = jax.tree.map(jnp.copy, nxt)
        pending = (pool.submit(step.collect, nxt, n + 1, keys(n + 1)[0]), nxt)
      t1 = time.time()
      limit = guard.grad_norm_limit()
      state, m = step.learn(state, roll, ref_params, behaviour, keys(n)[1], grad_norm_limit=limit)
      metrics = dict(
        **roll_m,
        **m,
        rollout_s=t_rollout,
        update_s=time.time() - t1,
        gen_tokens_per_s=roll_m["generated_tokens"] / max(t_rollout, 1e-9),
        step_s=time.time() - t0,
      )
      metrics["skipped_updates"] = int(metrics["skipped_updates"])
      metrics["skip_reason"] = int(metrics["skip_reason"])
      writer.write(n, metrics)
      progress.update(n, metrics)
      warning = guard.observe(n, metrics)  # raises TrainingDiverged after too many in a row
      if warning:
        progress.log(warning)
      saved = _maybe_eval_and_save(
        exp, ckpt, writer, progress, state, ref_params, root_key, heldout, n
      )
      ckpt.check()  # an asynchronous save's failure stops the run here, in one line
      if _stop_agreed(stop):
        if not saved:
          writer.flush()
          _save(exp, ckpt, progress, state, root_key, n)
        break
  finally:
    if pending is not None:  # a rollout in flight: let it end before the process does
      concurrent.futures.wait([pending[0]])
    if pool is not None:
      pool.shutdown()
  return n


def _thread_pool():
  return concurrent.futures.ThreadPoolExecutor(1)


class _InlineExecutor:
  """`submit` runs the call at once (multi-process one-step-off mode: a fixed order)."""

  def submit(self, fn, *args) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    future.set_result(fn(*args))
    return future

  def shutdown(self) -> None:
    pass


def _stopped(workdir, ckpt, writer, t_start, signal_name, where, log) -> dict[str, Any]:
  """The end of a run stopped by a signal: every save finished, summary.json saying where it
  stopped (the resumed run's own summary replaces it), a line saying how to resume."""
  ckpt.close()
  writer.close()
  summary = dict(stopped=signal_name, after=where, wall_s=time.time() - t_start, workdir=workdir)
  if distributed.is_primary():
    storage.write_text(storage.join(workdir, "summary.json"), json.dumps(summary, indent=2))
  log(
    f"stopped by {signal_name} after {where} ({format_duration(time.time() - t_start)}); "
    f"checkpoint saved. Run the same command (same --workdir={workdir}) to resume"
  )
  return summary


def _finish(workdir, ckpt, writer, summary: dict) -> None:
  """Closes a run that ends with an error: finished saves kept, summary.json says why."""
  try:
    ckpt.close()
  except CheckpointError:
    pass  # the error being raised matters more; the previous checkpoint is intact
  writer.close()
  if distributed.is_primary():
    storage.write_text(storage.join(workdir, "summary.json"), json.dumps(summary, indent=2))


def _check_resume(ckpt: Checkpointer, config, workdir: str, allow: bool, log) -> dict:
  """Compares the requested config with the one the workdir's run was written with (its
  newest checkpoint's, or config.json while a warm start is in progress), before anything is
  written. A change of a field outside `config_lib.RESUMABLE_FIELDS` is refused unless
  `allow`. Returns every change {field: (saved, requested)} (recorded by `_record_config`)."""
  saved = None
  if ckpt.latest_step() is not None:
    saved = ckpt.read_meta().get("config", {})
  elif ckpt.latest_warm_step() is not None:
    saved = _read_json(storage.join(workdir, "config.json"))
  if saved is None:
    return {}
  changes = config_lib.changed_fields(saved, config.to_dict())
  refused = [k for k in changes if not config_lib.resumable(k)]
  if refused and not allow:
    listed = ", ".join(f"{k} ({changes[k][0]!r} -> {changes[k][1]!r})" for k in refused)
    raise CheckpointError(
      f"{workdir} holds a run with another config: {listed}. Resume with the same config "
      f"(only {', '.join(config_lib.RESUMABLE_FIELDS)} may change), use a new --workdir, or "
      "pass --allow_config_change to resume with the change anyway"
    )
  if refused:
    log(f"warning: resuming with changed fields {', '.join(refused)} (--allow_config_change)")
  return changes


def _record_config(workdir: str, config, changes: dict, start: int) -> None:
  """Writes config.json (once the run has started or resumed) and appends each change of it
  to config_history.jsonl (process 0 of a multi-process run)."""
  if not distributed.is_primary():
    return
  path = storage.join(workdir, "config.json")
  previous = _read_json(path)
  if previous is not None:
    changes = {**config_lib.changed_fields(previous, config.to_dict()), **changes}
  if changes:
    row = dict(time=time.strftime("%Y-%m-%dT%H:%M:%S"), resumed_at_step=start, changed=changes)
    history = storage.join(workdir, "config_history.jsonl")
    storage.append_text(history, json.dumps(row, default=str) + "\n")
  storage.write_text(path, config_lib.to_json(config))


def _read_json(path: str):
  if not storage.exists(path):
    return None
  try:
    return json.loads(storage.read_text(path))
  except (OSError, ValueError):
    return None


def _recent_grad_norms(workdir: str, n: int) -> list[float]:
  """The last `n` logged gradient norms of steps whose update was applied (spike guard)."""
  path = storage.join(workdir, "metrics.jsonl")
  rows = read_jsonl(path) if storage.exists(path) else []
  norms = [r["grad_norm"] for r in rows if r.get("grad_norm") is not None]
  return norms[-n:]


def _initial_state(exp: Experiment, ckpt, writer, heldout, log, stop=None):
  """(state, reference params, root key, start step): resumed from the newest readable
  checkpoint, or warm-started (or loaded from reference/) and evaluated before RL. None when a
  signal stopped the warm start."""
  c = exp.config
  params = exp.policy.init_params(c.seed, exp.mesh)
  root_key = jax.random.key(c.seed)
  if ckpt.latest_step() is not None:
    found = ckpt.restore_newest(exp.rl_state(params), root_key, log)
    if found is not None:
      state, root_key, meta, start = found
      ref_params = ckpt.restore_reference(params)
      if meta.get("data_position") != start:
        raise CheckpointError(
          f"checkpoint step {start} has data position "
          f"{meta.get('data_position')}; the workdir is inconsistent"
        )
      log(f"resumed from checkpoint step {start} in {ckpt.directory}")
      return state, ref_params, root_key, start
  writer.truncate_from(0)  # a fresh run owns the workdir's logs
  _record_config(writer.workdir, c, {}, 0)
  if ckpt.has_reference():
    params = ckpt.restore_reference(params)
    log(f"warm start loaded from {ckpt.reference_dir}")
  else:
    if c.sft.steps:
      log(f"warm start: {c.sft.steps} supervised steps on the train split")
      params = warm_start(exp, params, log=log, ckpt=ckpt, stop=stop)
      if params is None:
        return None
    ckpt.save_reference(params)
    ckpt.clear_warm()
  state = exp.rl_state(params)
  before = exp.evaluate(exp.step.policy_params(state, params), heldout)
  writer.write_eval(0, before)
  log(f"held-out before RL: {_fmt_eval(before)}")
  return state, params, root_key, 0


def _maybe_eval_and_save(exp, ckpt, writer, progress, state, ref_params, root_key, heldout, n):
  """The step's held-out evaluation and checkpoint when they are due, in that order: a
  checkpoint is written only once everything its step logs is on disk (a run killed right
  after it resumes past that step). Returns whether a checkpoint was written."""
  c = exp.config
  if (c.eval.every and n % c.eval.every == 0) or n == c.train.steps:
    result = exp.evaluate(exp.step.policy_params(state, ref_params), heldout)
    writer.write_eval(n, result)
    progress.log(f"held-out at step {n}: {_fmt_eval(result)}")
  if n % c.checkpoint.every == 0 or n == c.train.steps:
    writer.flush()  # a bucket workdir: the step's rows are uploaded before its checkpoint
    return _save(exp, ckpt, progress, state, root_key, n)
  return False


def _save(exp, ckpt, progress, state, root_key, n) -> bool:
  try:
    ckpt.save(n, state, root_key, dict(step=n, data_position=n, config=exp.config.to_dict()))
    return True
  except CheckpointStorageError:
    raise
  except CheckpointError as e:  # never replace a good checkpoint with a bad state
    progress.log(f"warning: {e}")
    return False


def _summary(workdir: str, t_start: float, log, **extra) -> dict[str, Any]:
  """Held-out accuracy before and after RL, the reward plot, and summary.json (written by
  process 0 of a multi-process run; the others return what they know)."""
  if not distributed.is_primary():
    return dict(extra, wall_s=time.time() - t_start, workdir=workdir)
  evals = read_jsonl(storage.join(workdir, "eval.jsonl"))
  summary: dict[str, Any] = dict(extra)
  if evals:
    first, final = evals[0], evals[-1]
    summary.update(before=first, after=final, wall_s=time.time() - t_start, workdir=workdir)
    if "accuracy" in first and first["step"] == 0:
      log(
        f"held-out accuracy: {first['accuracy']:.1%} before RL -> {final['accuracy']:.1%} "
        f"after {final['step']} RL steps ({final['n']} prompts never trained on)"
      )
  plot_rewards(workdir)
  skipped = extra.get("skipped_updates", 0)
  log(
    f"done in {format_duration(time.time() - t_start)} ({skipped} update(s) skipped as unsafe); "
    f"metrics, checkpoints and reward.png in {workdir}"
  )
  storage.write_text(storage.join(workdir, "summary.json"), json.dumps(summary, indent=2))
  return summary


def _fmt_eval(e: dict) -> str:
  acc = f"accuracy {e['accuracy']:.1%} | " if "accuracy" in e else ""
  return f"{acc}reward {e['reward_mean']:.3f} | n {e['n']}"


def run_sft_only(
  config: config_lib.RunConfig,
  workdir: str,
  *,
  log: Callable[[str], None] = _print,
  allow_config_change: bool = False,
) -> dict[str, Any]:
  """`rl-jax sft`: the supervised warm start alone, saved as the workdir's reference policy.

  A later `rl-jax train` on the same workdir starts RL from it instead of warm-starting again.
  Checkpointed every `sft.checkpoint_every` steps and resumable; SIGTERM / SIGINT stop it at a
  step boundary after a save."""
  config_lib.validate(config, jax.device_count())
  if storage.exists(workdir) and not storage.isdir(workdir):
    raise config_lib.ConfigError(f"--workdir {workdir!r} is a file, not a directory")
  if not distributed.is_primary():
    log = _silent
  exp = Experiment.build(config)
  ckpt = Checkpointer(workdir)
  if ckpt.has_reference():
    raise CheckpointError(
      f"{ckpt.reference_dir} already holds a warm-start policy; use a new --workdir"
    )
  changes = _check_resume(ckpt, config, workdir, allow_config_change, log)
  storage.makedirs(workdir)
  _record_config(workdir, config, changes, 0)
  params = exp.policy.init_params(config.seed, exp.mesh)
  heldout = exp.task.heldout_examples(config.eval.num_prompts)
  before = exp.evaluate(params, heldout)
  log(f"held-out before SFT: {_fmt_eval(before)}")
  with guards.StopRequests(log) as stop:
    params = warm_start(exp, params, log=log, ckpt=ckpt, stop=stop)
  if params is None:
    ckpt.close()
    log(f"stopped by {stop.requested}; run the same command to resume the warm start")
    return dict(stopped=stop.requested)
  ckpt.save_reference(params)
  ckpt.clear_warm()
  after = exp.evaluate(params, heldout)
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
  path = storage.join(workdir, "config.json")
  if not storage.exists(path):
    raise CheckpointError(f"{workdir} has no config.json: is it an rl_jax workdir?")
  cd = json.loads(storage.read_text(path))
  cd = config_lib.apply_overrides(ml_collections.ConfigDict(cd), overrides or {})
  config = config_lib.from_configdict(cd)
  exp = Experiment.build(config)
  ckpt = Checkpointer(workdir, keep=config.checkpoint.keep)
  params = exp.policy.init_params(config.seed, exp.mesh)
  if step is not None or ckpt.latest_step() is not None:
    reference = ckpt.restore_reference(params) if exp.lora is not None else params
    key = jax.random.key(config.seed)
    if step is None:  # the newest readable checkpoint
      state, _, meta, _ = ckpt.restore_newest(exp.rl_state(params), key, log, move_aside=False)
    else:
      state, _, meta = ckpt.restore(step, exp.rl_state(params), key)
    params, source = exp.step.policy_params(state, reference), f"checkpoint step {meta['step']}"
  else:
    params, source = ckpt.restore_reference(params), "the warm-start reference policy"
  result = exp.evaluate(params, exp.task.heldout_examples(config.eval.num_prompts))
  log(f"{source}: held-out {_fmt_eval(result)}")
  ckpt.close()
  return result
