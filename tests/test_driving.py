"""The driving task (rl_jax/tasks/driving.py): its simulator on hand-made scenes, the brute-force
planner against the weak demonstrator, the split, the verifier, and the NoRD identity (methods.md
B5) that motivates the task: GRPO cannot tell a 0/1 group from a 0.49/0.51 one, Dr. GRPO can."""

import io
import os

import jax.numpy as jnp
import numpy as np
import pytest
from tests_support import make_small_config

from rl_jax import algorithms, loop, tasks
from rl_jax.algorithms import AdvantageInputs, compute_advantages
from rl_jax.components import Component
from rl_jax.metrics import read_jsonl
from rl_jax.tasks.driving import (
  DrivingTask,
  all_plans,
  best_plan,
  levels_of,
  myopic_plan,
  scene_example,
  simulate,
)
from rl_jax.tokenizers import CharTokenizer

FREE = ["........", "........", "........"]
BLOCKED_AT_3 = ["........", "..#.....", "........"]  # lane 1 blocked at time step 3
# Lane 1 blocked at step 2, lane 0 at step 3: the myopic demonstrator dodges into lane 0 and
# must swerve straight back; the best plan takes lane 2 once.
TRAP = ["..#.....", ".#......", "........"]
WALL_AT_4 = ["...#....", "...#....", "...#...."]  # every lane blocked at step 4


def _grid(rows):
  return np.array([[c == "#" for c in row] for row in rows], bool)


def _sim(rows, ego, plan):
  out = simulate(_grid(rows), ego, np.array([[int(c) for c in plan]]))
  return {k: float(v[0]) for k, v in out.items()}


# --- the simulator, by hand ---------------------------------------------------------


@pytest.mark.parametrize(
  "rows, ego, plan, score, progress, collision, comfort",
  [
    # A clean run: straight through a free lane.
    (FREE, 1, "11111111", 1.0, 1.0, 0.0, 1.0),
    # A collision at step 3, no lane change: 0.5 * (0.7 * 2/8 + 0.3 * 1).
    (BLOCKED_AT_3, 1, "11111111", 0.2375, 0.25, 1.0, 1.0),
    # The same scene dodged with one lane change: 0.7 + 0.3 * (1 - 0.25).
    (BLOCKED_AT_3, 1, "00000000", 0.925, 1.0, 0.0, 0.75),
    # An unnecessary lane change on a free road costs the same comfort.
    (FREE, 1, "22222222", 0.925, 1.0, 0.0, 0.75),
    # Two changes in a row (a swerve): 1 - 0.25 * (2 changes + 1 swerve) = 0.25.
    (FREE, 1, "01111111", 0.775, 1.0, 0.0, 0.25),
    # ... and into the obstacle at step 3: 0.5 * (0.7 * 2/8 + 0.3 * 0.25).
    (BLOCKED_AT_3, 1, "01111111", 0.125, 0.25, 1.0, 0.25),
    # Jumping over a lane is a collision at that step (the change counts): 0.5 * 0.3 * 0.75.
    (FREE, 0, "22222222", 0.1125, 0.0, 1.0, 0.75),
    # Weaving: 8 changes and 7 swerves floor comfort at 0: 0.7 * 1.
    (FREE, 1, "01010101", 0.7, 1.0, 0.0, 0.0),
    # The unavoidable crash, driven straight: 0.5 * (0.7 * 3/8 + 0.3).
    (WALL_AT_4, 0, "00000000", 0.28125, 0.375, 1.0, 1.0),
  ],
)
def test_simulator_on_hand_made_scenes(rows, ego, plan, score, progress, collision, comfort):
  got = _sim(rows, ego, plan)
  want = dict(score=score, progress=progress, collision=collision, comfort=comfort)
  np.testing.assert_allclose([got[k] for k in want], list(want.values()), atol=1e-6)


def test_best_plan_and_myopic_demonstrator_by_hand():
  # The trap: the demonstrator goes 1 -> 0 -> 1 (a swerve), the best plan changes once.
  demo = myopic_plan(_grid(TRAP), 1)
  assert "".join(map(str, demo)) == "10111111"
  assert _sim(TRAP, 1, "10111111")["score"] == pytest.approx(0.775)
  plan, score = best_plan(_grid(TRAP), 1)
  assert "".join(map(str, plan)) == "12222222" and score == pytest.approx(0.925)
  # Its noise: the upper side when both are free (bit 1 of `sides`: the dodge at step 2),
  # a lapse (bit 1 of `blind`: it does not see the obstacle at step 2 and crashes there), and
  # a needless change (`wander_step` 0: a change at step 1 with its own lane free).
  assert "".join(map(str, myopic_plan(_grid(TRAP), 1, sides=0b10))) == "12222222"
  assert "".join(map(str, myopic_plan(_grid(TRAP), 1, blind=0b10))) == "11111111"
  assert _sim(TRAP, 1, "11111111")["score"] == pytest.approx(0.19375)  # 0.5 (0.7 / 8 + 0.3)
  assert "".join(map(str, myopic_plan(_grid(FREE), 1, wander_step=0))) == "00000000"
  # A free lane: both drive straight; a wall: the best is to crash as late as possible.
  assert "".join(map(str, myopic_plan(_grid(FREE), 2))) == "22222222"
  assert best_plan(_grid(FREE), 2)[1] == 1.0
  assert best_plan(_grid(WALL_AT_4), 0)[1] == pytest.approx(0.28125)
  # Plans moving at most one lane per step: with m, e plans of k steps ending in the middle or
  # an edge lane, the next step has m + e and 2 m + e; after 8 steps from the middle
  # 577 + 816 = 1393, from an edge 408 + 577 = 985.
  assert all_plans(3, 8, 1).shape == (1393, 8) and all_plans(3, 8, 0).shape == (985, 8)
  plans = all_plans(3, 8, 1)
  assert np.all(np.abs(np.diff(np.c_[np.ones(len(plans), int), plans])) <= 1)
  assert len({tuple(p) for p in plans}) == len(plans)
  assert [tuple(p) for p in plans] == sorted(tuple(p) for p in plans)


def test_optimal_planner_beats_the_demonstrator_where_it_can():
  task = DrivingTask()
  examples = task.train_examples(np.random.default_rng(0), 300)
  demo = task.score(examples, [task.sft_target(ex) for ex in examples])
  best = task.score(examples, [ex.answer for ex in examples])
  scene_best = np.array([ex.meta.best_score for ex in examples], np.float32)
  np.testing.assert_allclose(best["reward"], scene_best, atol=1e-6)
  assert best["correct"].all()
  assert np.all(best["reward"] >= demo["reward"] - 1e-6)
  gap = best["reward"] - demo["reward"]
  assert (gap > 1e-3).sum() >= 20  # strictly better on a good share of scenes
  # The brute-force planner is the maximum of the simulator over every plan.
  for ex in examples[:20]:
    all_scores = simulate(ex.meta.grid_LxH, ex.meta.ego, all_plans(3, 8, ex.meta.ego))["score"]
    assert all_scores.max() == pytest.approx(ex.meta.best_score)
  # Headroom grows with difficulty: more obstacles, lower best score, more demonstrator misses.
  level = levels_of(examples)
  best_by_level = [scene_best[level == k].mean() for k in range(3)]
  assert best_by_level[0] > best_by_level[1] > best_by_level[2]


# --- examples and the split ---------------------------------------------------------


def test_examples_are_well_formed_and_deterministic():
  task = DrivingTask()
  a = task.train_examples(np.random.default_rng(3), 200)
  b = task.train_examples(np.random.default_rng(3), 200)
  assert [e.prompt for e in a] == [e.prompt for e in b]
  tok = CharTokenizer(task.alphabet())
  for ex in a:
    assert len(ex.prompt) == 28 and len(ex.answer) == 8 and len(task.sft_target(ex)) == 8
    assert ex.prompt[0] == str(ex.meta.ego) and ex.prompt[2:].split("|") == list(ex.meta.lanes)
    counts = task.obstacle_counts[ex.meta.level]
    assert ex.prompt.count("#") == counts
    tok.encode(ex.prompt + ex.answer)  # every character is in the alphabet
  assert task.max_lengths(tok) == (29, 9)  # BOS + 28, 8 + EOS
  assert set(levels_of(a)) == {0, 1, 2}


def test_train_and_heldout_are_disjoint_and_heldout_is_fixed():
  task = DrivingTask()
  heldout = task.heldout_examples(384)
  assert [e.prompt for e in heldout] == [e.prompt for e in DrivingTask().heldout_examples(384)]
  assert len({e.prompt for e in heldout}) == 384
  assert list(levels_of(heldout)[:6]) == [0, 1, 2, 0, 1, 2]
  assert np.bincount(levels_of(heldout)).tolist() == [128, 128, 128]
  train = {e.prompt for e in task.train_examples(np.random.default_rng(0), 5000)}
  assert not train & {e.prompt for e in heldout}
  # Demonstration noise is drawn for training scenes only, as asked.
  noisy = DrivingTask(sft_wander_prob=1.0, sft_blind_prob=1.0)
  for ex in noisy.train_examples(np.random.default_rng(0), 50):
    assert ex.meta.wander_step >= 0 and ex.meta.blind == 255
  quiet = DrivingTask(sft_random_side=False).train_examples(np.random.default_rng(0), 50)
  assert all(ex.meta.wander_step == -1 and ex.meta.sides == ex.meta.blind == 0 for ex in quiet)
  assert all((e.meta.wander_step, e.meta.sides, e.meta.blind) == (-1, 0, 0) for e in heldout)


def test_malformed_completions_score_zero():
  task = DrivingTask()
  ex = scene_example(1, BLOCKED_AT_3)
  bad = ["", "1111111", "111111111", "11a11111", "33333333", " 0000000", "0000000\n"]
  out = task.score([ex] * len(bad), bad)
  assert np.all(out["reward"] == 0) and not out["correct"].any()
  good = task.score([ex, ex], ["00000000", "11111111"])
  np.testing.assert_allclose(good["reward"], [0.925, 0.2375], atol=1e-6)
  np.testing.assert_allclose(good["score"], good["reward"])
  assert good["correct"].tolist() == [True, False]
  assert good["collision"].tolist() == [0.0, 1.0]


def test_registered_and_checked_from_config():
  task = tasks.build(Component.of("driving", obstacles="1,2", horizon="6"))
  assert isinstance(task, DrivingTask) and task.num_levels == 2 and task.horizon == 6
  with pytest.raises(ValueError, match="task.obstacles"):
    DrivingTask(obstacles="3,x")
  with pytest.raises(ValueError, match="task.obstacles"):
    DrivingTask(obstacles="24")


# --- NoRD (B5): the difficulty bias of std normalisation ----------------------------


def test_grpo_cannot_tell_a_strong_from_a_weak_signal_dr_grpo_can():
  rewards_N = jnp.array([0, 1, 0, 1, 0.49, 0.51, 0.49, 0.51], jnp.float32)
  N, T = 8, 3
  inputs = AdvantageInputs(
    rewards_N=rewards_N,
    loss_mask_NxT=jnp.ones((N, T)),
    logp_NxT=jnp.zeros((N, T)),
    ref_logp_NxT=jnp.zeros((N, T)),
    values_NxT=None,
    group_index_BxG=jnp.arange(N, dtype=jnp.int32).reshape(2, 4),
  )
  grpo, _ = compute_advantages(algorithms.make_algorithm("grpo"), inputs)
  dr, _ = compute_advantages(algorithms.make_algorithm("dr_grpo"), inputs)
  sign = np.array([-1, 1, -1, 1])
  # GRPO: both groups z-score to +-0.5 / std(ddof=1) = +-sqrt(3)/2 (eps 1e-6 in the std).
  np.testing.assert_allclose(grpo[:4, 0], sign * np.sqrt(3) / 2, atol=1e-5)
  np.testing.assert_allclose(grpo[4:, 0], grpo[:4, 0], atol=1e-4)
  # Dr. GRPO keeps the scale of the signal: +-0.5 against +-0.01.
  np.testing.assert_allclose(dr[:4, 0], sign * 0.5, atol=1e-6)
  np.testing.assert_allclose(dr[4:, 0], sign * 0.01, atol=1e-6)
  np.testing.assert_allclose(grpo, grpo[:, :1] * np.ones((1, T)))  # broadcast over tokens


@pytest.mark.slow
def test_two_rl_steps_on_driving(tmp_path):
  cfg = make_small_config(
    **{
      "task.name": "driving",
      "train.steps": 2,
      "sft.steps": 10,
      "eval.every": 2,
      "eval.num_prompts": 6,
      "checkpoint.every": 2,
      "algorithm.name": "dr_grpo",
    }
  )
  loop.run(cfg, str(tmp_path), log=lambda m: None, stream=io.StringIO())
  rows = read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
  assert [r["step"] for r in rows] == [1, 2]
  assert all(np.isfinite(r["loss"]) and r["skipped_updates"] == 0 for r in rows)
  evals = read_jsonl(os.path.join(tmp_path, "eval.jsonl"))
  assert [e["step"] for e in evals] == [0, 2]
  assert all(0 <= e["reward_mean"] <= 1 and "accuracy" in e for e in evals)
