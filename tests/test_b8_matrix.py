"""experiments/b8_matrix.py: the cell grid and its subsets and filters, the overrides each
cell's config carries (checked on the built algorithm), the metrics of a run, and (slow) that a
finished cell is skipped on a rerun and an interrupted one is finished from its checkpoint."""

import importlib.util
import itertools
import json
import os
import sys

import pytest
from tests_support import ROOT

from rl_jax import algorithms


def _load():
  spec = importlib.util.spec_from_file_location(
    "b8_matrix", os.path.join(ROOT, "experiments", "b8_matrix.py")
  )
  module = importlib.util.module_from_spec(spec)
  sys.modules["b8_matrix"] = module  # its dataclass looks its module up
  spec.loader.exec_module(module)
  return module


b8 = _load()
Cell = b8.Cell
TOK, SEQ = "token_mean", "seq_mean_token_mean"


def _keys(cells):
  return [(c.algo, c.group_size, c.kl, c.agg, c.seed) for c in cells]


def test_full_matrix_is_the_whole_product():
  cells = b8.expand_cells("full")
  assert len(cells) == 72 == len({c.name for c in cells})
  want = itertools.product(
    ["ppo", "grpo", "dapo", "dapo_no_ds"], [4, 8, 16], [0.0, 0.01, 0.04], [TOK, SEQ], [0]
  )
  assert sorted(_keys(cells)) == sorted(want)
  assert set(b8.AGGS) <= set(algorithms.AGGREGATION_MODES)


def test_core_subset_is_one_factor_at_a_time_around_the_centre():
  got = set(_keys(b8.expand_cells("core")))
  want = {
    ("ppo", 8, 0.01, TOK, 0),
    ("grpo", 8, 0.01, TOK, 0),
    ("dapo", 8, 0.01, TOK, 0),
    ("dapo_no_ds", 8, 0.01, TOK, 0),
    ("grpo", 4, 0.01, TOK, 0),
    ("grpo", 16, 0.01, TOK, 0),
    ("dapo_no_ds", 4, 0.01, TOK, 0),
    ("dapo_no_ds", 16, 0.01, TOK, 0),
    ("grpo", 8, 0.0, TOK, 0),
    ("grpo", 8, 0.04, TOK, 0),
    ("ppo", 8, 0.0, TOK, 0),
    ("ppo", 8, 0.04, TOK, 0),
    ("grpo", 8, 0.01, SEQ, 0),
    ("dapo_no_ds", 8, 0.01, SEQ, 0),
  }
  assert got == want and len(b8.expand_cells("core")) == 14
  assert set(_keys(b8.expand_cells("quick"))) == {
    (a, 8, 0.01, TOK, 0) for a in ("ppo", "grpo", "dapo", "dapo_no_ds")
  }


def test_filters_and_seeds_are_exact():
  cells = b8.expand_cells(
    "full", algos=("grpo", "dapo"), group_sizes=(4, 8), kls=(0.0, 0.04), aggs=(TOK,), seeds=(0, 1)
  )
  want = itertools.product(["grpo", "dapo"], [4, 8], [0.0, 0.04], [TOK], [0, 1])
  assert sorted(_keys(cells)) == sorted(want) and len(cells) == 16
  # filters apply to the subset's cells: core's PPO cells are its KL slice
  assert _keys(b8.expand_cells("core", algos=("ppo",))) == [
    ("ppo", 8, kl, TOK, 0) for kl in (0.0, 0.01, 0.04)
  ]
  assert b8.expand_cells("quick", group_sizes=(4,)) == []
  with pytest.raises(ValueError, match="unknown values"):
    b8.expand_cells("full", algos=("gspo",))
  with pytest.raises(ValueError, match="unknown values"):
    b8.expand_cells("full", kls=(0.1,))
  with pytest.raises(ValueError, match="unknown subset"):
    b8.expand_cells("most")
  # the command line's comma lists reach the same filters
  args = b8.parse_args(["--algos=grpo,dapo", "--group_sizes=4,8", "--kls=0,0.04", "--aggs=" + TOK])
  assert b8._strs(args.algos) == ("grpo", "dapo") and b8._floats(args.kls) == (0.0, 0.04)
  assert b8._ints(args.group_sizes) == (4, 8) and b8._ints(args.seeds) == (0,)


def test_cell_names_are_distinct_and_readable():
  assert Cell("dapo_no_ds", 16, 0.04, SEQ, 2).name == "dapo_no_ds_g16_kl0.04_seq_s2"
  assert Cell("ppo", 4, 0.0, TOK).name == "ppo_g4_kl0_tok_s0"


def _settings(**kw):
  return b8.settings_of(b8.parse_args([f"--{k}={v}" for k, v in kw.items()]))


@pytest.mark.parametrize("algo", ["ppo", "grpo", "dapo", "dapo_no_ds"])
@pytest.mark.parametrize("group_size, kl, agg", [(4, 0.0, SEQ), (16, 0.04, TOK), (8, 0.01, TOK)])
def test_cell_config_carries_its_overrides(algo, group_size, kl, agg):
  settings = _settings(steps=12, eval_every=4, budget=64)
  cfg = b8.make_config(Cell(algo, group_size, kl, agg, seed=3), settings)
  assert cfg.task.name == "countdown" and cfg.seed == 3
  assert cfg.rl.group_size == group_size
  assert cfg.rl.prompts_per_step * group_size == 64  # the sequence budget is fixed
  assert cfg.train.steps == 12 and cfg.eval.every == 4 and cfg.checkpoint.every == 4
  assert cfg.sampling.max_new_tokens == b8.MAX_NEW_TOKENS
  algo_obj = algorithms.build(cfg.algorithm)
  assert algo_obj.kl_coef == kl and algo_obj.aggregation == agg
  assert algo_obj.critic == (algo == "ppo")
  assert algo_obj.dynamic_sampling == (algo == "dapo")
  if algo == "ppo":
    assert algo_obj.name == "ppo" and algo_obj.kl_in_reward
    assert cfg.train.critic_learning_rate == 1e-3
  elif algo == "grpo":
    assert algo_obj.name == "grpo" and not algo_obj.kl_in_reward
    assert algo_obj.clip_eps_high == 0.2 and algo_obj.overlong_cache_len is None
  else:  # both DAPO arms: clip-higher and the overlong ramp past the longest answer (11)
    assert algo_obj.name == "dapo" and algo_obj.clip_eps_high == 0.28
    assert algo_obj.overlong_cache_len == b8.OVERLONG_CACHE
    assert b8.MAX_NEW_TOKENS - b8.OVERLONG_CACHE >= 11


def test_fixed_prompts_mode_and_budget_check():
  cfg = b8.make_config(Cell("grpo", 16, 0.0, TOK), _settings(prompts_per_step=4))
  assert cfg.rl.prompts_per_step == 4 and cfg.rl.group_size == 16
  with pytest.raises(ValueError, match="not a multiple"):
    b8.make_config(Cell("grpo", 16, 0.0, TOK), _settings(budget=40))


def _write_jsonl(path, rows):
  with open(path, "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")


def test_summarize_metrics(tmp_path):
  accs = [0.40, 0.50, 0.30, 0.45, 0.35]  # evaluations at steps 0, 5, 10, 15, 20
  fmt = [0.20, 0.20, 0.30, 0.40, 0.50]  # well-formed but wrong shares
  _write_jsonl(
    tmp_path / "eval.jsonl",
    [
      dict(step=5 * i, accuracy=a, reward_mean=a + 0.1 * f, n=10, response_len_mean=8.0 - i)
      for i, (a, f) in enumerate(zip(accs, fmt))
    ],
  )
  rows = [
    dict(
      step=s,
      response_len_mean=6.0 if s <= 5 else 9.0,
      accuracy=0.2 if s <= 5 else 0.3,
      reward_mean=0.25 if s <= 5 else 0.45,
      reward_std=0.3,
      kl=0.01 * s,
      grad_norm=None if s == 3 else 1.0 + (s % 2),  # None: a non-finite value
      skipped_updates=1 if s >= 3 else 0,
      step_s=0.5,
    )
    for s in range(1, 21)
  ]
  _write_jsonl(tmp_path / "metrics.jsonl", rows)
  r = b8.summarize(str(tmp_path), format_reward=0.1)
  assert r["before"] == 0.40 and r["acc_final"] == 0.35
  assert r["acc"] == pytest.approx((0.30 + 0.45 + 0.35) / 3)  # steps 10, 15, 20 (>= 20 / 2)
  assert r["gain"] == pytest.approx(r["acc"] - 0.40)
  assert r["late_std"] == pytest.approx(0.0624, abs=1e-4)
  assert r["drawdown"] == pytest.approx(0.20)  # best 0.50, then 0.30
  assert r["format_only_before"] == pytest.approx(0.20)
  assert r["format_only_final"] == pytest.approx(0.50)
  assert r["len_drift"] == pytest.approx(3.0)  # first 5 steps 6, last 5 steps 9
  assert (r["train_acc_first"], r["train_acc_last"]) == pytest.approx((0.2, 0.3))
  assert (r["train_reward_first"], r["train_reward_last"]) == pytest.approx((0.25, 0.45))
  assert r["eval_len_before"] == 8.0 and r["eval_len_final"] == 4.0
  assert r["kl_final"] == pytest.approx(0.18)  # mean of steps 16..20
  assert r["skipped_updates"] == 1 and r["step_s"] == 0.5
  assert 0 < r["grad_norm_cv"] < 1


def test_rerun_with_other_settings_is_refused(tmp_path):
  os.makedirs(tmp_path / "out")
  with open(tmp_path / "out" / "matrix.json", "w") as f:
    json.dump(dict(settings=_settings(steps=7)), f)
  assert b8.main([f"--out={tmp_path / 'out'}", "--steps=8", "--jit_cache=none"]) == 2


def test_a_stopped_cell_writes_no_result_and_stops_the_matrix(tmp_path, monkeypatch):
  from rl_jax import loop

  os.makedirs(tmp_path / "warm" / "reference")
  monkeypatch.setattr(loop, "run", lambda *a, **k: dict(stopped="SIGTERM"))
  cell = Cell("grpo", 8, 0.01, TOK)
  with pytest.raises(b8.CellInterrupted, match="SIGTERM"):
    b8.run_cell(cell, str(tmp_path / "out"), str(tmp_path / "warm"), _settings(steps=4))
  cell_dir = tmp_path / "out" / "cells" / cell.name
  assert (cell_dir / "run" / "reference").is_dir() and not (cell_dir / "result.json").exists()


SMALL = [
  "--set=model.preset=test",
  "--set=sft.batch_size=16",
  "--steps=2",
  "--eval_every=1",
  "--eval_prompts=8",
  "--budget=8",
  "--sft_steps=10",
  "--jit_cache=none",  # keep the test session's compilation cache
]


@pytest.mark.slow
def test_finished_cells_are_skipped_and_interrupted_ones_finished(tmp_path, monkeypatch):
  from rl_jax import loop

  out = tmp_path / "out"
  argv = [f"--out={out}", "--subset=quick", "--algos=grpo", "--group_sizes=8", *SMALL]
  # --budget 8 with G = 8: one prompt per step
  assert b8.main(argv) == 0
  name = "grpo_g8_kl0.01_tok_s0"
  result_path = out / "cells" / name / "result.json"
  result = json.loads(result_path.read_text())
  assert result["steps"] == [0, 1, 2] and len(result["accuracy"]) == 3
  assert result["cell"] == dict(algo="grpo", group_size=8, kl=0.01, agg=TOK, seed=0)
  assert json.loads((out / "cells" / name / "run" / "config.json").read_text())["rl"] == {
    "group_size": 8,
    "prompts_per_step": 1,
    "reward_timeout_s": 600.0,
  }
  for plot in ("b8_heatmap.png", "b8_group_size.png", "b8_kl.png"):
    assert (out / plot).stat().st_size > 1000
  assert name in (out / "b8_matrix.md").read_text()

  # A rerun skips the finished cell: no run, no warm start, the result file untouched.
  mtime = result_path.stat().st_mtime_ns
  calls = []
  monkeypatch.setattr(loop, "run", lambda *a, **k: calls.append(a))
  monkeypatch.setattr(loop, "run_sft_only", lambda *a, **k: calls.append(a))
  assert b8.main(argv) == 0
  assert calls == [] and result_path.stat().st_mtime_ns == mtime
  monkeypatch.undo()

  # A cell killed after its run finished but before result.json: the rerun resumes the run
  # (its checkpoint is at the last step, so no step is repeated) and writes the result.
  result_path.unlink()
  assert b8.main(argv) == 0
  again = json.loads(result_path.read_text())
  assert again["accuracy"] == result["accuracy"] and again["steps"] == [0, 1, 2]
  rows = [json.loads(x) for x in (out / "cells" / name / "run" / "metrics.jsonl").open()]
  assert [r["step"] for r in rows] == [1, 2]
