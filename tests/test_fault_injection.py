"""scripts/fault_injection.py, the quick case: a run killed with SIGKILL during the warm start,
during the RL steps, during an RL checkpoint write and right after the final checkpoint (before
the summary), and restarted each time, ends bit for bit like the uninterrupted run (metrics,
evals, summary, checkpoints, reference policy)."""

import importlib.util
import os
import sys

from tests_support import ROOT

# The compilation cache conftest.py gives the in-process tests: warm after the first CI run.
JIT_CACHE = os.environ.get("RL_JAX_TEST_JIT_CACHE", "/tmp/rl_jax_test_jit_cache")


def _load_script():
  if "fault_injection" in sys.modules:
    return sys.modules["fault_injection"]
  path = os.path.join(ROOT, "scripts", "fault_injection.py")
  spec = importlib.util.spec_from_file_location("fault_injection", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


def test_four_kills_leave_the_run_identical_to_an_uninterrupted_one(tmp_path):
  fi = _load_script()
  lines = []
  result = fi.run_fault_injection(
    kills=4,
    config={"train.steps": "12"},
    seed=0,
    workdir_root=str(tmp_path),
    kinds=["warm", "rl", "checkpoint", "final-checkpoint"],
    jit_cache=JIT_CACHE,
    restart_timeout=120,
    echo=lines.append,
  )
  report = "\n".join(lines)
  assert result.identical, f"{result.difference}\n{report}"
  assert len(result.kills) == 4, report
  assert result.kills[0].category == "warm start", report  # before reference/ exists
  assert result.kills[1].category == "RL", report
  assert result.kills[2].write and result.kills[2].write.startswith("RL checkpoint"), report
  assert "final checkpoint" in result.kills[3].phase, report


def test_wall_time_fields_are_the_only_ones_ignored():
  fi = _load_script()
  row = {"step": 3, "loss": 0.5, "rollout_s": 1.0, "gen_tokens_per_s": 9.0, "time": 1.0}
  slower = {**row, "rollout_s": 2.0, "gen_tokens_per_s": 4.5, "time": 2.0}
  assert fi.compare_rows("metrics.jsonl", [row], [slower]) is None
  other = {**row, "loss": 0.5000000000000001}
  assert "loss" in fi.compare_rows("metrics.jsonl", [row], [other])
  assert "rows" in fi.compare_rows("metrics.jsonl", [row], [])
  assert fi.compare_json("summary.json", {"a": {"b": -0.0}}, {"a": {"b": 0.0}}) is not None
