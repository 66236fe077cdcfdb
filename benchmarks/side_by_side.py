"""Runs W1-W3 for rl_jax and W1/W2 for the peers (TRL / Hugging Face, Tunix) on this machine,
one process after another, and prints one table with the ratios; with `--workloads=w4,w5`, the
real-vocabulary workloads for rl_jax and TRL + PEFT / Hugging Face `generate`.

  bash benchmarks/peers/setup.sh              # once: the peers' virtual environments
  python benchmarks/side_by_side.py           # ~10 min per round on a 2-core CPU
  python benchmarks/side_by_side.py --rounds 3 --json side_by_side.json
  python benchmarks/side_by_side.py --workloads=w4,w5 --peers=trl   # ~30 min on a 2-core CPU

W4 and W5 load one Hugging Face folder (`--folder`, default benchmarks/.w45, git-ignored),
which TRL's script writes once (random weights of the truncated Qwen2.5-0.5B shape) so that
every framework reads the same file; without TRL's venv rl_jax runs them on its own random
weights. W5 runs in a process of its own for each framework, so that the peak RSS reported is
W5's alone; its targets are <= 0.5x TRL + PEFT's step time and <= 0.7x its peak memory, W4's
>= 2x Hugging Face `generate` tokens/s.

Each round starts a fresh process per framework (rl_jax via `rl-jax bench`, the peers via their
own venvs' Python), in the order rl_jax, TRL, Tunix. With several rounds every number is the
median of the per-process medians, and the spread over processes is shown, because absolute
times on shared machines drift between processes by 10-20%. A peer whose venv is missing is
skipped with a note. Ratios are rl_jax against each peer: W1 step time (lower is better, target
<= 0.5x the faster peer), W2 tokens/s (higher is better, targets >= 2x HF `generate` and
>= 1.5x Tunix); W3 is rl_jax's fraction of the float32 matmul rate (target >= 50%).

`rl-jax bench` runs under tcmalloc when the machine has it (rl_jax/allocator.py; its JSON
records the allocator). The peers run as they ship, on glibc's malloc; `--peers-allocator
tcmalloc` preloads the same library for them, to see what the allocator alone is worth to them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from rl_jax import allocator  # this script runs in rl_jax's environment

HERE = os.path.dirname(os.path.abspath(__file__))
VENVS = os.environ.get("RL_JAX_PEER_VENVS", os.path.join(HERE, ".venvs"))
PEERS = {"trl": "TRL 1.16 / HF generate", "tunix": "Tunix 0.1.7"}


def _run(name: str, cmd: list[str], env=None) -> dict | None:
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "out.json")
    t0 = time.time()
    print(f"  {name}: {' '.join(cmd[-4:])} ...", flush=True)
    proc = subprocess.run(cmd + ["--json", out], capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not os.path.exists(out):
      print(f"  {name} FAILED (exit {proc.returncode}):\n{proc.stderr[-3000:]}", flush=True)
      return None
    with open(out) as f:
      result = json.load(f)
    print(f"  {name}: done in {time.time() - t0:.0f} s", flush=True)
    return result


def peer_environment(allocator_choice: str) -> dict | None:
  """The peers' environment: None (inherited) for "stock", LD_PRELOAD of tcmalloc for
  "tcmalloc"."""
  if allocator_choice == "stock":
    return None
  library = allocator.find_tcmalloc()
  if library is None:
    raise SystemExit(
      "--peers-allocator tcmalloc: no tcmalloc on this machine (apt install libtcmalloc-minimal4)"
    )
  return allocator.with_preload(os.environ, library)


def folder_ready(folder: str) -> bool:
  """Makes the W4 / W5 folder with TRL's script when it has no config.json (the random weights
  every framework then loads); False when there is no folder and no TRL venv to make one."""
  if os.path.exists(os.path.join(folder, "config.json")):
    return True
  python = os.path.join(VENVS, "trl", "bin", "python")
  if not os.path.exists(python):
    return False
  print(f"  W4/W5 folder {folder}: making it with TRL's script ...", flush=True)
  code = (
    "import sys; sys.path.insert(0, sys.argv[1]); import trl_bench; "
    "trl_bench.ensure_folder(sys.argv[2])"
  )
  subprocess.run([python, "-c", code, os.path.join(HERE, "peers"), folder], check=True)
  return True


def _split(workloads: str, allowed) -> tuple[list[str], list[str]]:
  """The workloads among `allowed`: (those run together, those run alone). W5 runs alone."""
  chosen = [w for w in workloads.split(",") if w in allowed]
  return [w for w in chosen if w != "w5"], [w for w in chosen if w == "w5"]


def _run_parts(name: str, cmd, workloads: str, allowed, folder, env=None) -> dict | None:
  """One process for the workloads run together, then one for W5; their results merged."""
  together, alone = _split(workloads, allowed)
  merged = None
  for part in (together, alone):
    if not part:
      continue
    extra = ["--folder", folder] if folder and {"w4", "w5"} & set(part) else []
    result = _run(name, cmd(",".join(part)) + extra, env=env)
    if result is not None:
      merged = {**(merged or {}), **result}
  return merged


RL_JAX_WORKLOADS = ("w1", "w2", "w3", "w1async", "w1floor", "w4", "w5")
PEER_WORKLOADS = {"trl": ("w1", "w2", "w4", "w5"), "tunix": ("w1", "w2")}


def run_round(
  peers: list[str], workloads: str, peer_env: dict | None = None, folder: str | None = None
) -> dict:
  if folder is not None and not folder_ready(folder):
    print(f"  no W4/W5 folder at {folder} and no TRL venv to make it: rl_jax's random weights")
    folder = None
  results = {}
  results["rl_jax"] = _run_parts(
    "rl_jax",
    lambda w: [sys.executable, "-m", "rl_jax.cli", "bench", f"--workloads={w}"],
    workloads,
    RL_JAX_WORKLOADS,
    folder,
  )
  for peer in peers:
    python = os.path.join(VENVS, peer, "bin", "python")
    if not os.path.exists(python):
      print(
        f"  {peer}: no venv at {os.path.dirname(os.path.dirname(python))} "
        f"(bash benchmarks/peers/setup.sh {peer}); skipped",
        flush=True,
      )
      continue
    if any(_split(workloads, PEER_WORKLOADS[peer])):
      results[peer] = _run_parts(
        peer,
        lambda w, p=peer, py=python: [
          py,
          os.path.join(HERE, "peers", f"{p}_bench.py"),
          "--workloads",
          w,
        ],
        workloads,
        PEER_WORKLOADS[peer],
        folder,
        env=peer_env,
      )
  return results


def _get(result: dict | None, *path):
  for key in path:
    if result is None or key not in result:
      return None
    result = result[key]
  return result


def _combine(values: list) -> tuple[float, float, float] | None:
  values = [v for v in values if v is not None]
  if not values:
    return None
  return statistics.median(values), min(values), max(values)


def summarise(rounds: list[dict]) -> dict:
  """Median over processes of each framework's per-process medians, with the spread."""
  metrics = {
    "w1_s": ("w1", "seconds", "median"),
    "w1_gen_s": ("w1", "generation_s"),
    "w1async_s": ("w1async", "seconds", "median"),
    "w1_ref_s": ("w1", "reference_s"),
    "w1_update_s": ("w1", "update_s"),
    "w1floor_s": ("w1floor", "step_s"),
    "w1_rss_gib": ("w1", "peak_rss_gib"),
    "w2_tok_s": ("w2", "tokens_per_s"),
    "w3_tok_s": ("w3", "tokens_per_s"),
    "w3_frac": ("w3", "fraction_of_matmul_rate"),
    "matmul_gflops": ("matmul_gflops",),
    "w4_tok_s": ("w4", "tokens_per_s"),
    "w5_s": ("w5", "seconds", "median"),
    "w5_gen_s": ("w5", "generation_s"),
    "w5_rss_gib": ("w5", "peak_rss_gib"),
  }
  frameworks = sorted({fw for r in rounds for fw in r if r[fw] is not None})
  return {
    fw: {m: _combine([_get(r.get(fw), *path) for r in rounds]) for m, path in metrics.items()}
    for fw in frameworks
  }


def _fmt(v, spec, spread=True):
  if v is None:
    return "-"
  med, lo, hi = v
  s = format(med, spec)
  return f"{s} ({format(lo, spec)}-{format(hi, spec)})" if spread and lo != hi else s


def table(summary: dict) -> str:
  rj = summary.get("rl_jax", {})
  lines = [
    "| workload | rl_jax | "
    + " | ".join(PEERS[p] for p in PEERS if p in summary)
    + " | rl_jax / peer |",
    "|---|---|" + "---|" * sum(p in summary for p in PEERS) + "---|",
  ]

  def row(label, metric, spec, better_low):
    if all(summary[fw].get(metric) is None for fw in summary):
      return  # a workload this run did not ask for (or that every framework failed)
    cells = [_fmt(rj.get(metric), spec)]
    ratios = []
    for p in PEERS:
      if p not in summary:
        continue
      v = summary[p].get(metric)
      cells.append(_fmt(v, spec))
      if v is not None and rj.get(metric) is not None:
        ratios.append(f"{rj[metric][0] / v[0]:.2f}x {p}")
    lines.append(f"| {label} | " + " | ".join(cells) + " | " + ", ".join(ratios) + " |")

  row("W1 GRPO step, s (lower is better)", "w1_s", ".2f", True)
  if rj.get("w1async_s"):
    peers = [p for p in PEERS if p in summary]
    ratios = ", ".join(
      f"{rj['w1async_s'][0] / summary[p]['w1_s'][0]:.2f}x {p}"
      for p in peers
      if summary[p].get("w1_s")
    )
    lines.append(
      f"| W1 in rl_jax's one-step-off mode (`train.async_rollout`), s | "
      f"{_fmt(rj['w1async_s'], '.2f')} | "
      + " | ".join("-" for _ in peers)
      + f" | {ratios} (vs the peers' synchronous step) |"
    )
  row("W1 generation, s", "w1_gen_s", ".2f", True)
  if rj.get("w1_update_s"):
    lines.append(
      f"| W1 reference pass + advantages; update, s | "
      f"{_fmt(rj.get('w1_ref_s'), '.2f')}; {_fmt(rj['w1_update_s'], '.2f')} | "
      + " | ".join("-" for p in PEERS if p in summary)
      + " | |"
    )
  if rj.get("w1floor_s"):
    lines.append(
      f"| W1's dense matmuls alone (the float32 floor, `w1floor`), s | "
      f"{_fmt(rj['w1floor_s'], '.2f')} | " + " | ".join("-" for p in PEERS if p in summary) + " | |"
    )
  row("W1 peak RSS, GiB", "w1_rss_gib", ".2f", True)
  row("W2 sampling, tokens/s (higher is better)", "w2_tok_s", ",.0f", False)
  if rj.get("w4_tok_s"):
    row("W4 sampling at a 151,936 vocabulary, top-p 0.95, tokens/s", "w4_tok_s", ",.1f", False)
  if rj.get("w5_s"):
    row("W5 GRPO + LoRA step at that vocabulary, s", "w5_s", ".2f", True)
    row("W5 generation, s", "w5_gen_s", ".2f", True)
    row("W5 peak RSS, GiB", "w5_rss_gib", ".2f", True)
  if rj.get("w3_frac"):
    lines.append(
      f"| W3 train, tokens/s; fraction of the matmul rate | "
      f"{_fmt(rj.get('w3_tok_s'), ',.0f')}; {_fmt(rj['w3_frac'], '.1%')} of "
      f"{_fmt(rj.get('matmul_gflops'), '.0f', False)} GFLOP/s | "
      + " | ".join("-" for p in PEERS if p in summary)
      + " | |"
    )
  return "\n".join(lines)


def verdict(summary: dict) -> list[str]:
  """The targets of shared/benchmarks.md, checked."""
  rj, out = summary.get("rl_jax", {}), []
  peers_w1 = [summary[p]["w1_s"][0] for p in PEERS if p in summary and summary[p].get("w1_s")]
  if rj.get("w1_s") and peers_w1:
    r = rj["w1_s"][0] / min(peers_w1)
    out.append(
      f"W1: {r:.2f}x the faster peer's step time (target <= 0.50x): "
      f"{'met' if r <= 0.5 else 'NOT met'}"
    )
    if rj.get("w1async_s"):
      out.append(
        f"    (one-step-off mode, a different algorithm: {rj['w1async_s'][0] / min(peers_w1):.2f}x)"
      )
    if rj.get("w1floor_s"):
      out.append(
        f"    (W1's dense matmuls alone take {rj['w1floor_s'][0]:.2f} s here = "
        f"{rj['w1floor_s'][0] / min(peers_w1):.2f}x the faster peer's step)"
      )
  for p, target in (("trl", 2.0), ("tunix", 1.5)):
    if rj.get("w2_tok_s") and p in summary and summary[p].get("w2_tok_s"):
      r = rj["w2_tok_s"][0] / summary[p]["w2_tok_s"][0]
      out.append(
        f"W2: {r:.2f}x {PEERS[p]} (target >= {target}x): {'met' if r >= target else 'NOT met'}"
      )
  trl = summary.get("trl", {})
  if rj.get("w4_tok_s") and trl.get("w4_tok_s"):
    r = rj["w4_tok_s"][0] / trl["w4_tok_s"][0]
    out.append(f"W4: {r:.2f}x HF generate (target >= 2.0x): {'met' if r >= 2 else 'NOT met'}")
  for metric, what, target in (("w5_s", "step time", 0.5), ("w5_rss_gib", "peak memory", 0.7)):
    if rj.get(metric) and trl.get(metric):
      r = rj[metric][0] / trl[metric][0]
      out.append(
        f"W5: {r:.2f}x TRL + PEFT's {what} (target <= {target}x): "
        f"{'met' if r <= target else 'NOT met'}"
      )
  if rj.get("w3_frac"):
    f = rj["w3_frac"][0]
    out.append(
      f"W3: {f:.1%} of the matmul rate (target >= 50%): {'met' if f >= 0.5 else 'NOT met'}"
    )
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--rounds", type=int, default=1, help="processes per framework")
  parser.add_argument("--peers", default="trl,tunix", help="subset of trl,tunix ('' = none)")
  parser.add_argument(
    "--workloads",
    default="w1,w2,w3,w1async,w1floor",
    help="rl_jax workloads: w1,w2,w3,w1async,w1floor,w4,w5 (TRL runs the w1 / w2 / w4 / w5 "
    "among them, Tunix the w1 / w2)",
  )
  parser.add_argument(
    "--folder",
    default=os.path.join(HERE, ".w45"),
    help="W4 / W5: the Hugging Face folder every framework loads (made by TRL's script when "
    "it has no config.json)",
  )
  parser.add_argument(
    "--peers-allocator",
    choices=("stock", "tcmalloc"),
    default="stock",
    help="the peers' malloc: as they ship (glibc), or tcmalloc preloaded",
  )
  parser.add_argument("--json", default=None, help="write every process's results here")
  args = parser.parse_args(argv)
  peer_env = peer_environment(args.peers_allocator)
  peers = [p for p in args.peers.split(",") if p]
  unknown = set(peers) - set(PEERS)
  if unknown:
    parser.error(f"unknown peers {sorted(unknown)}; choose from {sorted(PEERS)}")
  unknown = set(args.workloads.split(",")) - set(RL_JAX_WORKLOADS)
  if unknown:
    parser.error(f"unknown workloads {sorted(unknown)}; choose from {list(RL_JAX_WORKLOADS)}")
  rounds = []
  for i in range(args.rounds):
    print(f"round {i + 1}/{args.rounds}", flush=True)
    folder = args.folder if {"w4", "w5"} & set(args.workloads.split(",")) else None
    rounds.append(run_round(peers, args.workloads, peer_env, folder))
  summary = summarise(rounds)
  machine = _get(rounds[0], "rl_jax", "machine") or {}
  print(
    f"\n{time.strftime('%Y-%m-%d')}, {machine.get('cpu', '?')}, nproc {os.cpu_count()}, "
    f"{args.rounds} process(es) per framework; medians (min-max over processes); allocator: "
    f"rl_jax {machine.get('allocator', '?')}, peers {args.peers_allocator}\n"
  )
  print(table(summary))
  print()
  for line in verdict(summary):
    print(line)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(
        dict(rounds=rounds, summary=summary, peers_allocator=args.peers_allocator), f, indent=2
      )
  return 0


if __name__ == "__main__":
  sys.exit(main())
