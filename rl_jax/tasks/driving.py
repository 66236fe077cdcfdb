"""Driving plans on a lane grid, scored by a small simulator: a continuous reward in [0, 1].

A miniature of planning for autonomous driving with a simulated metric (NAVSIM's PDM score in
NoRD, methods.md B5). The road has `num_lanes` lanes and the plan covers `horizon` time steps;
obstacles sit in some cells of the lane x time grid. The prompt is the ego car's lane, then
each lane's row of the grid (`.` free, `#` obstacle), lane 0 first:

  `"1:..#...../....#.../........"`  ego in lane 1, lane 0 blocked at t=3, lane 1 at t=5.

The completion is the plan: the lane at each time step 1..horizon, one digit per step
(`"11110000"`). A step moves to the same or an adjacent lane.

The simulator (`simulate`) drives the plan step by step and stops at the first collision: a
step into an obstacle, or a jump over a lane. Per row it gives `progress` (the share of the
horizon driven before any collision), `collision` (0 or 1), `comfort` (1 minus a quarter per
lane change and per swerve, i.e. a change right after a change, floored at 0; counted over the
steps driven, the colliding one included), and the score

  score = (1 - 0.5 collision) (0.7 progress + 0.3 comfort)      in [0, 1].

Driving straight through a free lane scores 1; one unnecessary lane change 0.925; a crash at
step 3 without changes 0.5 (0.7 * 2/8 + 0.3) = 0.2375. A completion that is not exactly
`horizon` lane digits scores 0.

Difficulty: each scene has a level (`Example.meta.level`, 0 = easy, 1 = medium, ...) that fixes
its number of obstacles (`obstacles`, one count per level, placed uniformly at random). More
obstacles call for more lane changes and make some collisions unavoidable. Levels are drawn
uniformly for training; the held-out set cycles through them (example i has level i mod the
number of levels), so every level has the same share of it. A fixed hash of the scene assigns
it to the train or held-out split.

The verifier (`DrivingTask.score`) returns `reward` (the score), `score` (the same number under
its own name), `correct` (the plan scores as well as the best plan of the scene, found by brute
force over every plan: `best_plan`), and `progress`, `collision`, `comfort`.

Warm-start demonstrations come from a deliberately weak planner (`myopic_plan`), as from a
driving policy trained without reasoning: it looks one step ahead only, stays in its lane while
the next cell is free, and otherwise moves to a free adjacent lane, blind to what comes after;
when both sides are free it picks one at random (`sft_random_side`, else always the lower
index). Two kinds of noise make it weaker: at each step, with probability `sft_blind_prob`, it
does not see the obstacle in its lane and drives into it; with probability `sft_wander_prob` a
demonstration makes one needless lane change at a random step. Its plans are near-optimal on
easy scenes and fall behind the best plan more often as obstacles get denser; a policy
imitating it keeps its coin flips and its slips, so its samples differ where they matter.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from rl_jax.tasks.arithmetic import _mix
from rl_jax.tasks.base import Example, max_lengths_of

W_PROGRESS, W_COMFORT, COLLISION_FACTOR = 0.7, 0.3, 0.5
CHANGE_COST = 0.25  # comfort lost per lane change and per swerve


@dataclasses.dataclass(frozen=True)
class Scene:
  """An example's scene: the ego lane, each lane's row (`.` / `#`), the difficulty level, the
  score of its best plan, and its demonstration's noise: the step (-1: none) at which it
  wanders into a needless lane change, its coin flips (`sides`: bit t set = the upper lane at
  step t + 1 when both sides are free) and its lapses (`blind`: bit t set = it does not see an
  obstacle at step t + 1)."""

  ego: int
  lanes: tuple[str, ...]
  level: int
  best_score: float
  wander_step: int = -1
  sides: int = 0
  blind: int = 0

  @property
  def grid_LxH(self) -> np.ndarray:
    """bool [lanes, horizon]: True where an obstacle is."""
    return np.array([[c == "#" for c in row] for row in self.lanes], bool)


def simulate(grid_LxH: np.ndarray, ego: int, plans_MxH: np.ndarray) -> dict[str, np.ndarray]:
  """Drives each plan through the scene; named per-plan metrics [M].

  score = (1 - 0.5 collision) * (0.7 progress + 0.3 comfort), with progress = steps driven
  before the first collision / H and comfort = max(0, 1 - 0.25 (changes + swerves)) over the
  steps driven (the colliding step included). A step into an obstacle, off the road, or over
  more than one lane is a collision.

  Args:
    grid_LxH: bool [L, H], True at obstacles (time steps 1..H).
    ego: the lane at time 0.
    plans_MxH: int [M, H], the lane of each plan at time steps 1..H.
  Returns:
    {"score", "progress", "collision", "comfort"}: float32 [M].

  Example: 3 lanes, H=8, ego 1, lane 1 blocked at step 3. Plan `11111111` crashes at step 3:
  progress 2/8, score 0.5 * (0.7 * 0.25 + 0.3) = 0.2375; `00000000` changes once:
  0.7 + 0.3 * 0.75 = 0.925; `01111111` changes at steps 1 and 2 (a swerve) and crashes at
  step 3: comfort 1 - 0.25 * 3 = 0.25, score 0.5 * (0.7 * 0.25 + 0.3 * 0.25) = 0.125.
  """
  L, H = grid_LxH.shape
  plans_MxH = np.asarray(plans_MxH, np.int64)
  lanes_Mx1pH = np.concatenate([np.full((plans_MxH.shape[0], 1), ego), plans_MxH], axis=1)
  on_road_MxH = (plans_MxH >= 0) & (plans_MxH < L) & (np.abs(np.diff(lanes_Mx1pH, axis=1)) <= 1)
  hit_MxH = ~on_road_MxH | grid_LxH[np.clip(plans_MxH, 0, L - 1), np.arange(H)]
  return _drive(hit_MxH, _changes(ego, plans_MxH))


def _changes(ego: int, plans_MxH: np.ndarray) -> np.ndarray:
  """int [M, H]: lane changes plus swerves (a change right after a change) up to each step."""
  lanes_Mx1pH = np.concatenate([np.full((plans_MxH.shape[0], 1), ego), plans_MxH], axis=1)
  change_MxH = np.diff(lanes_Mx1pH, axis=1) != 0
  swerve_MxH = change_MxH & np.pad(change_MxH[:, :-1], ((0, 0), (1, 0)))
  return np.cumsum(change_MxH.astype(np.int64) + swerve_MxH, axis=1)


def _drive(hit_MxH: np.ndarray, changes_MxH: np.ndarray) -> dict[str, np.ndarray]:
  """The metrics of `simulate` from where each plan collides and its cumulative changes."""
  H = hit_MxH.shape[1]
  collision_M = hit_MxH.any(axis=1)
  safe_M = np.where(collision_M, hit_MxH.argmax(axis=1), H)  # steps driven before the crash
  driven_M = np.minimum(safe_M + 1, H)  # the colliding step counts for comfort
  changes_M = np.take_along_axis(changes_MxH, driven_M[:, None] - 1, axis=1)[:, 0]
  comfort_M = np.maximum(0.0, 1.0 - CHANGE_COST * changes_M)
  progress_M = safe_M / H
  score_M = (1.0 - COLLISION_FACTOR * collision_M) * (
    W_PROGRESS * progress_M + W_COMFORT * comfort_M
  )
  return dict(
    score=score_M.astype(np.float32),
    progress=progress_M.astype(np.float32),
    collision=collision_M.astype(np.float32),
    comfort=comfort_M.astype(np.float32),
  )


@functools.lru_cache(maxsize=64)
def all_plans(num_lanes: int, horizon: int, ego: int) -> np.ndarray:
  """int [M, horizon]: every plan from lane `ego` that stays on the road and moves at most one
  lane per step, in lexicographic order."""
  plans_MxT = np.full((1, 0), 0, np.int64)
  last_M = np.array([ego])
  for _ in range(horizon):  # extend every plan by lane - 1, lane, lane + 1 (in that order)
    next_Mx3 = last_M[:, None] + np.array([-1, 0, 1])
    row_M, col_M = np.nonzero((next_Mx3 >= 0) & (next_Mx3 < num_lanes))
    last_M = next_Mx3[row_M, col_M]
    plans_MxT = np.concatenate([plans_MxT[row_M], last_M[:, None]], axis=1)
  return plans_MxT


@functools.lru_cache(maxsize=64)
def _plan_table(num_lanes: int, horizon: int, ego: int) -> tuple[np.ndarray, np.ndarray]:
  """(flat grid cell [M, H], cumulative changes [M, H]) of `all_plans`: what `best_plan`
  needs of them, once per ego lane."""
  plans_MxH = all_plans(num_lanes, horizon, ego)
  return plans_MxH * horizon + np.arange(horizon), _changes(ego, plans_MxH)


def best_plan(grid_LxH: np.ndarray, ego: int) -> tuple[np.ndarray, float]:
  """(plan [H], score) of the best plan by brute force over `all_plans` (ties: the first);
  `simulate` on all of them, with their plan-only parts computed once per ego lane."""
  cells_MxH, changes_MxH = _plan_table(*grid_LxH.shape, ego)
  score_M = _drive(grid_LxH.ravel()[cells_MxH], changes_MxH)["score"]
  i = int(np.argmax(score_M))
  return all_plans(*grid_LxH.shape, ego)[i], float(score_M[i])


def myopic_plan(
  grid_LxH: np.ndarray, ego: int, wander_step: int = -1, sides: int = 0, blind: int = 0
) -> np.ndarray:
  """int [H]: the weak demonstrator's plan. At each step t (0-based) it keeps its lane if the
  next cell is free (or bit t of `blind` is set: it does not see the obstacle), else moves to a
  free adjacent lane (both free: the upper one if bit t of `sides` is set, else the lower one),
  else keeps its lane; at `wander_step` it also changes lane, by the same rule, when its own
  is free."""
  L, H = grid_LxH.shape
  lane, plan = ego, []
  for t in range(H):
    if (grid_LxH[lane, t] and not (blind >> t) & 1) or t == wander_step:
      free = [x for x in (lane - 1, lane + 1) if 0 <= x < L and not grid_LxH[x, t]]
      if free:  # (lower, upper) or the one free side
        lane = free[-1] if (sides >> t) & 1 else free[0]
    plan.append(lane)
  return np.array(plan, np.int64)


def parse_plan(completion: str, num_lanes: int, horizon: int) -> np.ndarray | None:
  """int [horizon] lanes of a well-formed completion (exactly `horizon` lane digits), else
  None."""
  if len(completion) != horizon or any(c not in "0123456789"[:num_lanes] for c in completion):
    return None
  return np.array([int(c) for c in completion], np.int64)


class DrivingTask:
  """Plan `horizon` lane choices through a lane grid with obstacles; difficulty levels by
  obstacle count (`obstacles`: comma-separated counts, one per level)."""

  name = "driving"

  def __init__(
    self,
    *,
    num_lanes: int = 3,
    horizon: int = 8,
    obstacles: str = "3,5,8",
    heldout_fraction: float = 1 / 8,
    sft_wander_prob: float = 0.0,
    sft_random_side: bool = True,
    sft_blind_prob: float = 0.0,
  ):
    if not 2 <= num_lanes <= 5:
      raise ValueError(f"task.num_lanes must be in [2, 5], got {num_lanes}")
    if not 2 <= horizon <= 10:
      raise ValueError(f"task.horizon must be in [2, 10] (brute-force planning), got {horizon}")
    try:
      counts = tuple(int(k) for k in obstacles.split(","))
    except ValueError:
      counts = ()
    if not counts or any(not 0 <= k < num_lanes * horizon for k in counts):
      raise ValueError(
        f"task.obstacles must be comma-separated counts in [0, {num_lanes * horizon}), "
        f"one per difficulty level, got {obstacles!r}"
      )
    if not 0 < heldout_fraction < 1:
      raise ValueError(f"task.heldout_fraction must be in (0, 1), got {heldout_fraction}")
    if not 0 <= sft_wander_prob <= 1:
      raise ValueError(f"task.sft_wander_prob must be in [0, 1], got {sft_wander_prob}")
    if not 0 <= sft_blind_prob <= 1:
      raise ValueError(f"task.sft_blind_prob must be in [0, 1], got {sft_blind_prob}")
    self.num_lanes, self.horizon, self.obstacle_counts = num_lanes, horizon, counts
    self.heldout_fraction, self.sft_wander_prob = heldout_fraction, sft_wander_prob
    self.sft_random_side, self.sft_blind_prob = sft_random_side, sft_blind_prob

  @property
  def num_levels(self) -> int:
    return len(self.obstacle_counts)

  def _draw(self, rng: np.random.Generator, levels_N: np.ndarray):
    """(ego, obstacles [N, L, H], and the demonstrations' wander step, sides, blind) of `n`
    scenes at `levels_N` (all [N] but the obstacles)."""
    L, H = self.num_lanes, self.horizon
    n = levels_N.shape[0]
    rank_NxC = np.argsort(np.argsort(rng.random((n, L * H)), axis=1), axis=1)
    counts_N = np.asarray(self.obstacle_counts)[levels_N]
    grid_NxLxH = (rank_NxC < counts_N[:, None]).reshape(n, L, H)
    ego_N = rng.integers(0, L, n)
    wander_N = np.where(rng.random(n) < self.sft_wander_prob, rng.integers(0, H, n), -1)
    sides_N = rng.integers(0, 2**H, n) * self.sft_random_side
    blind_N = ((rng.random((n, H)) < self.sft_blind_prob) << np.arange(H)).sum(axis=1)
    return ego_N, grid_NxLxH, wander_N, sides_N, blind_N

  def _is_heldout(self, ego_N: np.ndarray, grid_NxLxH: np.ndarray) -> np.ndarray:
    bits_NxC = grid_NxLxH.reshape(grid_NxLxH.shape[0], -1).astype(np.uint64)
    h = ego_N.astype(np.uint64)
    for start in range(0, bits_NxC.shape[1], 20):  # 20 cells per round of the hash
      chunk = bits_NxC[:, start : start + 20]
      word = (chunk << np.arange(chunk.shape[1], dtype=np.uint64)).sum(axis=1, dtype=np.uint64)
      h = _mix(h % np.uint64(1 << 40), word)
    return (h % np.uint64(1 << 20)).astype(np.float64) < self.heldout_fraction * (1 << 20)

  def _example(self, ego, grid_LxH: np.ndarray, level, *noise) -> Example:
    rows = ["".join("#" if x else "." for x in row) for row in grid_LxH]
    return scene_example(int(ego), rows, int(level), *map(int, noise))

  def train_examples(self, rng: np.random.Generator, n: int) -> list[Example]:
    out: list[Example] = []
    while len(out) < n:
      m = 2 * (n - len(out)) + 8
      levels = rng.integers(0, self.num_levels, m)
      ego, grid, wander, sides, blind = self._draw(rng, levels)
      keep = np.flatnonzero(~self._is_heldout(ego, grid))[: n - len(out)]
      drawn = (ego, grid, levels, wander, sides, blind)
      out.extend(self._example(*args) for args in zip(*(x[keep] for x in drawn)))
    return out[:n]

  def heldout_examples(self, n: int) -> list[Example]:
    """`n` distinct held-out scenes, example i at level i mod `num_levels`."""
    rng = np.random.default_rng(20261203)  # fixed: the held-out set never depends on the run
    per_level: list[list[Example]] = []
    for level in range(self.num_levels):
      want = (n - level + self.num_levels - 1) // self.num_levels
      found, seen = [], set()
      for _ in range(64):
        if len(found) >= want:
          break
        levels = np.full(16 * want + 64, level)
        ego, grid, *_ = self._draw(rng, levels)
        for e, g in zip(*(x[self._is_heldout(ego, grid)] for x in (ego, grid))):
          key = (int(e), g.tobytes())
          if key not in seen and len(found) < want:
            seen.add(key)
            found.append(self._example(e, g, level))
      if len(found) < want:
        raise ValueError(
          f"the held-out split has only {len(found)} distinct scenes of level {level}, fewer "
          f"than the {want} that eval.num_prompts={n} needs; raise task.obstacles or "
          "task.heldout_fraction, or lower eval.num_prompts"
        )
      per_level.append(found)
    return [per_level[i % self.num_levels][i // self.num_levels] for i in range(n)]

  def alphabet(self) -> str:
    return "0123456789"[: self.num_lanes] + ".#:|"

  def max_lengths(self, tokenizer) -> tuple[int, int]:
    """Every prompt and plan has the same length in characters: exact for the character
    tokenizer; other tokenizers take the longest among 256 fixed draws."""
    drawn = self.train_examples(np.random.default_rng(0), 256)
    return max_lengths_of(tokenizer, drawn, self)

  def sft_target(self, example: Example) -> str:
    """The weak demonstrator's plan (`myopic_plan`), not the best one."""
    scene = example.meta
    plan = myopic_plan(scene.grid_LxH, scene.ego, scene.wander_step, scene.sides, scene.blind)
    return "".join(map(str, plan))

  def score(self, examples: Sequence[Example], completions: Sequence[str]) -> dict[str, np.ndarray]:
    """`reward` = `score` (0 for a malformed plan), `correct` (as good as the best plan), and
    the simulator's `progress`, `collision` and `comfort`; all [N]."""
    names = ("score", "progress", "collision", "comfort")
    out = {k: np.zeros(len(examples), np.float32) for k in names}
    correct = np.zeros(len(examples), bool)
    for i, (ex, text) in enumerate(zip(examples, completions)):
      plan_H = parse_plan(text, self.num_lanes, self.horizon)
      if plan_H is None:
        continue
      row = simulate(ex.meta.grid_LxH, ex.meta.ego, plan_H[None])
      for k in names:
        out[k][i] = row[k][0]
      correct[i] = row["score"][0] >= ex.meta.best_score - 1e-6
    return dict(reward=out["score"].copy(), correct=correct, **out)


def scene_example(
  ego: int, lanes: Sequence[str], level: int = 0, wander_step=-1, sides=0, blind=0
) -> Example:
  """The example of a scene: ego lane, each lane's row (`.` free, `#` obstacle, lane 0 first),
  difficulty level and the demonstration's noise (`Scene`). Its answer is the best plan.

  >>> scene_example(1, ["........", "..#.....", "........"]).answer
  '00000000'
  """
  grid_LxH = np.array([[c == "#" for c in row] for row in lanes], bool)
  best, best_score = best_plan(grid_LxH, ego)
  scene = Scene(ego, tuple(lanes), level, best_score, wander_step, sides, blind)
  return Example(prompt=f"{ego}:" + "|".join(lanes), answer="".join(map(str, best)), meta=scene)


def levels_of(examples: Sequence[Example]) -> np.ndarray:
  """int [N]: the difficulty level of each driving example."""
  return np.array([ex.meta.level for ex in examples], np.int64)
