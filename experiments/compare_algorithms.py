"""Runs several algorithm presets for the same budget from one shared warm start, and writes a
plot of held-out accuracy against step and a table (final accuracy, wall time, mean completion
length).

  python experiments/compare_algorithms.py --steps=60 --out=runs/compare
  python experiments/compare_algorithms.py --task=countdown --presets=grpo,dapo --steps=40

Every preset starts from the same supervised warm start (run once, then copied into each
preset's workdir as its reference policy), sees the same prompts in the same order, and is
evaluated greedily on the same held-out prompts. Writes OUT/compare.png and OUT/compare.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DEFAULT_PRESETS = (
  "ppo",
  "grpo",
  "dr_grpo",
  "dapo",
  "dapo_no_ds",
  "gspo",
  "gspo_token",
  "rloo",
  "reinforce_pp",
  "reinforce_pp_baseline",
)


def _config(task: str, preset: str, steps: int, extra: dict[str, str]):
  from rl_jax import config as config_lib

  base = os.path.join(ROOT, "experiments", "countdown.py" if task == "countdown" else "default.py")
  cd = config_lib.load_config_file(base)
  overrides = {
    "train.steps": str(steps),
    "checkpoint.every": str(steps),
    "log.tensorboard": "false",
  }
  if preset == "ppo":
    overrides["train.critic_learning_rate"] = "1e-3"  # as experiments/ppo.py
  if preset in ("dapo", "dapo_no_ds"):  # as experiments/dapo.py, overlong ramp past the answers
    overrides.update(
      {
        "algorithm.name": "dapo",
        "sampling.max_new_tokens": "8",
        "algorithm.overlong_cache_len": "3",
      }
    )
    if preset == "dapo_no_ds":
      overrides["algorithm.dynamic_sampling"] = "false"
  else:
    overrides["algorithm.name"] = preset
  overrides.update(extra)
  return config_lib.from_configdict(config_lib.apply_overrides(cd, overrides))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--presets", default=",".join(DEFAULT_PRESETS))
  parser.add_argument("--task", default="arithmetic", choices=["arithmetic", "countdown"])
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--eval_every", type=int, default=20)
  parser.add_argument("--out", default=os.path.join("runs", "compare"))
  parser.add_argument(
    "--set", action="append", default=[], help="extra config override FIELD=VALUE (repeatable)"
  )
  args = parser.parse_args(argv)
  extra = dict(s.split("=", 1) for s in args.set)
  extra["eval.every"] = str(args.eval_every)
  presets = [p for p in args.presets.split(",") if p]

  from rl_jax import loop
  from rl_jax.metrics import read_jsonl

  os.makedirs(args.out, exist_ok=True)
  warm = os.path.join(args.out, "warm_start")
  if not os.path.exists(os.path.join(warm, "reference")):
    print(f"== warm start (shared by all presets) -> {warm}", flush=True)
    loop.run_sft_only(_config(args.task, "grpo", args.steps, extra), warm)

  results = {}
  summary_path = os.path.join(args.out, "compare.json")
  if os.path.exists(summary_path):  # keep earlier presets' results; rerun ones are replaced
    with open(summary_path) as f:
      results = json.load(f)
  for preset in presets:
    workdir = os.path.join(args.out, preset)
    if os.path.exists(workdir):
      shutil.rmtree(workdir)
    shutil.copytree(os.path.join(warm, "reference"), os.path.join(workdir, "reference"))
    print(f"== {preset}: {args.steps} RL steps -> {workdir}", flush=True)
    t0 = time.time()
    with open(os.devnull, "w") as quiet:
      loop.run(_config(args.task, preset, args.steps, extra), workdir, stream=quiet)
    wall = time.time() - t0
    evals = read_jsonl(os.path.join(workdir, "eval.jsonl"))
    rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    results[preset] = dict(
      steps=[e["step"] for e in evals],
      accuracy=[e["accuracy"] for e in evals],
      final=evals[-1]["accuracy"],
      before=evals[0]["accuracy"],
      wall_s=wall,
      len_mean=sum(r["response_len_mean"] for r in rows) / len(rows),
      step_s=sorted(r["step_s"] for r in rows)[len(rows) // 2],
    )
    print(
      f"   {preset}: held-out {results[preset]['before']:.1%} -> "
      f"{results[preset]['final']:.1%} in {wall:.0f} s",
      flush=True,
    )

  with open(summary_path, "w") as f:
    json.dump(results, f, indent=2)
  _plot(results, os.path.join(args.out, "compare.png"), args)
  table = _table(results, args)
  with open(os.path.join(args.out, "compare.md"), "w") as f:
    f.write(table)
  print(table)
  return 0


def _plot(results, path, args):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(7, 4.2))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  for name, r in results.items():
    ax.plot(r["steps"], r["accuracy"], marker="o", label=name)
  ax.set_xlabel("RL step")
  ax.set_ylabel("held-out greedy accuracy")
  ax.set_title(f"{args.task}: presets from one warm start, {args.steps} steps")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def _table(results, args) -> str:
  lines = [
    f"Task `{args.task}`, {args.steps} RL steps per preset, shared warm start "
    f"(held-out accuracy before RL: {next(iter(results.values()))['before']:.1%}).",
    "",
    "| preset | final held-out accuracy | wall time (s) | median step (s) | "
    "mean completion length |",
    "|---|---|---|---|---|",
  ]
  for name, r in sorted(results.items(), key=lambda kv: -kv[1]["final"]):
    lines.append(
      f"| {name} | {r['final']:.1%} | {r['wall_s']:.0f} | {r['step_s']:.2f} | {r['len_mean']:.2f} |"
    )
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  sys.exit(main())
