"""Runs several algorithm presets for the same budget from one shared warm start, and writes a
plot of held-out accuracy against step and a table (final accuracy, wall time, mean completion
length).

  python experiments/compare_algorithms.py --steps=60 --out=runs/compare
  python experiments/compare_algorithms.py --task=countdown --presets=grpo,dapo --steps=40

Every preset starts from the same supervised warm start (run once, then copied into each
preset's workdir as its reference policy), sees the same prompts in the same order, and is
evaluated greedily on the same held-out prompts (experiments/arms.py). Writes OUT/compare.png
and OUT/compare.md.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import arms as arms_lib  # noqa: E402  (experiments/arms.py)

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


def preset_overrides(preset: str, task: str = "arithmetic") -> dict[str, str]:
  """The config overrides of a preset's arm (`dapo_no_ds`: DAPO without dynamic sampling)."""
  if preset == "ppo":
    return {"algorithm.name": "ppo", "train.critic_learning_rate": "1e-3"}  # as experiments/ppo.py
  if preset in ("dapo", "dapo_no_ds"):
    out = {"algorithm.name": "dapo"}
    if task == "arithmetic":  # as experiments/dapo.py: the overlong ramp past the answers
      out.update({"sampling.max_new_tokens": "8", "algorithm.overlong_cache_len": "3"})
    if preset == "dapo_no_ds":
      out["algorithm.dynamic_sampling"] = "false"
    return out
  return {"algorithm.name": preset}


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
  common = dict(s.split("=", 1) for s in args.set)
  common["eval.every"] = str(args.eval_every)
  arms = {p: preset_overrides(p, args.task) for p in args.presets.split(",") if p}
  base = "countdown.py" if args.task == "countdown" else "default.py"
  results = arms_lib.run_arms(base, arms, steps=args.steps, out=args.out, common=common)
  title = f"{args.task}: presets from one warm start, {args.steps} steps"
  panels = [("accuracy", "held-out greedy accuracy")]
  arms_lib.plot(results, os.path.join(args.out, "compare.png"), panels, title)
  table = _table(results, args)
  return arms_lib.write(args.out, "compare", table)


def _table(results, args) -> str:
  """Final held-out accuracy, wall time, median step and mean completion length per preset."""
  before = next(iter(results.values()))["evals"][0]["accuracy"]
  lines = [
    f"Task `{args.task}`, {args.steps} RL steps per preset, shared warm start "
    f"(held-out accuracy before RL: {before:.1%}).",
    "",
    "| preset | final held-out accuracy | wall time (s) | median step (s) | "
    "mean completion length |",
    "|---|---|---|---|---|",
  ]
  for name, r in sorted(results.items(), key=lambda kv: -kv[1]["evals"][-1]["accuracy"]):
    length = sum(row["response_len_mean"] for row in r["train"]) / len(r["train"])
    final = r["evals"][-1]["accuracy"]
    lines.append(f"| {name} | {final:.1%} | {r['wall_s']:.0f} | {r['step_s']:.2f} | {length:.2f} |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  sys.exit(main())
