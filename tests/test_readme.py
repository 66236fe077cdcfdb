"""The README's "Extending rl_jax" examples run as written: a task, a reward, a rollout function
and an algorithm of their own, trained together for two steps."""

import io
import json
import os
import re
from contextlib import redirect_stdout

from tests_support import ROOT


def _extending_blocks() -> list[str]:
  with open(os.path.join(ROOT, "README.md")) as f:
    text = f.read()
  section = text.split("\n## Extending rl_jax\n", 1)[1].split("\n## ", 1)[0]
  return re.findall(r"```python\n(.*?)```", section, re.S)


def test_extending_examples_run(monkeypatch):
  blocks = _extending_blocks()
  assert len(blocks) == 5  # task, reward, rollout, algorithm, the run
  monkeypatch.chdir(ROOT)
  namespace: dict = {}
  with redirect_stdout(io.StringIO()):
    exec(compile("\n".join(blocks), "README.md", "exec"), namespace)  # noqa: S102 - our README
  summary = namespace["summary"]
  assert summary["after"]["step"] == 2 and 0.0 <= summary["after"]["accuracy"] <= 1.0
  with open(os.path.join(summary["workdir"], "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows] == [1, 2]
  for r in rows:  # the reward of our own is logged as its own component, weighted in the total
    assert r["reward/brevity"] < 0
    assert abs(r["reward_mean"] - (r["reward/task"] + 0.5 * r["reward/brevity"])) < 1e-5
