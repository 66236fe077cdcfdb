"""The B8 matrix (arXiv 2512.07611, "PPO vs GRPO vs DAPO, tuned"): {PPO+GAE, GRPO, DAPO, DAPO
without dynamic sampling} x group size {4, 8, 16} x KL weight {0, 0.01, 0.04} x loss
aggregation {token mean, sequence mean} on Countdown, from one shared warm start.

  python experiments/b8_matrix.py                                # all 72 cells
  python experiments/b8_matrix.py --subset=core                  # 14 cells, one factor at a time
  python experiments/b8_matrix.py --subset=quick --steps=10      # 4 cells, a smoke run
  python experiments/b8_matrix.py --subset=full --algos=grpo,dapo --group_sizes=4,16 --kls=0

Cells. `--subset=full` (the default) is the whole product. `--subset=core` is one factor at a
time around the centre (group size 8, KL weight 0.01, token mean), chosen so that each of the
paper's four findings has its slice: every algorithm at the centre (DAPO with and without
dynamic sampling side by side), group sizes 4 / 8 / 16 for GRPO and DAPO without dynamic
sampling, KL weights 0 / 0.01 / 0.04 for GRPO and PPO, and both aggregations for GRPO and DAPO
without dynamic sampling. `--subset=quick` is the four centre cells. `--algos`, `--group_sizes`,
`--kls` and `--aggs` then keep only the cells they list; `--seeds` repeats every cell.

Group size. The number of sampled sequences per step is held fixed (`--budget`, 64), so every
cell costs the same to sample and update: prompts per step = budget / G (16, 8, 4). A larger
group buys a better per-prompt baseline with fewer prompts per step. `--prompts_per_step`
instead fixes the prompts (and the budget grows with G).

What every cell sets. `algorithm.kl_coef` and `algorithm.aggregation` override the preset's
defaults (GRPO and DAPO put a k3 KL term in the loss; PPO folds a k1 KL into its token rewards,
its own convention). All cells sample at most 14 new tokens (Countdown's longest answer is 11
with EOS); DAPO adds its soft overlong penalty on lengths 12-14 (`overlong_cache_len` 3, the
ramp beyond every good answer, as experiments/dapo.py). `dapo_no_ds` is DAPO with
`algorithm.dynamic_sampling=false`. PPO trains its critic at `train.critic_learning_rate` 1e-3,
as experiments/ppo.py.

Resumable per cell. A finished cell writes OUT/cells/<cell>/result.json and is not run again
on a rerun; a killed cell resumes from its run's newest checkpoint (saved at mid-run and at
the end), and SIGTERM / Ctrl-C stops the matrix after the current step of the current cell,
with a checkpoint. The warm start (OUT/warm_start) is made once (resumable too). A rerun must keep
the settings OUT/matrix.json records (steps, budget, learning rate, ...); the subset, filters
and seeds may change, so a later `--subset=full` adds only the cells the earlier run lacked.

Metrics of a cell (held-out: greedy on `--eval_prompts` Countdown problems never trained on):
  acc: held-out accuracy, the mean over the evaluations of the second half of the run (less
    noisy than the last one alone); acc_final is the last evaluation; gain = acc - before RL.
  late_std: the std of those second-half evaluations; drawdown: the largest fall of held-out
    accuracy below its best so far. Together the stability measure (with --seeds > 1 the spread
    over seeds is added in the plots).
  format_only: share of held-out answers that are well formed but wrong, the completions that
    earn Countdown's partial credit (`task.format_reward`) without solving the problem: its
    rise over the run is the reward-hacking proxy; len_drift: the change of the mean training
    completion length from the first to the last 5 steps (the length bias of the aggregation);
    train_acc_first / _last (and train_reward_*): the sampled training batches' accuracy
    (reward) over the first and the last 5 steps, what the policy is optimising.
  Also the final KL to the reference, the gradient norm's coefficient of variation, skipped
  updates, wall time.

Writes OUT/b8_heatmap.png (held-out accuracy per cell), OUT/b8_group_size.png (accuracy and its
spread against group size, per algorithm), OUT/b8_kl.png (accuracy against KL weight, per
algorithm), OUT/b8_matrix.md (a table of every cell) and OUT/b8_matrix.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ALGOS = ("ppo", "grpo", "dapo", "dapo_no_ds")
GROUP_SIZES = (4, 8, 16)
KLS = (0.0, 0.01, 0.04)
AGGS = ("token_mean", "seq_mean_token_mean")
AGG_SHORT = {"token_mean": "tok", "seq_mean_token_mean": "seq"}
CENTRE = dict(group_size=8, kl=0.01, agg="token_mean")
SUBSETS = ("core", "quick", "full")
MAX_NEW_TOKENS = 14  # Countdown's longest answer is 11 tokens (EOS included)
OVERLONG_CACHE = 3  # DAPO's overlong ramp: lengths 12-14


@dataclasses.dataclass(frozen=True, order=True)
class Cell:
  algo: str
  group_size: int
  kl: float
  agg: str
  seed: int = 0

  @property
  def name(self) -> str:
    return f"{self.algo}_g{self.group_size}_kl{self.kl:g}_{AGG_SHORT[self.agg]}_s{self.seed}"


def expand_cells(
  subset: str = "full",
  *,
  algos=None,
  group_sizes=None,
  kls=None,
  aggs=None,
  seeds=(0,),
) -> list[Cell]:
  """The cells a command runs: the subset's, filtered by the lists given (None keeps all),
  repeated per seed, in a fixed order without duplicates."""
  if subset == "full":
    base = set(itertools.product(ALGOS, GROUP_SIZES, KLS, AGGS))
  elif subset in ("core", "quick"):
    g, k, a = CENTRE["group_size"], CENTRE["kl"], CENTRE["agg"]
    base = {(algo, g, k, a) for algo in ALGOS}
    if subset == "core":
      base |= {(algo, gs, k, a) for algo in ("grpo", "dapo_no_ds") for gs in GROUP_SIZES}
      base |= {(algo, g, kl, a) for algo in ("grpo", "ppo") for kl in KLS}
      base |= {(algo, g, k, agg) for algo in ("grpo", "dapo_no_ds") for agg in AGGS}
  else:
    raise ValueError(f"unknown subset {subset!r}; choose one of {SUBSETS}")
  for values, allowed in ((algos, ALGOS), (group_sizes, GROUP_SIZES), (kls, KLS), (aggs, AGGS)):
    unknown = set(values or ()) - set(allowed)
    if unknown:
      raise ValueError(f"unknown values {sorted(unknown)}; choose from {list(allowed)}")
  keep = lambda values, x: values is None or x in values
  cells = {
    Cell(algo, gs, kl, agg, seed)
    for algo, gs, kl, agg in base
    if keep(algos, algo) and keep(group_sizes, gs) and keep(kls, kl) and keep(aggs, agg)
    for seed in seeds
  }
  return sorted(cells, key=lambda c: (ALGOS.index(c.algo), c.group_size, c.kl, c.agg, c.seed))


def settings_of(args) -> dict:
  """What every cell and the warm start share; a rerun in the same OUT must keep it."""
  return dict(
    steps=args.steps,
    eval_every=args.eval_every,
    eval_prompts=args.eval_prompts,
    budget=args.budget,
    prompts_per_step=args.prompts_per_step,
    learning_rate=args.learning_rate,
    sft_steps=args.sft_steps,
    extra=dict(s.split("=", 1) for s in args.set),
  )


def base_overrides(settings: dict) -> dict[str, str]:
  """Overrides of experiments/countdown.py shared by the warm start and every cell."""
  steps, every = settings["steps"], settings["eval_every"]
  return {
    "train.steps": str(steps),
    "train.learning_rate": str(settings["learning_rate"]),
    "sft.steps": str(settings["sft_steps"]),
    "eval.every": str(every),
    "eval.num_prompts": str(settings["eval_prompts"]),
    # A cell resumes from its newest checkpoint: one at mid-run and the last step is enough,
    # and a save at every evaluation cost about 1.5 s per cell.
    "checkpoint.every": str(every * max(1, steps // (2 * every)) if every else steps),
    "checkpoint.async_save": "false",
    "log.tensorboard": "false",
    "sampling.max_new_tokens": str(MAX_NEW_TOKENS),
    # The update is compiled per prompt-group size when prompts are shared; unshared (exact
    # either way), cells that differ only in G run one program from the compilation cache,
    # which cuts the full matrix's compile time by two thirds.
    "train.share_prompt": "false",
    **settings["extra"],
  }


def cell_overrides(cell: Cell, settings: dict) -> dict[str, str]:
  """The config overrides that make `cell` (on top of `base_overrides`)."""
  G = cell.group_size
  if settings.get("prompts_per_step"):
    prompts = settings["prompts_per_step"]
  else:
    if settings["budget"] % G:
      raise ValueError(f"--budget={settings['budget']} is not a multiple of group size {G}")
    prompts = settings["budget"] // G
  out = {
    "seed": str(cell.seed),
    "rl.group_size": str(G),
    "rl.prompts_per_step": str(prompts),
    "algorithm.name": "dapo" if cell.algo.startswith("dapo") else cell.algo,
    "algorithm.kl_coef": str(cell.kl),
    "algorithm.aggregation": cell.agg,
  }
  if cell.algo == "ppo":
    out["train.critic_learning_rate"] = "1e-3"
  if cell.algo.startswith("dapo"):
    out["algorithm.overlong_cache_len"] = str(OVERLONG_CACHE)
    out["algorithm.dynamic_sampling"] = "false" if cell.algo == "dapo_no_ds" else "true"
  return out


def make_config(cell: Cell | None, settings: dict, base: str | None = None):
  """The validated RunConfig of a cell (None: the warm start's, a GRPO centre cell's)."""
  from rl_jax import config as config_lib

  cd = config_lib.load_config_file(base or os.path.join(ROOT, "experiments", "countdown.py"))
  cell = cell or Cell("grpo", CENTRE["group_size"], CENTRE["kl"], CENTRE["agg"])
  overrides = {**base_overrides(settings), **cell_overrides(cell, settings)}
  return config_lib.from_configdict(config_lib.apply_overrides(cd, overrides))


def _write_json(path: str, value) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2)
  os.replace(tmp, path)  # a kill never leaves half a file


def ensure_warm_start(out: str, settings: dict, log=print, base: str | None = None) -> str:
  """OUT/warm_start, made once (resumable) and shared by every cell."""
  from rl_jax import loop

  warm = os.path.join(out, "warm_start")
  if not os.path.exists(os.path.join(warm, "reference")):
    log(f"== warm start ({settings['sft_steps']} SFT steps, shared by every cell) -> {warm}")
    loop.run_sft_only(make_config(None, settings, base), warm, log=log)
  return warm


def run_cell(cell: Cell, out: str, warm: str, settings: dict, log=print, base=None) -> dict:
  """The cell's result. A finished cell (OUT/cells/<cell>/result.json) is not run again: its
  metrics are summarised again from its run's logs (so a changed `summarize` applies to old
  cells). Otherwise the run (resumed from its newest checkpoint when an earlier one was
  interrupted) is summarised and result.json written last."""
  from rl_jax import loop

  cell_dir = os.path.join(out, "cells", cell.name)
  result_path = os.path.join(cell_dir, "result.json")
  workdir = os.path.join(cell_dir, "run")
  if os.path.exists(result_path):  # finished: its metrics again, from the run's logs
    with open(result_path) as f:
      result = json.load(f)
    if os.path.exists(os.path.join(workdir, "eval.jsonl")):
      config = make_config(cell, settings, base)
      result.update(summarize(workdir, format_reward=_format_reward(config)))
    return result
  if not os.path.exists(os.path.join(workdir, "reference")):
    if os.path.exists(workdir):  # a copy of the warm start that did not finish
      shutil.rmtree(workdir)
    shutil.copytree(os.path.join(warm, "reference"), os.path.join(workdir, "reference"))
  t0 = time.time()
  config = make_config(cell, settings, base)
  with open(os.devnull, "w") as quiet:
    summary = loop.run(config, workdir, stream=quiet, log=lambda m: None)
  evals = os.path.join(workdir, "eval.jsonl")
  finished = os.path.exists(evals) and _last_step(evals) == config.train.steps
  if finished:
    result = summarize(workdir, format_reward=_format_reward(config))
    result.update(cell=dataclasses.asdict(cell), name=cell.name, wall_s=time.time() - t0)
    _write_json(result_path, result)
  if summary.get("stopped") or not finished:  # a signal stopped the run (it is checkpointed)
    raise CellInterrupted(f"{cell.name} stopped ({summary.get('stopped')})")
  return result


class CellInterrupted(Exception):
  """A signal stopped a cell's run: the matrix stops; the same command resumes it."""


def _last_step(path: str) -> int:
  from rl_jax.metrics import read_jsonl

  rows = read_jsonl(path)
  return rows[-1]["step"] if rows else -1


def _format_reward(config) -> float:
  return float(config.task.args.get("format_reward", 0.1))


def summarize(workdir: str, *, format_reward: float = 0.1) -> dict:
  """A finished run's metrics (see the module docstring)."""
  from rl_jax.metrics import read_jsonl

  evals = read_jsonl(os.path.join(workdir, "eval.jsonl"))
  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  steps = [e["step"] for e in evals]
  acc = [e["accuracy"] for e in evals]
  last_step = steps[-1]
  late = [a for s, a in zip(steps, acc) if s > 0 and s >= last_step / 2] or acc[-1:]
  best, drawdown = -1.0, 0.0
  for a in acc:
    best = max(best, a)
    drawdown = max(drawdown, best - a)
  fmt = [(e["reward_mean"] - e["accuracy"]) / format_reward for e in evals]
  mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")
  std = lambda xs: math.sqrt(mean([(x - mean(xs)) ** 2 for x in xs])) if xs else float("nan")
  k = min(5, len(rows))
  lengths = [r["response_len_mean"] for r in rows]
  finite = lambda key, rs: [r[key] for r in rs if r.get(key) is not None]  # None: non-finite
  norms = finite("grad_norm", rows)
  out = dict(
    steps=steps,
    accuracy=acc,
    before=acc[0],
    acc=mean(late),
    acc_final=acc[-1],
    gain=mean(late) - acc[0],
    late_std=std(late),
    drawdown=drawdown,
    format_only=fmt,
    format_only_before=fmt[0],
    format_only_final=fmt[-1],
    eval_len_before=evals[0]["response_len_mean"],
    eval_len_final=evals[-1]["response_len_mean"],
    len_drift=mean(lengths[-k:]) - mean(lengths[:k]),
    train_acc_first=mean(finite("accuracy", rows[:k])),
    train_acc_last=mean(finite("accuracy", rows[-k:])),
    train_reward_first=mean(finite("reward_mean", rows[:k])),
    train_reward_last=mean(finite("reward_mean", rows[-k:])),
    reward_std=mean(finite("reward_std", rows)),
    kl_final=mean(finite("kl", rows[-k:])) if "kl" in rows[-1] else 0.0,
    grad_norm_cv=std(norms) / mean(norms) if norms and mean(norms) > 0 else float("nan"),
    skipped_updates=max((int(r.get("skipped_updates", 0)) for r in rows), default=0),
    step_s=sorted(r["step_s"] for r in rows)[len(rows) // 2],
  )
  if any("ds_rounds" in r for r in rows):
    out["ds_rounds"] = mean([r["ds_rounds"] for r in rows if "ds_rounds" in r])
  return out


def _floats(text: str | None):
  return None if text is None else tuple(float(x) for x in text.split(",") if x)


def _ints(text: str | None):
  return None if text is None else tuple(int(x) for x in text.split(",") if x)


def _strs(text: str | None):
  return None if text is None else tuple(x for x in text.split(",") if x)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default=os.path.join("runs", "b8_matrix"))
  parser.add_argument("--subset", default="full", choices=SUBSETS)
  parser.add_argument("--algos", help=f"keep only these, comma-separated, of {','.join(ALGOS)}")
  parser.add_argument("--group_sizes", help="keep only these group sizes, e.g. 4,16")
  parser.add_argument("--kls", help="keep only these KL weights, e.g. 0,0.04")
  parser.add_argument("--aggs", help=f"keep only these aggregations, of {','.join(AGGS)}")
  parser.add_argument("--seeds", default="0", help="RL seeds, comma-separated (e.g. 0,1,2)")
  parser.add_argument("--steps", type=int, default=30, help="RL steps per cell")
  parser.add_argument("--eval_every", type=int, default=5)
  parser.add_argument("--eval_prompts", type=int, default=256)
  parser.add_argument("--budget", type=int, default=64, help="sampled sequences per step")
  parser.add_argument(
    "--prompts_per_step", type=int, default=0, help="> 0: fix the prompts per step instead"
  )
  parser.add_argument(
    "--learning_rate", type=float, default=2e-4, help="RL (experiments/countdown.py's)"
  )
  parser.add_argument("--sft_steps", type=int, default=600, help="shared warm start")
  parser.add_argument(
    "--set", action="append", default=[], help="extra config override FIELD=VALUE (repeatable)"
  )
  parser.add_argument(
    "--jit_cache",
    default=None,
    help="persistent compilation cache (default OUT/jit_cache; 'none' turns it off)",
  )
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  cells = expand_cells(
    args.subset,
    algos=_strs(args.algos),
    group_sizes=_ints(args.group_sizes),
    kls=_floats(args.kls),
    aggs=_strs(args.aggs),
    seeds=_ints(args.seeds),
  )
  if not cells:
    print("no cell matches the subset and filters", file=sys.stderr)
    return 2
  os.makedirs(args.out, exist_ok=True)
  jit_cache = args.jit_cache or os.path.join(args.out, "jit_cache")
  if jit_cache != "none":  # reruns, other seeds and resumed cells reuse compiled programs
    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.abspath(jit_cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

  settings = settings_of(args)
  meta_path = os.path.join(args.out, "matrix.json")
  if os.path.exists(meta_path):
    with open(meta_path) as f:
      saved = json.load(f)["settings"]
    if saved != settings:
      changed = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
      print(
        f"{args.out} holds a matrix run with other settings {changed}; use the same "
        "settings (subset, filters and seeds may change) or a new --out",
        file=sys.stderr,
      )
      return 2
  _write_json(meta_path, dict(settings=settings))

  t_start = time.time()
  warm = ensure_warm_start(args.out, settings, log=lambda m: print(m, flush=True))
  results = {}
  for i, cell in enumerate(cells):
    done = os.path.exists(os.path.join(args.out, "cells", cell.name, "result.json"))
    if not done:
      print(f"== [{i + 1}/{len(cells)}] {cell.name}", flush=True)
    try:
      r = run_cell(cell, args.out, warm, settings)
    except CellInterrupted as e:
      print(f"{e}; run the same command again to resume", file=sys.stderr)
      return 130
    results[cell.name] = r
    print(
      f"   {cell.name}: held-out {r['before']:.1%} -> {r['acc']:.1%} "
      f"(late std {r['late_std']:.1%}, format-only {r['format_only_final']:.1%})"
      + (" [done earlier]" if done else f" in {r['wall_s']:.0f} s"),
      flush=True,
    )
  wall = time.time() - t_start
  _write_json(os.path.join(args.out, "b8_matrix.json"), dict(settings=settings, cells=results))
  plot_heatmap(results, os.path.join(args.out, "b8_heatmap.png"), settings)
  plot_factor(results, "group_size", os.path.join(args.out, "b8_group_size.png"), settings)
  plot_factor(results, "kl", os.path.join(args.out, "b8_kl.png"), settings)
  table = markdown_table(results, settings, wall)
  with open(os.path.join(args.out, "b8_matrix.md"), "w") as f:
    f.write(table)
  print(table)
  print(f"wall time {wall:.0f} s; plots and table in {args.out}")
  return 0


# --- plots and the table ---------------------------------------------------------------------


def _cells_of(results: dict) -> list[tuple[Cell, dict]]:
  return [(Cell(**r["cell"]), r) for r in results.values()]


def _mean(xs):
  return sum(xs) / len(xs) if xs else float("nan")


def plot_heatmap(results: dict, path: str, settings: dict) -> None:
  """Held-out accuracy per cell: rows algorithm x aggregation, columns group size x KL
  (means over seeds); colour is the gain over the warm start, blank = not run."""
  import numpy as np
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  rows = [(a, g) for a in ALGOS for g in AGGS]
  cols = [(gs, kl) for gs in GROUP_SIZES for kl in KLS]
  acc = np.full((len(rows), len(cols)), np.nan)
  gain = np.full_like(acc, np.nan)
  cells = _cells_of(results)
  for i, (a, g) in enumerate(rows):
    for j, (gs, kl) in enumerate(cols):
      rs = [r for c, r in cells if (c.algo, c.agg, c.group_size, c.kl) == (a, g, gs, kl)]
      if rs:
        acc[i, j] = _mean([r["acc"] for r in rs])
        gain[i, j] = _mean([r["gain"] for r in rs])
  fig = Figure(figsize=(9, 5))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  lim = max(0.02, float(np.nanmax(np.abs(gain)))) if np.isfinite(gain).any() else 0.05
  im = ax.imshow(np.ma.masked_invalid(gain), cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
  for i in range(len(rows)):
    for j in range(len(cols)):
      if np.isfinite(acc[i, j]):
        ax.text(j, i, f"{acc[i, j]:.0%}", ha="center", va="center", fontsize=8)
  ax.set_xticks(range(len(cols)), [f"G{gs}\nkl {kl:g}" for gs, kl in cols], fontsize=8)
  ax.set_yticks(range(len(rows)), [f"{a} / {AGG_SHORT[g]}" for a, g in rows], fontsize=8)
  for y in range(1, len(ALGOS)):
    ax.axhline(2 * y - 0.5, color="k", linewidth=0.6)
  for x in range(1, len(GROUP_SIZES)):
    ax.axvline(len(KLS) * x - 0.5, color="k", linewidth=0.6)
  fig.colorbar(im, ax=ax, label="gain over the warm start")
  before = _mean([r["before"] for _, r in cells])
  ax.set_title(
    f"Countdown held-out accuracy per cell (late mean; before RL {before:.0%}), "
    f"{settings['steps']} steps",
    fontsize=10,
  )
  fig.tight_layout()
  fig.savefig(path, dpi=90)


def _slice(cells, algo: str, factor: str):
  """The cells of `algo` along `factor`, the other two factors at the centre where the run
  has such cells (else all of that algorithm's cells)."""
  others = [f for f in ("group_size", "kl", "agg") if f != factor]
  mine = [(c, r) for c, r in cells if c.algo == algo]
  centred = [(c, r) for c, r in mine if all(getattr(c, f) == CENTRE[f] for f in others)]
  return centred or mine


def plot_factor(results: dict, factor: str, path: str, settings: dict) -> None:
  """Held-out accuracy (left) and stability (right) against `factor`, per algorithm. Points:
  the mean over seeds of the second-half accuracy; bars: the spread, sqrt(mean within-run
  late std^2 + variance over seeds)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  values = GROUP_SIZES if factor == "group_size" else KLS
  label = "group size G" if factor == "group_size" else "KL weight"
  fig = Figure(figsize=(10, 4))
  FigureCanvasAgg(fig)
  ax, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
  cells = _cells_of(results)
  for k, algo in enumerate(ALGOS):
    sl = _slice(cells, algo, factor)
    xs, ys, es, dd = [], [], [], []
    for v in values:
      rs = [r for c, r in sl if getattr(c, factor) == v]
      if not rs:
        continue
      accs = [r["acc"] for r in rs]
      within = _mean([r["late_std"] ** 2 for r in rs])
      between = _mean([(a - _mean(accs)) ** 2 for a in accs])
      xs.append(values.index(v) if factor == "kl" else v)
      ys.append(_mean(accs))
      es.append(math.sqrt(within + between))
      dd.append(_mean([r["drawdown"] for r in rs]))
    if len(xs) < 2:
      continue
    # a small offset per algorithm keeps overlapping error bars apart
    if factor == "kl":
      xs_p = [x + (k - 1.5) * 0.04 for x in xs]
    else:
      xs_p = [x * 2 ** ((k - 1.5) * 0.04) for x in xs]
    color = f"C{k}"  # one colour per algorithm in every plot
    ax.errorbar(xs_p, ys, yerr=es, marker="o", capsize=3, color=color, label=algo)
    ax2.plot(xs_p, es, marker="o", color=color, label=f"{algo}: spread")
    ax2.plot(xs_p, dd, marker="x", linestyle=":", color=color, label=f"{algo}: drawdown")
  for a in (ax, ax2):
    if factor == "group_size":
      a.set_xscale("log", base=2)
      a.set_xticks(list(GROUP_SIZES), [str(g) for g in GROUP_SIZES])
    else:
      a.set_xticks(range(len(KLS)), [f"{k:g}" for k in KLS])
    a.set_xlabel(label)
    a.grid(alpha=0.3)
  ax.set_ylabel("held-out accuracy (late mean +- spread)")
  ax2.set_ylabel("spread (o) and drawdown (x, dotted)")
  ax.set_title(f"accuracy vs {label}, {settings['steps']} steps", fontsize=10)
  ax2.set_title("instability: lower is more stable", fontsize=10)
  if ax.lines:
    ax.legend(fontsize=8)
    ax2.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)


def markdown_table(results: dict, settings: dict, wall: float | None = None) -> str:
  cells = _cells_of(results)
  before = _mean([r["before"] for _, r in cells])
  head = (
    f"Countdown, {settings['steps']} RL steps per cell, {settings['budget']} sequences per step "
    f"(prompts = budget / G), learning rate {settings['learning_rate']:g}, held-out "
    f"{settings['eval_prompts']} prompts every {settings['eval_every']} steps, shared warm "
    f"start ({settings['sft_steps']} SFT steps; held-out accuracy before RL {before:.1%})."
  )
  head += f" {len(cells)} cells, their runs took {sum(r['wall_s'] for _, r in cells):.0f} s"
  head += "." if wall is None else f" (this invocation: {wall:.0f} s, warm start included)."
  lines = [
    head,
    "",
    "| cell | acc (late mean) | final | gain | late std | drawdown | format-only before -> "
    "after | train acc first -> last 5 | train len drift | KL | grad-norm CV | skipped | "
    "step (s) | wall (s) |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for c, r in sorted(cells, key=lambda cr: -cr[1]["acc"]):
    lines.append(
      f"| {c.name} | {r['acc']:.1%} | {r['acc_final']:.1%} | {r['gain']:+.1%} | "
      f"{r['late_std']:.1%} | {r['drawdown']:.1%} | {r['format_only_before']:.1%} -> "
      f"{r['format_only_final']:.1%} | {r['train_acc_first']:.1%} -> {r['train_acc_last']:.1%} | "
      f"{r['len_drift']:+.2f} | {r['kl_final']:.4f} | "
      f"{r['grad_norm_cv']:.2f} | {r['skipped_updates']} | {r['step_s']:.2f} | "
      f"{r['wall_s']:.0f} |"
    )
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  sys.exit(main())
