"""Config: unknown fields and invalid values fail early, naming the field."""

import os
import subprocess
import sys

import pytest

from rl_jax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _default():
  return config_lib.load_config_file(os.path.join(ROOT, "experiments", "default.py"))


def test_default_experiment_is_valid_and_contract_fields_exist():
  c = config_lib.from_configdict(_default())
  for field in (
    "seed",
    "train.steps",
    "checkpoint.every",
    "eval.every",
    "rl.group_size",
    "rl.prompts_per_step",
    "algorithm.name",
  ):
    node = c
    for part in field.split("."):
      node = getattr(node, part)
  assert c.algorithm.name == "grpo" and c.rl.group_size >= 2


def test_overrides_are_typed():
  cd = config_lib.apply_overrides(
    _default(),
    {
      "train.steps": "6",
      "algorithm.kl_coef": "0.1",
      "log.tensorboard": "false",
      "task.ops": "+-",
    },
  )
  c = config_lib.from_configdict(cd)
  assert (c.train.steps, c.algorithm.args["kl_coef"], c.log.tensorboard, c.task.args["ops"]) == (
    6,
    0.1,
    False,
    "+-",
  )


@pytest.mark.parametrize(
  "overrides, field",
  [
    ({"train.stpes": "3"}, "train.stpes"),
    ({"nonsense": "1"}, "nonsense"),
    ({"rl.group_size": "1"}, "rl.group_size"),
    ({"train.steps": "-1"}, "train.steps"),
    ({"train.steps": "abc"}, "train.steps"),
    ({"algorithm.name": "nope"}, "algorithm.name"),
    ({"algorithm.aggregation": "mean_of_everything"}, "algorithm.aggregation"),
    ({"checkpoint.every": "0"}, "checkpoint.every"),
    ({"train.num_minibatches": "3"}, "train.num_minibatches"),
    ({"train.logits_chunk": "-1"}, "train.logits_chunk"),
    ({"sampling.cache_phases": "0"}, "sampling.cache_phases"),
    ({"sampling.streams": "-1"}, "sampling.streams"),
    ({"model.attention": "flash"}, "model.attention"),
  ],
)
def test_bad_fields_name_the_field(overrides, field):
  with pytest.raises(config_lib.ConfigError, match=field.replace(".", r"\.")):
    config_lib.from_configdict(config_lib.apply_overrides(_default(), overrides))


def test_unknown_field_suggests_the_close_one():
  with pytest.raises(config_lib.ConfigError, match="did you mean 'train.steps'"):
    config_lib.apply_overrides(_default(), {"train.stpes": "3"})


def test_unknown_field_inside_config_file_is_rejected():
  cd = _default()
  cd.train.unknown_knob = 3
  with pytest.raises(config_lib.ConfigError, match="train.unknown_knob"):
    config_lib.from_configdict(cd)


@pytest.mark.parametrize(
  "mesh, devices, ok",
  [
    (dict(data=-1, fsdp=1, tensor=1), 8, dict(data=8, fsdp=1, tensor=1)),
    (dict(data=2, fsdp=4, tensor=1), 8, dict(data=2, fsdp=4, tensor=1)),
    (dict(data=2, fsdp=-1, tensor=1), 8, dict(data=2, fsdp=4, tensor=1)),
    (dict(data=3, fsdp=1, tensor=1), 8, None),
    (dict(data=-1, fsdp=3, tensor=1), 8, None),
  ],
)
def test_mesh_must_use_the_devices(mesh, devices, ok):
  m = config_lib.MeshConfig(**mesh)
  if ok is None:
    with pytest.raises(config_lib.ConfigError, match="mesh"):
      config_lib.mesh_shape(m, devices)
  else:
    assert config_lib.mesh_shape(m, devices) == ok


def test_config_json_roundtrip():
  c = config_lib.from_configdict(_default())
  assert config_lib.from_json(config_lib.to_json(c)) == c


def _cli(*args, timeout=120):
  return subprocess.run(
    [sys.executable, "-m", "rl_jax.cli", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def test_cli_rejects_bad_config_before_compiling(tmp_path):
  r = _cli("train", f"--workdir={tmp_path / 'w'}", "--config.rl.group_size=1")
  assert r.returncode == 2
  assert "rl.group_size" in r.stderr and "must be >= 2" in r.stderr
  assert not (tmp_path / "w").exists()  # nothing was started
  r = _cli("train", f"--workdir={tmp_path / 'w'}", "--config.train.stpes=3")
  assert r.returncode == 2 and "train.stpes" in r.stderr


def test_cli_mesh_that_does_not_divide_devices(tmp_path):
  r = _cli("train", f"--workdir={tmp_path / 'w'}", "--config.mesh.data=3")
  assert r.returncode == 2 and "mesh" in r.stderr


def test_cli_eval_on_missing_workdir_is_a_clear_error(tmp_path):
  r = _cli("eval", f"--workdir={tmp_path / 'nothing'}")
  assert r.returncode == 2 and "no config.json" in r.stderr


def test_bench_model_is_the_one_in_benchmarks_md():
  from rl_jax.models import transformer

  cfg = transformer.preset("bench", 512)
  assert cfg.num_params() == 4_458_752
  assert (cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.head_dim, cfg.mlp_dim) == (
    256,
    4,
    4,
    64,
    1024,
  )


def test_cli_bench_help():
  r = _cli("bench", "--help")
  assert r.returncode == 0 and "W1" in r.stdout
