"""The run configuration: `ml_collections.ConfigDict` in experiment files, frozen and validated
dataclasses inside the program.

`experiments/<name>.py` defines `get_config()`; the CLI applies `--config.a.b=value` overrides;
`from_configdict` turns the result into `RunConfig`, rejecting unknown fields and bad values
with a message that names the field, before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import math
import os
import typing
from typing import Any

import ml_collections
from ml_collections import config_dict

from rl_jax.components import Component, ComponentError


class ConfigError(ComponentError):
  """A config field is unknown or has an invalid value; the message names the field."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  preset: str = "tiny"
  d_model: int | None = None
  num_layers: int | None = None
  num_heads: int | None = None
  num_kv_heads: int | None = None
  head_dim: int | None = None
  mlp_dim: int | None = None
  remat: bool = False  # rematerialise each block in the backward pass (memory for compute)
  attention: str = "einsum"  # or "fused": jax.nn.dot_product_attention (cuDNN on GPUs)
  family: str = "embedded"  # model family (rl_jax.policy.FAMILIES): embedded, hf
  path: str | None = None  # family hf: a local Hugging Face checkpoint folder
  dtype: str = "float32"  # activations and matmuls: float32, or bfloat16 (mixed precision)
  param_dtype: str = "float32"  # stored parameters (float32 masters: train.master_weights)
  tokenizer: str = "char"  # "char" (from the task's alphabet) or a folder with tokenizer.json
  chat_template: bool | None = None  # None: use the tokenizer's chat template if it has one


@dataclasses.dataclass(frozen=True)
class SFTConfig:
  steps: int = 0  # supervised warm-start steps before RL (0 = start RL from scratch)
  batch_size: int = 64
  learning_rate: float = 1e-3
  warmup_steps: int = 20
  checkpoint_every: int = 250  # warm-start steps between checkpoints (0 = none; resumable)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 100  # RL steps
  learning_rate: float = 3e-4
  warmup_steps: int = 0
  weight_decay: float = 0.0
  max_grad_norm: float = 1.0
  num_minibatches: int = 1  # optimizer steps per epoch over a rollout batch
  num_iterations: int = 1  # epochs over each rollout batch (mu in the GRPO paper)
  num_microbatches: int = 1  # gradient accumulation inside a minibatch (exact, memory only)
  critic_learning_rate: float | None = None  # PPO critic (None = learning_rate)
  share_prompt: bool = True  # compute each group's prompt once in the update and log-prob passes
  logits_chunk: int = 0  # > 0: log-softmax over this many completion positions at a time
  # model.param_dtype bfloat16: the optimizer updates float32 master copies (in its state; its
  # moments float32 too) and the stored weights are their rounding. False: bfloat16 throughout.
  master_weights: bool = True
  async_rollout: bool = False  # one-step-off: sample step n+1 while step n's update runs
  # Divergence guards (rl_jax.trainer.apply_gradients): an unsafe update is skipped with a warning.
  max_update_ratio: float = 1.0  # skip an update moving params by > this x their norm (0 = off)
  spike_factor: float = 0.0  # skip when grad norm > this x median of recent steps' (0 = off)
  spike_window: int = 20  # steps in that running median
  max_consecutive_skips: int = 5  # stop the run (exit 3) after this many steps in a row skip


@dataclasses.dataclass(frozen=True)
class RLConfig:
  group_size: int = 8  # G samples per prompt
  prompts_per_step: int = 32  # B prompts per step
  reward_timeout_s: float = 600.0  # a reward taking longer on one batch stops the run (0 = none)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  max_new_tokens: int | None = None  # None = the task's longest answer
  max_prompt_tokens: int | None = None  # the prompt bucket; None = the task's longest prompt
  cache_phases: int = 4  # decode in up to this many phases with a growing KV cache (1 = off)
  streams: int = 0  # CPU: concurrent decode streams (threads); 0 = auto (2 on >= 2 cores)


@dataclasses.dataclass(frozen=True)
class LoraSection:
  rank: int = 0  # > 0: train LoRA adapters of this rank on frozen weights (0 = full training)
  alpha: float = 32.0  # the adapters' scale is alpha / rank
  targets: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  every: int = 50  # RL steps between held-out evaluations (0 = only before and after)
  num_prompts: int = 512


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  every: int = 50  # RL steps between checkpoints (the last step is always saved)
  keep: int = 3
  async_save: bool = True


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  data: int = -1  # -1 = all devices left over
  fsdp: int = 1
  tensor: int = 1
  # Multi-slice (or multi-node GPU) runs: the data axis is split into `dcn_data` outer replicas,
  # one per slice (granule), so that only the data-parallel gradient reduction crosses the
  # data-centre network. 1 = one slice.
  dcn_data: int = 1


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  """Multi-process runs (`rl_jax.distributed`): every host runs the same command.

  initialize: "auto" joins a multi-process run when a coordinator is given (here or in
    JAX_COORDINATOR_ADDRESS) or a multi-host cluster is detected (TPU pod slice, SLURM, Open
    MPI); "on" always calls `jax.distributed.initialize` (JAX detects the rest); "off" never.
  coordinator_address: "host:port" of process 0 (default: JAX_COORDINATOR_ADDRESS).
  num_processes, process_id: default JAX_NUM_PROCESSES / JAX_PROCESS_ID, else detected.
  initialization_timeout_s: how long every process waits for all the others to join.
  heartbeat_timeout_s: how long a silent process may go unheard before the coordinator
    declares it dead and the run stops on every host (raise it when a host pauses for long,
    e.g. a slow checkpoint filesystem). 0 for either keeps JAX's default (300 s and 100 s).
  """

  initialize: str = "auto"
  coordinator_address: str = ""
  num_processes: int = 0  # 0 = from the environment or detected
  process_id: int = -1  # -1 = from the environment or detected
  initialization_timeout_s: int = 0  # 0 = JAX's default
  heartbeat_timeout_s: int = 0  # 0 = JAX's default


@dataclasses.dataclass(frozen=True)
class LogConfig:
  tensorboard: bool = True
  wandb_project: str | None = None
  progress_every: int = 1


@dataclasses.dataclass(frozen=True)
class RunConfig:
  seed: int = 0
  model: ModelConfig = ModelConfig()
  task: Component = Component.of("arithmetic")
  rollout: Component = Component.of("group")
  rewards: tuple[tuple[str, Component], ...] = (("task", Component.of("task", weight=1.0)),)
  sft: SFTConfig = SFTConfig()
  train: TrainConfig = TrainConfig()
  rl: RLConfig = RLConfig()
  sampling: SamplingConfig = SamplingConfig()
  algorithm: Component = Component.of("grpo")
  lora: LoraSection = LoraSection()
  eval: EvalConfig = EvalConfig()
  checkpoint: CheckpointConfig = CheckpointConfig()
  mesh: MeshConfig = MeshConfig()
  distributed: DistributedConfig = DistributedConfig()
  log: LogConfig = LogConfig()

  def to_dict(self) -> dict[str, Any]:
    return _to_plain(self)


# Sections that name a component (`name` plus the component's own keyword arguments).
COMPONENT_SECTIONS = ("task", "rollout", "algorithm")


def _to_plain(value):
  if isinstance(value, Component):
    return value.to_dict()
  if dataclasses.is_dataclass(value):
    out = {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, RunConfig):
      out["rewards"] = {k: c.to_dict() for k, c in value.rewards}
    return out
  return value


def default_configdict() -> ml_collections.ConfigDict:
  """Every field with its default, as a ConfigDict (optional fields as typed placeholders)."""
  return _to_configdict(RunConfig())


def _to_configdict(dc) -> ml_collections.ConfigDict:
  out = ml_collections.ConfigDict()
  hints = typing.get_type_hints(type(dc))
  for f in dataclasses.fields(dc):
    value = getattr(dc, f.name)
    if isinstance(value, Component):
      out[f.name] = ml_collections.ConfigDict(value.to_dict())
    elif f.name == "rewards" and isinstance(dc, RunConfig):
      out[f.name] = ml_collections.ConfigDict({k: c.to_dict() for k, c in value})
    elif dataclasses.is_dataclass(value):
      out[f.name] = _to_configdict(value)
    elif value is None:
      out[f.name] = config_dict.placeholder(_inner_type(hints[f.name]))
    else:
      out[f.name] = value
  return out


def _inner_type(hint):
  args = [a for a in typing.get_args(hint) if a is not type(None)]
  return args[0] if args else hint


def _check_value(path: str, value, hint):
  optional = type(None) in typing.get_args(hint)
  base = _inner_type(hint)
  if value is None:
    if optional:
      return None
    raise ConfigError(f"config field {path!r} must not be None")
  if base is float and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if base is int and isinstance(value, float) and value.is_integer():
    return int(value)
  if base in (int, float) and isinstance(value, bool):
    raise ConfigError(f"config field {path!r} must be {base.__name__}, got {value!r}")
  if not isinstance(value, base):
    raise ConfigError(
      f"config field {path!r} must be {base.__name__}, got {type(value).__name__} {value!r}"
    )
  return value


def _build(cls, data, prefix: str):
  if isinstance(data, ml_collections.ConfigDict):
    data = data.to_dict()
  if not isinstance(data, dict):
    raise ConfigError(f"config field {prefix.rstrip('.')!r} must be a section, got {data!r}")
  hints = typing.get_type_hints(cls)
  names = [f.name for f in dataclasses.fields(cls)]
  kwargs = {}
  for key, value in data.items():
    path = prefix + key
    if key not in names:
      close = difflib.get_close_matches(key, names, n=1)
      hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
      raise ConfigError(
        f"unknown config field {path!r}{hint}; known fields of "
        f"{prefix.rstrip('.') or 'the config'}: {', '.join(names)}"
      )
    target = hints[key]
    if target is Component:
      kwargs[key] = _component(value, path)
    elif cls is RunConfig and key == "rewards":
      kwargs[key] = _rewards(value)
    elif dataclasses.is_dataclass(target):
      kwargs[key] = _build(target, value, path + ".")
    else:
      kwargs[key] = _check_value(path, value, target)
  return cls(**kwargs)


def _plain(data):
  return data.to_dict() if isinstance(data, ml_collections.ConfigDict) else data


def _component(data, path: str, default_name: str | None = None) -> Component:
  data = _plain(data)
  if not isinstance(data, dict):
    raise ConfigError(f"config field {path!r} must be a section with a 'name', got {data!r}")
  data = dict(data)
  name = data.pop("name", default_name)
  if not isinstance(name, str) or not name:
    raise ConfigError(f"config field '{path}.name' must name a component, got {name!r}")
  return Component.of(name, **data)


def _rewards(data) -> tuple[tuple[str, Component], ...]:
  """`rewards.<key>`: a reward named `name` (default: the key) with a `weight` (default 1)."""
  data = _plain(data)
  if not isinstance(data, dict) or not data:
    raise ConfigError(f"config field 'rewards' must be a non-empty section, got {data!r}")
  out = []
  for key, value in sorted(data.items()):
    comp = _component(value, f"rewards.{key}", default_name=key)
    weight = comp.args.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float | str):
      raise ConfigError(f"config field 'rewards.{key}.weight' must be a number, got {weight!r}")
    try:
      weight = float(weight)
    except ValueError:
      raise ConfigError(
        f"config field 'rewards.{key}.weight' must be a number, got {weight!r}"
      ) from None
    out.append((key, Component.of(comp.name, **dict(comp.args, weight=weight))))
  return tuple(out)


def from_configdict(cfg: ml_collections.ConfigDict | dict) -> RunConfig:
  """Converts and validates a config. Raises ConfigError naming the offending field."""
  run = _build(RunConfig, cfg, "")
  run = _check_components(run)
  validate(run)
  return run


def _check_components(c: RunConfig) -> RunConfig:
  """Components check their own keyword arguments (names and types, converted from strings)
  against their signatures: the algorithm is built (cheap), tasks, rollouts and rewards only
  checked (no file is read)."""
  from rl_jax import algorithms, rewards, rollouts, tasks  # local: config is imported by all

  try:
    return dataclasses.replace(
      c,
      algorithm=algorithms.check(c.algorithm),
      task=tasks.check(c.task),
      rollout=rollouts.check(c.rollout),
      rewards=rewards.check(c.rewards),
    )
  except (ValueError, NotImplementedError) as e:
    raise ConfigError(str(e)) from None


def _require(cond: bool, field: str, msg: str):
  if not cond:
    raise ConfigError(f"config field {field!r} {msg}")


# Held-out prompts are generated and decoded in one batch: a bound keeps a typo from growing
# memory without limit.
MAX_EVAL_PROMPTS = 100_000


def _check_finite(obj, prefix: str = "") -> None:
  """Every float field of the config is finite (inf or nan is never a meaningful setting)."""
  for f in dataclasses.fields(obj):
    value, name = getattr(obj, f.name), f"{prefix}{f.name}"
    if dataclasses.is_dataclass(value):
      _check_finite(value, f"{name}.")
    elif isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(f"config field {name!r} must be a finite number, got {value}")


def validate(c: RunConfig, num_devices: int | None = None) -> None:
  """Value checks that need no device; with `num_devices`, also the mesh shape."""
  _check_finite(c)
  _require(c.seed >= 0, "seed", f"must be >= 0, got {c.seed}")
  _require(c.train.steps >= 0, "train.steps", f"must be >= 0, got {c.train.steps}")
  _require(c.sft.steps >= 0, "sft.steps", f"must be >= 0, got {c.sft.steps}")
  _require(c.sft.batch_size >= 1, "sft.batch_size", f"must be >= 1, got {c.sft.batch_size}")
  _require(
    c.rl.group_size >= 2,
    "rl.group_size",
    f"must be >= 2 (group-relative advantages need two samples), got {c.rl.group_size}",
  )
  _require(
    c.rl.prompts_per_step >= 1, "rl.prompts_per_step", f"must be >= 1, got {c.rl.prompts_per_step}"
  )
  for name in ("learning_rate",):
    _require(getattr(c.train, name) > 0, f"train.{name}", "must be > 0")
    _require(getattr(c.sft, name) > 0, f"sft.{name}", "must be > 0")
  _require(c.train.num_minibatches >= 1, "train.num_minibatches", "must be >= 1")
  _require(c.train.num_iterations >= 1, "train.num_iterations", "must be >= 1")
  n = c.rl.group_size * c.rl.prompts_per_step
  _require(
    n % c.train.num_minibatches == 0,
    "train.num_minibatches",
    f"={c.train.num_minibatches} must divide the {n} sequences of a step "
    f"(rl.prompts_per_step * rl.group_size)",
  )
  _require(c.train.num_microbatches >= 1, "train.num_microbatches", "must be >= 1")
  _require(
    c.train.logits_chunk >= 0,
    "train.logits_chunk",
    f"must be >= 0 (0 = off), got {c.train.logits_chunk}",
  )
  _require(
    (n // c.train.num_minibatches) % c.train.num_microbatches == 0,
    "train.num_microbatches",
    f"={c.train.num_microbatches} must divide the {n // c.train.num_minibatches} "
    f"sequences of a minibatch",
  )
  _require(c.eval.every >= 0, "eval.every", f"must be >= 0, got {c.eval.every}")
  _require(
    1 <= c.eval.num_prompts <= MAX_EVAL_PROMPTS,
    "eval.num_prompts",
    f"must be in [1, {MAX_EVAL_PROMPTS}], got {c.eval.num_prompts}",
  )
  _validate_guards(c)
  _require(c.checkpoint.every >= 1, "checkpoint.every", f"must be >= 1, got {c.checkpoint.every}")
  _require(c.checkpoint.keep >= 1, "checkpoint.keep", f"must be >= 1, got {c.checkpoint.keep}")
  _require(
    c.sampling.temperature > 0,
    "sampling.temperature",
    f"must be > 0 for RL sampling, got {c.sampling.temperature}",
  )
  _validate_sampling_and_model(c)
  _require(c.log.progress_every >= 1, "log.progress_every", "must be >= 1")
  for axis in ("data", "fsdp", "tensor"):
    size = getattr(c.mesh, axis)
    _require(size == -1 or size >= 1, f"mesh.{axis}", f"must be -1 or >= 1, got {size}")
  _require(
    [c.mesh.data, c.mesh.fsdp, c.mesh.tensor].count(-1) <= 1,
    "mesh",
    "may have at most one axis set to -1",
  )
  _require(c.mesh.dcn_data >= 1, "mesh.dcn_data", f"must be >= 1, got {c.mesh.dcn_data}")
  _require(
    c.distributed.initialize in ("auto", "on", "off"),
    "distributed.initialize",
    f"must be 'auto', 'on' or 'off', got {c.distributed.initialize!r}",
  )
  for name in ("initialization_timeout_s", "heartbeat_timeout_s"):
    value = getattr(c.distributed, name)
    _require(value >= 0, f"distributed.{name}", f"must be >= 0 (0 = JAX's default), got {value}")
  _require(c.lora.rank >= 0, "lora.rank", f"must be >= 0 (0 = off), got {c.lora.rank}")
  try:
    lora_config(c)
  except ValueError as e:
    raise ConfigError(f"config field {e}") from None
  _check_components(c)
  if num_devices is not None:
    mesh_shape(c.mesh, num_devices)


def _check_embedded_shape(m: ModelConfig) -> None:
  from rl_jax.models import transformer  # local: config is imported by all

  _require(
    m.preset in transformer.PRESETS,
    "model.preset",
    f"is unknown: {m.preset!r}; choose one of {sorted(transformer.PRESETS)}",
  )
  fields = ("d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim")
  overrides = {k: getattr(m, k) for k in fields if getattr(m, k) is not None}
  for k, v in overrides.items():
    _require(v >= 1, f"model.{k}", f"must be >= 1, got {v}")
  try:
    transformer.preset(m.preset, 256, **overrides)  # any vocabulary: the shape checks
  except (ValueError, TypeError) as e:
    raise ConfigError(f"config field {e}") from None


def _validate_guards(c: RunConfig) -> None:
  """The reliability settings: divergence guards, warm-start checkpoints, the reward limit."""
  _require(c.train.max_update_ratio >= 0, "train.max_update_ratio", "must be >= 0 (0 = off)")
  _require(
    c.train.spike_factor == 0 or c.train.spike_factor > 1,
    "train.spike_factor",
    f"must be 0 (off) or > 1, got {c.train.spike_factor}",
  )
  _require(c.train.spike_window >= 1, "train.spike_window", "must be >= 1")
  _require(
    c.train.max_consecutive_skips >= 0, "train.max_consecutive_skips", "must be >= 0 (0 = never)"
  )
  _require(c.sft.checkpoint_every >= 0, "sft.checkpoint_every", "must be >= 0 (0 = none)")
  _require(c.rl.reward_timeout_s >= 0, "rl.reward_timeout_s", "must be >= 0 (0 = no limit)")


def _validate_sampling_and_model(c: RunConfig) -> None:
  from rl_jax.models.transformer import ATTENTION_IMPLS  # local: config is imported by all
  from rl_jax.sampling import SamplingConfig as Sampler

  for field in ("dtype", "param_dtype"):
    value = getattr(c.model, field)
    _require(
      value in ("float32", "bfloat16"),
      f"model.{field}",
      f"must be 'float32' or 'bfloat16', got {value!r}",
    )
  _require(
    c.model.attention in ATTENTION_IMPLS,
    "model.attention",
    f"must be one of {ATTENTION_IMPLS}, got {c.model.attention!r}",
  )
  if c.model.family == "embedded":  # the preset and its shape, before anything is built
    _check_embedded_shape(c.model)

  try:  # the sampler checks its own fields
    s = c.sampling
    max_new = 1 if s.max_new_tokens is None else s.max_new_tokens
    Sampler(
      max_new_tokens=max_new,
      temperature=s.temperature,
      top_k=s.top_k,
      top_p=s.top_p,
      cache_phases=s.cache_phases,
      streams=s.streams,
    )
  except ValueError as e:
    raise ConfigError(f"config field {e}") from None
  if c.sampling.max_prompt_tokens is not None:
    _require(c.sampling.max_prompt_tokens >= 1, "sampling.max_prompt_tokens", "must be >= 1")


def mesh_shape(m: MeshConfig, num_devices: int) -> dict[str, int]:
  """Resolves -1 and checks that the mesh uses exactly the available devices."""
  sizes = {"data": m.data, "fsdp": m.fsdp, "tensor": m.tensor}
  fixed = 1
  for v in sizes.values():
    fixed *= v if v != -1 else 1
  for axis, v in sizes.items():
    if v == -1:
      if num_devices % fixed:
        raise ConfigError(
          f"config field 'mesh.{axis}' cannot be inferred: the other axes "
          f"({fixed} devices) do not divide the {num_devices} devices"
        )
      sizes[axis] = num_devices // fixed
  total = sizes["data"] * sizes["fsdp"] * sizes["tensor"]
  if total != num_devices:
    raise ConfigError(
      f"config field 'mesh' (data={sizes['data']}, fsdp={sizes['fsdp']}, "
      f"tensor={sizes['tensor']}) uses {total} devices but {num_devices} are "
      f"available; set one axis to -1 or make the product {num_devices}"
    )
  if sizes["data"] % m.dcn_data:
    raise ConfigError(
      f"config field 'mesh.dcn_data'={m.dcn_data} must divide mesh.data={sizes['data']} "
      "(each slice holds mesh.data / mesh.dcn_data data-parallel replicas)"
    )
  return sizes


# ---------------------------------------------------------------------------------------------
# Experiment files and command-line overrides.


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """Imports `path` and calls its `get_config()` (a ConfigDict, or a plain dict). Any failure
  of the file is a ConfigError naming the file and line."""
  if not os.path.exists(path):
    raise ConfigError(f"config file {path!r} does not exist")
  if os.path.isdir(path):
    raise ConfigError(f"config file {path!r} is a directory")
  spec = importlib.util.spec_from_file_location("_rl_jax_experiment", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
      raise ConfigError(f"config file {path!r} defines no get_config()")
    cfg = module.get_config()
  except ConfigError:
    raise
  except SyntaxError as e:
    raise ConfigError(f"config file {path!r} line {e.lineno}: syntax error: {e.msg}") from None
  except Exception as e:  # noqa: BLE001 - the user's file: any error is reported in one line
    raise ConfigError(f"config file {path!r}{_line_in(path, e)}: {type(e).__name__}: {e}") from None
  if isinstance(cfg, dict):
    cfg = ml_collections.ConfigDict(cfg)
  if not isinstance(cfg, ml_collections.ConfigDict):
    raise ConfigError(
      f"config file {path!r}: get_config() must return an ml_collections.ConfigDict or a dict, "
      f"got {type(cfg).__name__}"
    )
  return cfg


def _line_in(path: str, error: BaseException) -> str:
  """' line N' of the deepest frame of `error`'s traceback that is in `path`, or ''."""
  import traceback  # local: only on errors

  frames = traceback.extract_tb(error.__traceback__)
  lines = [
    f.lineno for f in frames if os.path.exists(f.filename) and os.path.samefile(f.filename, path)
  ]
  return f" line {lines[-1]}" if lines else ""


def _parse_scalar(path: str, raw: str, current, hint):
  base = _inner_type(hint)
  if raw.lower() in ("none", "null") and type(None) in typing.get_args(hint):
    return None
  try:
    if base is bool:
      if raw.lower() in ("true", "1", "yes"):
        return True
      if raw.lower() in ("false", "0", "no"):
        return False
      raise ValueError(raw)
    if base is int:
      return int(raw)
    if base is float:
      return float(raw)
    return raw
  except ValueError:
    raise ConfigError(f"config field {path!r} must be {base.__name__}, got {raw!r}") from None


def apply_overrides(
  cfg: ml_collections.ConfigDict, overrides: dict[str, str]
) -> ml_collections.ConfigDict:
  """Applies `{"train.steps": "6", ...}` (strings from the command line) to `cfg`."""
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  # A component renamed on the command line starts its section afresh: the other keys an
  # experiment file set belong to the component it named.
  for section in COMPONENT_SECTIONS:
    name = overrides.get(f"{section}.name")
    if name is not None and name != cfg.get(section, {}).get("name"):
      cfg[section] = ml_collections.ConfigDict({"name": name})
  for path, raw in overrides.items():
    parts = path.split(".")
    if parts[0] in COMPONENT_SECTIONS or parts[0] == "rewards":
      _set_open(cfg, parts, raw)
      continue
    cls, node = RunConfig, cfg
    for i, part in enumerate(parts):
      names = [f.name for f in dataclasses.fields(cls)]
      prefix = ".".join(parts[:i])
      if part not in names:
        close = difflib.get_close_matches(part, names, n=1)
        hint = f" (did you mean {'.'.join(parts[:i] + [close[0]])!r}?)" if close else ""
        raise ConfigError(
          f"unknown config field {path!r}{hint}; known fields of "
          f"{prefix or 'the config'}: {', '.join(names)}"
        )
      target = typing.get_type_hints(cls)[part]
      if i < len(parts) - 1:
        if not dataclasses.is_dataclass(target):
          raise ConfigError(f"config field {'.'.join(parts[: i + 1])!r} is not a section")
        if part not in node:
          node[part] = ml_collections.ConfigDict()
        cls, node = target, node[part]
      else:
        if dataclasses.is_dataclass(target):
          raise ConfigError(f"config field {path!r} is a section; set one of its fields")
        with node.ignore_type():
          node[part] = _parse_scalar(path, raw, node.get(part), target)
  return cfg


def _set_open(cfg: ml_collections.ConfigDict, parts: list[str], raw: str) -> None:
  """Sets `section.key` of a component section (or `rewards.<reward>.key`). A key the section
  already has keeps its type; a new one stays a string until the component's signature
  converts it (`components.check_kwargs`)."""
  depth = 3 if parts[0] == "rewards" else 2
  path = ".".join(parts)
  if len(parts) != depth:
    form = "rewards.<reward>.<key>" if depth == 3 else f"{parts[0]}.<key>"
    raise ConfigError(f"config field {path!r} does not name a key; use {form}")
  node = cfg
  for part in parts[:-1]:
    if part not in node or node[part] is None:
      with node.ignore_type():
        node[part] = ml_collections.ConfigDict()
    node = node[part]
  current = node.get(parts[-1])
  value = raw
  if isinstance(current, bool | int | float) and raw.lower() not in ("none", "null"):
    value = _parse_scalar(path, raw, current, type(current))
  with node.ignore_type():
    node[parts[-1]] = value


def to_json(c: RunConfig) -> str:
  return json.dumps(c.to_dict(), indent=2, sort_keys=True)


def from_json(text: str) -> RunConfig:
  return from_configdict(json.loads(text))


# Fields a resumed run may change: how long it runs, how often it evaluates, checkpoints and
# logs. Any other change would make the resumed run a different experiment.
# The fields a resumed run may change: they alter how long the run goes, what it records and
# how it protects itself, never what a step computes. Any other change is refused on resume
# unless explicitly allowed (`rl-jax train --allow_config_change`), and every change is
# recorded in the workdir's config_history.jsonl.
RESUMABLE_FIELDS = (
  "train.steps",
  "train.max_consecutive_skips",
  "eval.every",
  "checkpoint.every",
  "checkpoint.keep",
  "checkpoint.async_save",
  "sft.checkpoint_every",
  "rl.reward_timeout_s",
  "log.*",
  "mesh.*",  # where arrays live, not what is computed: a run resumes onto another mesh
  "distributed.*",  # or another number of processes
)


def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = v
  return out


def changed_fields(saved: dict, current: dict) -> dict[str, tuple[Any, Any]]:
  """{dotted field: (saved, current)} for the fields of two `to_dict()` configs that differ.
  A fixed section's field the saved config lacks (written before the field existed) counts
  as its default; a component's keyword argument only one of them has counts as changed."""
  defaults = _flat(RunConfig().to_dict())
  a, b = _flat(saved), _flat(current)
  a = {**{k: v for k, v in defaults.items() if k in b and k.split(".")[0] not in _DYNAMIC}, **a}
  missing = "(not set)"
  keys = sorted(set(a) | set(b))
  return {
    k: (a.get(k, missing), b.get(k, missing))
    for k in keys
    if a.get(k, missing) != b.get(k, missing)
  }


# Sections whose keys are not fixed fields (a component's own arguments, named rewards).
_DYNAMIC = (*COMPONENT_SECTIONS, "rewards")


def resumable(field: str) -> bool:
  """Whether a resumed run may change `field` (`RESUMABLE_FIELDS`)."""
  return any(
    field == f or (f.endswith(".*") and field.startswith(f[:-1])) for f in RESUMABLE_FIELDS
  )


def lora_config(c: RunConfig):
  """The run's `lora.LoraConfig`, or None when `lora.rank` is 0."""
  from rl_jax import lora as lora_lib  # local: config is imported by all

  if not c.lora.rank:
    return None
  targets = tuple(t.strip() for t in c.lora.targets.split(",") if t.strip())
  return lora_lib.LoraConfig(rank=c.lora.rank, alpha=c.lora.alpha, targets=targets)
