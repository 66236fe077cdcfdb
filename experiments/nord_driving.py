"""NoRD in miniature (methods.md B5): GRPO vs Dr. GRPO on a weak driving policy, with a
continuous simulated reward and a per-difficulty breakdown.

  python experiments/nord_driving.py --out=runs/nord              # the comparison (docs/nord.md)
  python experiments/nord_driving.py --out=runs/nord --seeds=1,2   # more seeds, averaged in
  rl-jax train --config experiments/nord_driving.py               # one GRPO run of this config

A tiny policy is warm-started by supervised fine-tuning on the plans of a weak, myopic
demonstrator (rl_jax/tasks/driving.py: looks one step ahead, dodges to a random side, misses
15% of obstacles, sometimes wanders), as a driving model trained without reasoning. From that
one warm start, each arm (GRPO, Dr. GRPO, ...) runs the same RL steps on the same prompts with
the same seeds and is evaluated greedily on the same held-out scenes, whose difficulty levels
(easy, medium, hard: 3, 5 and 8 obstacles) have equal shares. The paper's claim: GRPO's std
normalisation shrinks the signal of the high-variance (medium) scenes and barely helps a weak
policy; Dr. GRPO (no std) helps more. What came out of this miniature: docs/nord.md.

Writes OUT/nord.json, OUT/nord.md (held-out mean score per arm, and difficulty x arm) and
OUT/nord.png (held-out score vs step; per-difficulty bars).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import ml_collections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

LEVELS = ("easy", "medium", "hard")
# Arms: a preset and its config overrides. `grpo_nokl` isolates the std normalisation (GRPO's
# preset also has a k3 KL term, Dr. GRPO's none); completions all have the same length here, so
# the two presets' aggregations (token means vs sums over a constant) coincide.
ARMS = {
  "grpo": {"algorithm.name": "grpo"},
  "dr_grpo": {"algorithm.name": "dr_grpo"},
  "grpo_nokl": {"algorithm.name": "grpo", "algorithm.kl_coef": "0"},
}


def get_config() -> ml_collections.ConfigDict:
  from rl_jax.config import default_configdict

  c = default_configdict()
  c.seed = 0
  c.model.preset = "tiny"
  c.task.name = "driving"
  c.task.obstacles = "3,5,8"
  c.task.sft_wander_prob = 0.2
  c.task.sft_blind_prob = 0.15
  c.sft.steps = 250
  c.sft.batch_size = 64
  c.sft.learning_rate = 1e-3
  c.train.steps = 150
  c.train.learning_rate = 2e-4
  c.rl.group_size = 8
  c.rl.prompts_per_step = 32
  c.sampling.temperature = 1.0
  c.algorithm.name = "grpo"
  c.eval.every = 25
  c.eval.num_prompts = 384  # 128 scenes per difficulty level
  c.checkpoint.every = 150
  c.log.tensorboard = False
  return c


def _config(overrides: dict[str, str]):
  from rl_jax import config as config_lib

  cd = config_lib.load_config_file(os.path.abspath(__file__))
  return config_lib.from_configdict(config_lib.apply_overrides(cd, overrides))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--arms", default="grpo,dr_grpo", help=f"of {', '.join(ARMS)}")
  parser.add_argument(
    "--seeds",
    default="0",
    help="RL seeds, comma-separated (one warm start); runs of other "
    "seeds already in OUT are kept and averaged in",
  )
  parser.add_argument("--out", default=os.path.join("runs", "nord"))
  parser.add_argument(
    "--set", action="append", default=[], help="extra config override FIELD=VALUE (repeatable)"
  )
  parser.add_argument("--replot", action="store_true", help="remake plot and table from OUT")
  parser.add_argument(
    "--reevaluate", action="store_true", help="redo the per-difficulty evaluation of OUT's runs"
  )
  args = parser.parse_args(argv)
  if args.replot or args.reevaluate:
    with open(os.path.join(args.out, "nord.json")) as f:
      results = json.load(f)
    if args.reevaluate:
      cfg = _config(dict(s.split("=", 1) for s in args.set))
      results["levels"] = _per_level(cfg, os.path.join(args.out, "warm_start"), results["runs"])
      with open(os.path.join(args.out, "nord.json"), "w") as f:
        json.dump(results, f, indent=2)
    return _report(results, args.out)
  extra = dict(s.split("=", 1) for s in args.set)
  arms = [a for a in args.arms.split(",") if a]
  seeds = [int(s) for s in args.seeds.split(",") if s]
  unknown = sorted(set(arms) - set(ARMS))
  if unknown:
    parser.error(f"unknown arm(s) {unknown}; known: {', '.join(ARMS)}")

  from rl_jax import loop
  from rl_jax.metrics import read_jsonl

  t_start = time.time()
  os.makedirs(args.out, exist_ok=True)
  warm = os.path.join(args.out, "warm_start")
  if not os.path.exists(os.path.join(warm, "reference")):
    print(f"== warm start (shared by every arm) -> {warm}", flush=True)
    loop.run_sft_only(_config(extra), warm)
  runs, summary_path = {}, os.path.join(args.out, "nord.json")
  if os.path.exists(summary_path):  # keep earlier runs (other seeds); rerun ones are replaced
    with open(summary_path) as f:
      runs = {k: r for k, r in json.load(f)["runs"].items() if os.path.isdir(r["workdir"])}
  for arm in arms:
    for seed in seeds:
      name = f"{arm}/seed{seed}"
      workdir = os.path.join(args.out, arm, f"seed{seed}")
      if os.path.exists(workdir):
        shutil.rmtree(workdir)
      shutil.copytree(os.path.join(warm, "reference"), os.path.join(workdir, "reference"))
      cfg = _config({**extra, **ARMS[arm], "seed": str(seed)})
      print(f"== {name}: {cfg.train.steps} RL steps -> {workdir}", flush=True)
      t0 = time.time()
      with open(os.devnull, "w") as quiet:
        loop.run(cfg, workdir, stream=quiet, log=lambda m: None)
      evals = read_jsonl(os.path.join(workdir, "eval.jsonl"))
      runs[name] = dict(
        arm=arm,
        seed=seed,
        workdir=workdir,
        steps=[e["step"] for e in evals],
        score=[e["reward_mean"] for e in evals],
        best=[e["accuracy"] for e in evals],
        wall_s=time.time() - t0,
      )
      print(
        f"   {name}: held-out mean score {evals[0]['reward_mean']:.4f} -> "
        f"{evals[-1]['reward_mean']:.4f} in {time.time() - t0:.0f} s",
        flush=True,
      )

  print("== per-difficulty evaluation", flush=True)
  levels = _per_level(_config(extra), warm, runs)
  arms = [a for a in ARMS if any(r["arm"] == a for r in runs.values())]
  seeds = sorted({r["seed"] for r in runs.values()})
  results = dict(runs=runs, levels=levels, wall_s=time.time() - t_start, arms=arms, seeds=seeds)
  with open(summary_path, "w") as f:
    json.dump(results, f, indent=2)
  return _report(results, args.out)


def _report(results: dict, out: str) -> int:
  _plot(results, os.path.join(out, "nord.png"))
  table = _table(results)
  with open(os.path.join(out, "nord.md"), "w") as f:
    f.write(table)
  print(table, flush=True)
  return 0


def _per_level(cfg, warm: str, runs: dict) -> dict:
  """{policy: {"score": [per level], "best": [per level]}}: greedy held-out mean score and
  share of best plans per difficulty level, of the warm start ("before") and each run's final
  policy; one experiment built, equal-size level subsets (one compilation)."""
  import jax
  import numpy as np

  from rl_jax import loop
  from rl_jax.checkpoint import Checkpointer
  from rl_jax.tasks import sft_target
  from rl_jax.tasks.driving import levels_of

  exp = loop.Experiment.build(cfg)
  heldout = exp.task.heldout_examples(cfg.eval.num_prompts)
  level_N = levels_of(heldout)
  subsets = [[ex for ex, lv in zip(heldout, level_N) if lv == k] for k in range(len(LEVELS))]
  init = exp.policy.init_params(cfg.seed, exp.mesh)
  reference = Checkpointer(warm).restore_reference(init)
  policies = {"before": reference}
  for name, run in runs.items():
    ckpt = Checkpointer(run["workdir"])
    state, _, _ = ckpt.restore(None, exp.rl_state(reference), jax.random.key(cfg.seed))
    policies[name] = exp.step.policy_params(state, reference)
    ckpt.close()
  out = {}
  for name, params in policies.items():
    evals = [exp.evaluate(params, sub) for sub in subsets]
    out[name] = dict(
      score=[float(e["reward_mean"]) for e in evals],
      best=[float(e["accuracy"]) for e in evals],
      collision=[float(e.get("collision_mean", float("nan"))) for e in evals],
    )
  best = [float(np.mean([ex.meta.best_score for ex in sub])) for sub in subsets]
  demo = exp.task.score(heldout, [sft_target(exp.task, ex) for ex in heldout])["reward"]
  out["optimal"] = dict(score=best, best=[1.0] * len(subsets))
  out["demonstrator"] = dict(
    score=[float(demo[level_N == k].mean()) for k in range(len(subsets))], best=[]
  )
  return out


def _arm_mean(results: dict, arm: str, key: str) -> list[float]:
  """The per-level `key` of `arm`'s final policies, averaged over its seeds."""
  import numpy as np

  rows = [results["levels"][n][key] for n, r in results["runs"].items() if r["arm"] == arm]
  return [float(x) for x in np.mean(rows, axis=0)]


def _run_order(item) -> tuple[int, int]:
  return list(ARMS).index(item[1]["arm"]), item[1]["seed"]


def _plot(results: dict, path: str) -> None:
  """Left: held-out mean score vs step, one line per run (color: arm). Right: the gain of each
  arm's final policies over the warm start by difficulty (bar: mean over seeds; dots: seeds),
  and the headroom to the best plans (grey)."""
  import numpy as np
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(10, 4))
  FigureCanvasAgg(fig)
  ax, bars = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
  color = {arm: f"C{i}" for i, arm in enumerate(ARMS)}
  for name, r in sorted(results["runs"].items(), key=_run_order):
    ax.plot(r["steps"], r["score"], marker="o", ms=3, color=color[r["arm"]], label=name)
  ax.set_xlabel("RL step")
  ax.set_ylabel("held-out greedy mean score")
  ax.set_title("driving: GRPO vs Dr. GRPO from one weak warm start")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  levels, arms = results["levels"], results["arms"]
  before = np.array(levels["before"]["score"])
  x, width = np.arange(len(LEVELS)), 0.8 / (len(arms) + 1)
  headroom = np.array(levels["optimal"]["score"]) - before
  bars.bar(x - 0.4 + width / 2, headroom, width, color="0.8", label="headroom to best plan")
  for i, arm in enumerate(arms, start=1):
    at = x - 0.4 + (i + 0.5) * width
    gain = np.array(_arm_mean(results, arm, "score")) - before
    bars.bar(at, gain, width, color=color[arm], label=arm)
    for name in (n for n, r in results["runs"].items() if r["arm"] == arm):
      bars.plot(at, np.array(levels[name]["score"]) - before, "k.", ms=4)
  bars.axhline(0, color="k", lw=0.5)
  bars.set_xticks(x, LEVELS)
  bars.set_ylabel("held-out mean score gain over the warm start")
  bars.set_title("by difficulty (final policies; dots: seeds)")
  bars.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=80)


def _table(results: dict) -> str:
  levels, arms = results["levels"], results["arms"]
  before = levels["before"]["score"]
  seeds = ", ".join(map(str, results["seeds"]))
  lines = [
    f"Held-out greedy mean score (continuous, in [0, 1]) by difficulty, 128 scenes per level; "
    f"RL seed(s) {seeds} (arms: mean over seeds). Gains are over the shared warm start.",
    "",
    "| difficulty | best plan | myopic planner, no noise | before RL | "
    + " | ".join(f"{a} (gain)" for a in arms)
    + " |",
    "|---|---|---|---|" + "---|" * len(arms),
  ]
  per_arm = {a: _arm_mean(results, a, "score") for a in arms}
  for k, level in enumerate(LEVELS):
    cells = [f"{per_arm[a][k]:.3f} ({per_arm[a][k] - before[k]:+.3f})" for a in arms]
    lines.append(
      f"| {level} | {levels['optimal']['score'][k]:.3f} | "
      f"{levels['demonstrator']['score'][k]:.3f} | {before[k]:.3f} | " + " | ".join(cells) + " |"
    )
  mean = lambda xs: sum(xs) / len(xs)
  cells = [f"{mean(per_arm[a]):.3f} ({mean(per_arm[a]) - mean(before):+.3f})" for a in arms]
  lines.append(
    f"| all | {mean(levels['optimal']['score']):.3f} | "
    f"{mean(levels['demonstrator']['score']):.3f} | {mean(before):.3f} | "
    + " | ".join(cells)
    + " |"
  )
  keys = [k for k in ("best", "collision") if k in levels["before"]]
  title = {"best": "share of best plans", "collision": "collision rate"}
  lines += [
    "",
    "| difficulty | "
    + " | ".join(f"{title[k]}: {n}" for k in keys for n in ["before", *arms])
    + " |",
  ]
  lines.append("|---|" + "---|" * (len(keys) * (len(arms) + 1)))
  for k, level in enumerate(LEVELS):
    cells = [
      f"{(levels['before'][key] if n == 'before' else _arm_mean(results, n, key))[k]:.1%}"
      for key in keys
      for n in ["before", *arms]
    ]
    lines.append(f"| {level} | " + " | ".join(cells) + " |")
  lines += [
    "",
    "| run | gain easy | gain medium | gain hard | gain all | curve (step: score) | wall (s) |",
  ]
  lines.append("|---|---|---|---|---|---|---|")
  for name, r in sorted(results["runs"].items(), key=_run_order):
    gain = [a - b for a, b in zip(levels[name]["score"], before)]
    curve = ", ".join(f"{s}: {v:.3f}" for s, v in zip(r["steps"], r["score"]))
    cells = " | ".join(f"{g:+.3f}" for g in [*gain, mean(gain)])
    lines.append(f"| {name} | {cells} | {curve} | {r['wall_s']:.0f} |")
  lines.append(f"\nTotal wall time {results['wall_s']:.0f} s.")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  sys.exit(main())
