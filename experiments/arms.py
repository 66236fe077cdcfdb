"""Shared machinery of the comparison experiments: several arms (config overrides) trained for
the same budget from one supervised warm start, then a plot and a markdown table.

Every arm starts from the same warm start (run once, then copied into the arm's workdir as its
reference policy), sees the same prompts in the same order (the data position is the step),
and is evaluated greedily on the same held-out prompts.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def command_line(argv, doc: str, arms: Mapping[str, Mapping[str, str]], name: str, **flags):
  """The command line every arms experiment shares: --arms (a comma list of `arms`' names),
  --steps, --eval_every, --out (default runs/`name`) and repeatable --set FIELD=VALUE; `flags`
  adds experiment flags as {name: default} (their values arrive as strings, meant as config
  values). Returns (args, common overrides with eval.every, {arm: overrides} chosen)."""
  import argparse  # pylint: disable=import-outside-toplevel

  parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
  parser.add_argument("--arms", default=",".join(arms))
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--eval_every", type=int, default=25)
  parser.add_argument("--out", default=os.path.join("runs", name))
  parser.add_argument("--set", action="append", default=[], help="extra override FIELD=VALUE")
  for flag, default in flags.items():
    parser.add_argument(f"--{flag}", default=str(default))
  args = parser.parse_args(argv)
  unknown = [a for a in args.arms.split(",") if a and a not in arms]
  if unknown:
    parser.error(f"unknown arms {unknown}; choose from {sorted(arms)}")
  common = dict(s.split("=", 1) for s in args.set)
  common["eval.every"] = str(args.eval_every)
  return args, common, {a: arms[a] for a in args.arms.split(",") if a}


def config(base: str, overrides: Mapping[str, str]):
  """The validated RunConfig of experiments/`base` with `overrides` (FIELD -> string)."""
  from rl_jax import config as config_lib

  cd = config_lib.load_config_file(os.path.join(ROOT, "experiments", base))
  return config_lib.from_configdict(config_lib.apply_overrides(cd, dict(overrides)))


def run_arms(
  base: str,
  arms: Mapping[str, Mapping[str, str]],
  *,
  steps: int,
  out: str,
  common: Mapping[str, str] = (),
  log=print,
) -> dict[str, dict]:
  """Runs each arm (name -> its overrides on top of `common`) for `steps` RL steps from the
  shared warm start in OUT/warm_start; returns {name: result} (also merged into OUT/results.json,
  so arms run one command at a time accumulate). A result holds the eval curve of every
  held-out metric (`evals`: a list of eval.jsonl rows), the per-step training means of
  `metrics.jsonl` (`train`), the wall time and the median step time."""
  from rl_jax import loop
  from rl_jax.metrics import read_jsonl

  common = dict(common, **{"train.steps": str(steps), "checkpoint.every": str(steps)})
  common.setdefault("log.tensorboard", "false")
  os.makedirs(out, exist_ok=True)
  warm = os.path.join(out, "warm_start")
  if not os.path.exists(os.path.join(warm, "reference")):
    log(f"== warm start (shared by all arms) -> {warm}")
    loop.run_sft_only(config(base, common), warm)
  path = os.path.join(out, "results.json")
  results = {}
  if os.path.exists(path):
    with open(path) as f:
      results = json.load(f)
  for name, overrides in arms.items():
    workdir = os.path.join(out, name)
    if os.path.exists(workdir):
      shutil.rmtree(workdir)
    shutil.copytree(os.path.join(warm, "reference"), os.path.join(workdir, "reference"))
    log(f"== {name}: {steps} RL steps -> {workdir}")
    t0 = time.time()
    with open(os.devnull, "w") as quiet:
      loop.run(config(base, dict(common, **overrides)), workdir, stream=quiet)
    evals = read_jsonl(os.path.join(workdir, "eval.jsonl"))
    rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    results[name] = dict(
      overrides=dict(overrides),
      evals=evals,
      train=rows,
      wall_s=time.time() - t0,
      step_s=sorted(r["step_s"] for r in rows)[len(rows) // 2],
    )
    first, last = evals[0], evals[-1]
    log(
      f"   {name}: held-out accuracy {first['accuracy']:.1%} -> {last['accuracy']:.1%} in "
      f"{results[name]['wall_s']:.0f} s"
    )
  with open(path, "w") as f:
    json.dump(results, f, indent=1)
  return results


def plot(results: Mapping[str, dict], path: str, panels: Sequence[tuple[str, str]], title: str):
  """One panel per (eval metric, axis label) against the RL step, a line per arm."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(4.2 * len(panels), 3.8))
  FigureCanvasAgg(fig)
  for i, (key, label) in enumerate(panels):
    ax = fig.add_subplot(1, len(panels), i + 1)
    for name, r in results.items():
      ax.plot([e["step"] for e in r["evals"]], [e[key] for e in r["evals"]], marker="o", label=name)
    ax.set_xlabel("RL step")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    if i == 0:
      ax.legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def table(results: Mapping[str, dict], columns: Sequence[tuple[str, str]]) -> str:
  """A markdown table, one row per arm: the final eval's `columns` (eval metric, header; a
  metric name ending in "%" is shown as a percentage), the wall time and the median step."""
  head = ["arm", *(h for _, h in columns), "wall (s)", "median step (s)"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, r in results.items():
    last = r["evals"][-1]
    cells = [f"{last[k]:.1%}" if h.endswith("%") else f"{last[k]:.3f}" for k, h in columns]
    lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['wall_s']:.0f} | {r['step_s']:.2f} |")
  return "\n".join(lines) + "\n"


def write(out: str, name: str, text: str) -> int:
  """Writes the table `text` to OUT/`name`.md, prints it, and returns 0 (the exit status)."""
  with open(os.path.join(out, f"{name}.md"), "w") as f:
    f.write(text)
  print(text)
  return 0
