"""Shared test setup: small configs, and a persistent compilation cache so repeated runs of the
same jitted programs (the resume test runs the loop three times) compile once."""

import os

import jax
import pytest

# Subprocesses the tests start (scripts under tests/, `python -c`) import rl_jax from this tree,
# not from wherever an editable install last pointed (another checkout, CI's copy).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join([_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])

jax.config.update(
  "jax_compilation_cache_dir", os.environ.get("RL_JAX_TEST_JIT_CACHE", "/tmp/rl_jax_test_jit_cache")
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

# A run small enough for CI: the "test" model preset, few prompts, short warm start. 100 SFT
# steps (a few seconds) leave a policy that solves some 2-digit problems, so groups have reward
# variance and the RL steps move the policy whatever the sampling seed (after 30 steps that
# took a lucky draw).
SMALL_OVERRIDES = {
  "model.preset": "test",
  "task.max_digits": "2",
  "sft.steps": "100",
  "sft.batch_size": "32",
  "train.steps": "6",
  "rl.prompts_per_step": "4",
  "rl.group_size": "4",
  "eval.every": "3",
  "eval.num_prompts": "16",
  "checkpoint.every": "2",
  "log.tensorboard": "true",
}


@pytest.fixture
def small_config():
  """`small_config(**overrides)` -> validated RunConfig built from experiments/default.py."""
  from rl_jax import config as config_lib

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def make(**overrides):
    cd = config_lib.load_config_file(os.path.join(root, "experiments", "default.py"))
    merged = dict(SMALL_OVERRIDES)
    overrides = {k.replace("__", "."): str(v) for k, v in overrides.items()}
    if "task.name" in overrides:  # another task: the arithmetic override does not apply
      merged.pop("task.max_digits")
    merged.update(overrides)
    return config_lib.from_configdict(config_lib.apply_overrides(cd, merged))

  return make
