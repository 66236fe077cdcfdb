"""The comparison experiments run end to end at toy size (their recorded results come from the
commands in docs/): arms from one warm start, a plot and a table."""

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = [
  "--steps=1",
  "--eval_every=1",
  "--set=model.preset=test",
  "--set=sft.steps=20",
  "--set=sft.batch_size=16",
  "--set=rl.prompts_per_step=4",
  "--set=rl.group_size=4",
  "--set=eval.num_prompts=8",
  "--set=sampling.max_new_tokens=12",
]


def _main(name):
  spec = importlib.util.spec_from_file_location(
    name, os.path.join(ROOT, "experiments", f"{name}.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.main


@pytest.mark.slow
@pytest.mark.parametrize(
  "name,arms",
  [
    ("papo_steps", ["grpo_summed", "papo"]),
    ("segment_steps", ["line"]),
  ],
)
def test_comparison_experiments_run(name, arms, tmp_path):
  assert _main(name)([f"--out={tmp_path}", f"--arms={','.join(arms)}", *TOY]) == 0
  with open(tmp_path / "results.json") as f:
    results = json.load(f)
  assert sorted(results) == sorted(arms)
  for r in results.values():
    assert [e["step"] for e in r["evals"]] == [0, 1]
    assert [row["step"] for row in r["train"]] == [1]
  assert os.path.getsize(tmp_path / f"{name}.png") > 0
  table = (tmp_path / f"{name}.md").read_text()
  assert all(f"| {arm} |" in table for arm in arms)
  if name == "papo_steps":  # the process score reaches the evals; only the summed arm's reward
    assert all("process_mean" in e for r in results.values() for e in r["evals"])
    assert "reward/process" in results["grpo_summed"]["train"][0]
    assert "reward/process" not in results["papo"]["train"][0]
