"""`rl-jax train | sft | eval`: run an experiment from a Python config file with overrides.

  rl-jax train [--config=experiments/default.py] [--workdir=DIR] [--config.FIELD=VALUE ...]
               [--allow_config_change]
  rl-jax sft   [...same flags...]        supervised warm start only; `train` on DIR continues
  rl-jax eval  --workdir=DIR [--step=N]  greedy held-out accuracy of a saved policy
  rl-jax checkpoints --workdir=DIR       list DIR's checkpoints: complete, corrupt, in progress
  rl-jax config [--config=...]           print the resolved config and exit
  rl-jax train-rm --data=RECORDS.jsonl --out=DIR [--config=...] [--init_from=WORKDIR]
                  [--rm.FIELD=VALUE ...] [--config.FIELD=VALUE ...]
                                         train + calibrate a quantile reward model (UARM) on
                                         JSONL records {prompt, completion, score}; the run
                                         config gives its model shape and tokenizer, WORKDIR's
                                         warm-start policy its initial trunk, --rm.FIELD any
                                         rl_jax.reward_model.TrainSettings field
  rl-jax bench [--workloads=w1,w2,w3] [--json=FILE]   the performance workloads (benchmarks/)

Running `train` again on a DIR that has checkpoints resumes from the newest readable one, with
the same config (only the fields in rl_jax.config.RESUMABLE_FIELDS may change, unless
--allow_config_change). Without --workdir a fresh run gets `runs/<experiment>-<date-time>`.
A workdir may be a bucket, --workdir=gs://BUCKET/PATH (pip install -e '.[gcs]').

SIGTERM or Ctrl-C stops `train` and `sft` at the next step boundary with a checkpoint (exit 0).

Several hosts: run the same command on every host (tpu/README.md). `train` and `sft` join a
multi-process run when JAX_COORDINATOR_ADDRESS (with JAX_NUM_PROCESSES and JAX_PROCESS_ID) or
--config.distributed.* name a coordinator, or on a detected TPU pod / SLURM / Open MPI launch;
--workdir is then required and must be a folder every host sees (or a bucket). A signal to
any host stops all of them at the same step.
Exit status: 0 done or stopped by a signal, 2 a bad config, flag or checkpoint (one line),
3 a run stopped as diverged (too many consecutive updates skipped as unsafe).

On Linux the command re-executes itself once under tcmalloc when it is installed (XLA:CPU's
per-call buffers are then reused instead of faulted in every step); RL_JAX_MALLOC=system turns
this off. See rl_jax/allocator.py.
"""

from __future__ import annotations

import os
import sys
import time

USAGE = __doc__

DEFAULT_CONFIG = os.path.join("experiments", "default.py")


def parse_args(argv: list[str]):
  """Returns (command, config_path, workdir, overrides, extra). Raises SystemExit on bad usage."""
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(USAGE)
    raise SystemExit(0 if argv else 2)
  command, rest = argv[0], argv[1:]
  if command == "bench":
    return command, None, None, {}, {"argv": rest}
  if command not in ("train", "sft", "eval", "config", "checkpoints", "train-rm"):
    raise SystemExit(f"rl-jax: unknown command {command!r}\n{USAGE}")
  config_path, workdir, overrides, extra = None, None, {}, {}
  i = 0
  while i < len(rest):
    arg = rest[i]
    if not arg.startswith("--"):
      raise SystemExit(f"rl-jax: unexpected argument {arg!r} (flags look like --name=value)")
    name, eq, value = arg[2:].partition("=")
    if name == "allow_config_change" and command in ("train", "sft"):
      if eq and value.lower() not in ("true", "1"):
        raise SystemExit(f"rl-jax: --allow_config_change takes no value, got {value!r}")
      extra["allow_config_change"] = True
      i += 1
      continue
    if not eq:  # "--name value"
      if i + 1 >= len(rest):
        raise SystemExit(f"rl-jax: flag --{name} needs a value")
      value, i = rest[i + 1], i + 1
    if name == "config":
      config_path = value
    elif name == "workdir":
      workdir = value
    elif name.startswith("config."):
      overrides[name[len("config.") :]] = value
    elif command == "train-rm" and name in ("data", "out", "init_from"):
      extra[name] = value
    elif command == "train-rm" and name.startswith("rm."):
      extra.setdefault("rm", {})[name[len("rm.") :]] = value
    elif name == "step" and command == "eval":
      if not value.isdigit():
        raise SystemExit(
          f"rl-jax eval: --step must be a checkpoint step (an integer), got {value!r}"
        )
      extra["step"] = int(value)
    else:
      raise SystemExit(f"rl-jax: unknown flag --{name} for {command!r}\n{USAGE}")
    i += 1
  return command, config_path, workdir, overrides, extra


def _default_config_path() -> str:
  if os.path.exists(DEFAULT_CONFIG):
    return DEFAULT_CONFIG
  from rl_jax.config import ConfigError

  raise ConfigError(
    f"no --config given and {DEFAULT_CONFIG} is not in the current directory; "
    "run from the repository root or pass --config=PATH"
  )


def resolve_config(config_path: str | None, overrides: dict[str, str]):
  from rl_jax import config as config_lib

  path = config_path or _default_config_path()
  cd = config_lib.load_config_file(path)
  cd = config_lib.apply_overrides(cd, overrides)
  return config_lib.from_configdict(cd), path


def main(argv: list[str] | None = None) -> int:
  if argv is None:  # the `rl-jax` command itself (not a call from Python): tcmalloc if installed
    argv = sys.argv[1:]
    from rl_jax import allocator

    allocator.reexecute_under_tcmalloc(argv)
  command, config_path, workdir, overrides, extra = parse_args(argv)
  if command == "bench":
    from rl_jax import bench

    return bench.main(extra["argv"])
  from rl_jax import config as config_lib
  from rl_jax import guards, rewards, storage
  from rl_jax.checkpoint import CheckpointError

  try:
    if workdir is not None:
      problem = storage.unusable(workdir)
      if problem:
        raise config_lib.ConfigError(f"--workdir {workdir!r}: {problem}")
      if storage.exists(workdir) and not storage.isdir(workdir):
        raise config_lib.ConfigError(f"--workdir {workdir!r} is a file, not a directory")
    if command == "checkpoints":
      if not workdir:
        raise SystemExit("rl-jax checkpoints: --workdir=DIR is required")
      if not storage.isdir(workdir):
        raise CheckpointError(f"{workdir} does not exist")
      from rl_jax import checkpoint

      checkpoint.describe(workdir)
      return 0
    if command == "eval":
      if not workdir:
        raise SystemExit("rl-jax eval: --workdir=DIR is required")
      from rl_jax import loop

      loop.evaluate_workdir(workdir, overrides, step=extra.get("step"))
      return 0
    cfg, path = resolve_config(config_path, overrides)
    if command == "train-rm":
      return train_rm(cfg, extra)
    if command == "config":
      print(config_lib.to_json(cfg))
      return 0
    from rl_jax import distributed

    config_lib.validate(cfg)  # before joining other processes: a bad value fails alone, fast
    try:
      multiprocess = distributed.initialize(cfg.distributed)
    except ValueError as e:
      raise config_lib.ConfigError(f"config field 'distributed': {e}") from None
    if multiprocess and workdir is None:
      raise config_lib.ConfigError(
        "a multi-process run needs --workdir (the same shared folder on every host)"
      )
    if workdir is None:
      stem = os.path.splitext(os.path.basename(path))[0]
      workdir = os.path.join("runs", f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    from rl_jax import loop

    allow = extra.get("allow_config_change", False)
    if command == "sft":
      loop.run_sft_only(cfg, workdir, allow_config_change=allow)
    else:
      loop.run(cfg, workdir, allow_config_change=allow)
    return 0
  except (config_lib.ConfigError, CheckpointError, rewards.RewardError) as e:
    print(f"rl-jax {command}: error: {e}", file=sys.stderr)
    return 2
  except ValueError as e:  # bad records or settings (train-rm): one line, not a traceback
    if command != "train-rm":
      raise
    print(f"rl-jax {command}: error: {e}", file=sys.stderr)
    return 2
  except guards.TrainingDiverged as e:
    print(f"rl-jax {command}: error: {e}", file=sys.stderr)
    return guards.DIVERGED_EXIT


def _rm_settings(values: dict[str, str]):
  """`reward_model.TrainSettings` from --rm.FIELD=VALUE flags (strings converted to each
  field's type); ValueError naming a bad field or value."""
  import dataclasses

  from rl_jax import reward_model

  fields = {f.name: f for f in dataclasses.fields(reward_model.TrainSettings)}
  kwargs = {}
  for name, value in values.items():
    if name not in fields:
      raise ValueError(f"--rm.{name}: no such setting; choose one of {sorted(fields)}")
    kind = type(fields[name].default)
    try:
      kwargs[name] = kind(value)
    except ValueError:
      raise ValueError(f"--rm.{name}={value!r} is not a valid {kind.__name__}") from None
  return reward_model.TrainSettings(**kwargs)


def train_rm(cfg, extra: dict) -> int:
  """`rl-jax train-rm`: train and calibrate a quantile reward model and save it to --out."""
  from rl_jax import checkpoint, reward_model, tasks
  from rl_jax import policy as policy_lib

  if not extra.get("data") or not extra.get("out"):
    raise ValueError("rl-jax train-rm needs --data=RECORDS.jsonl and --out=DIR")
  settings = _rm_settings(extra.get("rm", {}))
  records = reward_model.load_records(extra["data"])
  policy = policy_lib.build(cfg.model, tasks.build(cfg.task))
  spec = reward_model.tokenizer_spec(policy.tokenizer, cfg.model.tokenizer)
  for i, r in enumerate(records):  # every text must be encodable (a clear error, not a crash)
    try:
      policy.tokenizer.encode(r.prompt + r.completion)
    except ValueError as e:
      raise ValueError(f"{extra['data']}: record {i}: {e}") from None
  policy_params = None
  if extra.get("init_from"):
    ckpt = checkpoint.Checkpointer(extra["init_from"])
    policy_params = ckpt.restore_reference(policy.init_params(cfg.seed))
    ckpt.close()
    print(f"trunk initialised from the warm-start policy in {extra['init_from']}", flush=True)
  model = reward_model.train(
    records,
    model_cfg=policy.model_cfg,
    tokenizer_spec=spec,
    settings=settings,
    policy_params=policy_params,
    log=lambda m: print(m, flush=True),
  )
  model.save(extra["out"])
  cal = model.report["calibration"]
  print(
    f"saved to {extra['out']}: calibration coverage {cal['coverage']:.1%} on {cal['n']} "
    f"records, mean interval width {cal['mean_width']:.3f} (serve it with "
    f"--config.rewards.rm.name=reward_model --config.rewards.rm.path={extra['out']})"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
