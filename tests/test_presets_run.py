"""Every algorithm preset runs end to end through the CLI's config path, on Countdown (the
default task is exercised by experiments/compare_algorithms.py and the other loop tests), or
on a task whose rewards give the extras the preset reads."""

import io
import os

import numpy as np
import pytest
from tests_support import make_small_config

from rl_jax import algorithms, loop
from rl_jax.metrics import read_jsonl

# Presets that read extras Countdown's verifier does not give: a task or reward that does.
EXTRA_SOURCES = {
  "papo": {"task.name": "steps"},  # `correct` and `process` from the steps verifier
  "uarm": {  # `rm_interval_width` from a stand-in reward model
    "rewards.task.weight": 0.0,
    "rewards.rm.name": "tests_support:interval_reward",
  },
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(algorithms.PRESETS))
def test_preset_trains_on_countdown(name, tmp_path):
  overrides = {
    "algorithm.name": name,
    "task.name": "countdown",
    "train.steps": 2,
    "sft.steps": 10,
    "eval.every": 0,
    "eval.num_prompts": 8,
    "checkpoint.every": 2,
  }
  overrides.update(EXTRA_SOURCES.get(name, {}))
  cfg = make_small_config(**overrides)
  loop.run(cfg, str(tmp_path), log=lambda m: None, stream=io.StringIO())
  rows = read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
  assert [r["step"] for r in rows] == [1, 2]
  assert all(np.isfinite(r["loss"]) and r["skipped_updates"] == 0 for r in rows)
  if name == "ppo":
    assert "value_loss" in rows[0]
  if name == "dapo":
    assert "ds_rounds" in rows[0]
