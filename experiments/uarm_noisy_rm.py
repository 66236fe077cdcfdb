"""UARM against GRPO when the only reward is a learned, noisy reward model (methods.md B1).

The task is the default multi-digit addition. Labellers score completions with the task's
partial credit (1 for the exact sum, else 0.5 x the fraction of digits right), plus Gaussian
noise whose size depends on the prompt family: sd `--noisy_sd` when the first operand has three
digits (the "noisy" family), sd `--clean_sd` otherwise. From (prompt, completion, noisy score)
records a quantile reward model (the warm-start policy's trunk plus a 3-quantile head) is
trained and CQR-calibrated (`rl_jax.reward_model`); its coverage is measured on a fresh test
split against the noisy labels, overall and per family. Then GRPO and UARM run from one shared
warm start for the same number of steps with that reward model as their ONLY reward, and are
judged by the exact verifier on held-out prompts (greedy accuracy).

  python experiments/uarm_noisy_rm.py --out=runs/uarm_noisy_rm

Stages already done in --out (warm start, reward model; with --reuse_runs the RL runs) are
reused; the records are drawn again (seeded, the same). Writes
OUT/uarm.png, OUT/uarm.md and OUT/uarm.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PARTIAL_CREDIT = 0.5  # the true score: 1 if exact, else 0.5 x digit-wise match fraction


def _config(args, algorithm: str, rm_path: str | None = None, learning_rate: str | None = None):
  from rl_jax import config as config_lib

  cd = config_lib.load_config_file(os.path.join(ROOT, "experiments", "default.py"))
  overrides = {
    "seed": str(args.seed),
    "task.partial_credit": str(PARTIAL_CREDIT),
    "sft.steps": str(args.sft_steps),
    "train.steps": str(args.steps),
    "checkpoint.every": str(args.steps),
    "eval.every": str(args.eval_every),
    "eval.num_prompts": str(args.eval_prompts),
    "log.tensorboard": "false",
    "algorithm.name": algorithm,
  }
  if learning_rate is not None:
    overrides["train.learning_rate"] = learning_rate
  if rm_path is not None:  # the reward model is the only reward
    overrides.update(
      {"rewards.task.weight": "0", "rewards.rm.name": "reward_model", "rewards.rm.path": rm_path}
    )
  return config_lib.from_configdict(config_lib.apply_overrides(cd, overrides))


def noisy_family(prompt: str) -> bool:
  """The prompt family whose labels are noisy: first operand of three digits."""
  return len(prompt.split("+")[0]) == 3


def _perturb(answer: str, rng) -> str:
  """The answer with one digit replaced by another."""
  i = int(rng.integers(len(answer)))
  d = str((int(answer[i]) + int(rng.integers(1, 10))) % 10)
  out = answer[:i] + d + answer[i + 1 :]
  return str(int(out))  # no leading zero


def make_records(exp, params, n_prompts: int, stream: int, args):
  """Records for `n_prompts` train-split prompts: the exact sum, the carry-free slip, a one-digit
  perturbation and `args.samples` samples of the warm-start policy per prompt, each with its
  true score (the verifier with partial credit) and a noisy label.

  Returns (records, true scores float32 [N], noisy-family flags bool [N])."""
  import jax

  from rl_jax import reward_model, tokenizers
  from rl_jax.sampling import generate
  from rl_jax.tasks import arithmetic

  rng = np.random.default_rng([args.seed, stream])
  examples = exp.task.train_examples(rng, n_prompts)
  rows = []  # (example, completion)
  for e in examples:
    a, _, b, _ = e.meta
    for c in (e.answer, arithmetic.carry_free_sum(a, b), _perturb(e.answer, rng)):
      rows.append((e, c))
  tok, P = exp.policy.tokenizer, exp.step.settings.prompt_len
  chunk = 256
  for s in range(args.samples):
    for i in range(0, len(examples), chunk):
      part = examples[i : i + chunk]
      padded = part + part[: (-len(part)) % chunk]  # one compiled shape
      prompts = tokenizers.encode_left_padded(tok, [e.prompt for e in padded], P)
      out = generate(
        exp.policy.graphdef,
        params,
        *prompts,
        jax.random.key(1000 * stream + 17 * s + i),
        cfg=exp.step.settings.sampling,
      )
      tokens = jax.device_get(out.tokens_NxT)
      rows.extend((e, tok.decode(t)) for e, t in zip(part, tokens[: len(part)]))
  true = exp.task.score([e for e, _ in rows], [c for _, c in rows])["reward"]
  family = np.array([noisy_family(e.prompt) for e, _ in rows])
  sd = np.where(family, args.noisy_sd, args.clean_sd)
  noisy = true + sd * rng.standard_normal(len(rows))
  records = [
    reward_model.Record(e.prompt, c, float(y)) for (e, c), y in zip(rows, noisy.astype(float))
  ]
  return records, np.asarray(true, np.float32), family


def rm_quality(model, records, true, family, alpha) -> dict:
  """Coverage of the noisy labels by the calibrated intervals, mean width, and the median's
  error against the TRUE score, overall and per family."""
  from rl_jax import reward_model

  s = reward_model.score_records(model, records)
  y = np.array([r.score for r in records], np.float32)
  covered = (s["lo"] <= y) & (y <= s["hi"])
  out = {}
  for name, sel in (("all", np.ones_like(family)), ("clean", ~family), ("noisy", family)):
    out[name] = dict(
      n=int(sel.sum()),
      coverage=float(covered[sel].mean()),
      mean_width=float(s["width"][sel].mean()),
      median_mae_true=float(np.abs(s["median"][sel] - true[sel]).mean()),
      corr_true=float(np.corrcoef(s["median"][sel], true[sel])[0, 1]),
      pair_accuracy=_pair_accuracy(
        [r.prompt for r, keep in zip(records, sel) if keep], s["median"][sel], true[sel]
      ),
    )
  out["target"] = 1 - alpha
  out["widths"] = dict(clean=s["width"][~family].tolist(), noisy=s["width"][family].tolist())
  return out


def _pair_accuracy(prompts, median, true) -> float:
  """Over pairs of completions of one prompt with different true scores, the fraction the
  reward model's median orders like the true score: what a group-relative advantage uses."""
  by_prompt: dict[str, list[int]] = {}
  for i, p in enumerate(prompts):
    by_prompt.setdefault(p, []).append(i)
  right = total = 0
  for idx in by_prompt.values():
    m, t = median[idx], true[idx]
    dt, dm = t[:, None] - t[None, :], m[:, None] - m[None, :]
    pairs = dt > 0
    right += int((dm[pairs] > 0).sum())
    total += int(pairs.sum())
  return right / max(total, 1)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default=os.path.join("runs", "uarm_noisy_rm"))
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--sft_steps", type=int, default=1000)
  parser.add_argument("--steps", type=int, default=100, help="RL steps per algorithm")
  parser.add_argument("--eval_every", type=int, default=25)
  parser.add_argument("--eval_prompts", type=int, default=256)
  parser.add_argument("--rm_prompts", type=int, default=1500, help="prompts of RM records")
  parser.add_argument("--test_prompts", type=int, default=500, help="prompts of the test split")
  parser.add_argument("--samples", type=int, default=2, help="policy samples per record prompt")
  parser.add_argument("--clean_sd", type=float, default=0.05)
  parser.add_argument("--noisy_sd", type=float, default=0.5)
  parser.add_argument("--rm_steps", type=int, default=600)
  parser.add_argument("--rm_batch", type=int, default=64)
  parser.add_argument("--rm_lr", type=float, default=1e-3)
  parser.add_argument("--alpha", type=float, default=0.1)
  parser.add_argument(
    "--control_lrs",
    default="",
    help="comma-separated learning rates of extra GRPO runs (a control for UARM's smaller "
    "gradients), e.g. 2e-5",
  )
  parser.add_argument(
    "--reuse_runs", action="store_true", help="keep finished RL runs in --out (report again)"
  )
  args = parser.parse_args(argv)

  from rl_jax import loop, reward_model
  from rl_jax.checkpoint import Checkpointer
  from rl_jax.metrics import read_jsonl

  t_start = time.time()
  os.makedirs(args.out, exist_ok=True)
  timings = {}

  # 1. The shared warm start (weak on carries: the default's slipping teacher).
  warm = os.path.join(args.out, "warm_start")
  base = _config(args, "grpo")
  if not os.path.exists(os.path.join(warm, "reference")):
    print(f"== warm start ({args.sft_steps} SFT steps) -> {warm}", flush=True)
    t0 = time.time()
    loop.run_sft_only(base, warm)
    timings["warm_start_s"] = time.time() - t0
  exp = loop.Experiment.build(base)
  ckpt = Checkpointer(warm)
  params = ckpt.restore_reference(exp.policy.init_params(base.seed))
  ckpt.close()

  # 2. Records with noisy labels (train/calibration and a fresh test split).
  t0 = time.time()
  train_records, _, _ = make_records(exp, params, args.rm_prompts, 101, args)
  test_records, test_true, test_family = make_records(exp, params, args.test_prompts, 102, args)
  reward_model.save_records(os.path.join(args.out, "records.jsonl"), train_records)
  timings["records_s"] = time.time() - t0
  print(
    f"== {len(train_records)} RM records, {len(test_records)} test records "
    f"({timings['records_s']:.0f} s)",
    flush=True,
  )

  # 3. The quantile reward model, from the warm-start trunk, calibrated by CQR.
  rm_dir = os.path.join(args.out, "rm")
  if not os.path.exists(os.path.join(rm_dir, reward_model.CONFIG_FILE)):
    t0 = time.time()
    settings = reward_model.TrainSettings(
      alpha=args.alpha,
      steps=args.rm_steps,
      batch_size=args.rm_batch,
      learning_rate=args.rm_lr,
      seed=args.seed,
      log_every=max(1, args.rm_steps // 4),
    )
    model = reward_model.train(
      train_records,
      model_cfg=exp.policy.model_cfg,
      tokenizer_spec=reward_model.tokenizer_spec(exp.policy.tokenizer),
      settings=settings,
      policy_params=params,
      log=lambda m: print(m, flush=True),
    )
    model.save(rm_dir)
    timings["rm_train_s"] = time.time() - t0
  model = reward_model.RewardModel.load(rm_dir)
  quality = rm_quality(model, test_records, test_true, test_family, args.alpha)
  for fam in ("all", "clean", "noisy"):
    q = quality[fam]
    print(
      f"   test split, {fam:5s} (n {q['n']}): coverage {q['coverage']:.1%} | mean width "
      f"{q['mean_width']:.3f} | median vs true score: MAE {q['median_mae_true']:.3f}, "
      f"corr {q['corr_true']:.2f}, pairs ordered right {q['pair_accuracy']:.1%}",
      flush=True,
    )

  # 4. GRPO vs UARM, the reward model as the only reward, from the shared warm start.
  results = {}
  runs = [("grpo", "grpo", None), ("uarm", "uarm", None)]
  runs += [(f"grpo_lr{lr}", "grpo", lr) for lr in args.control_lrs.split(",") if lr]
  for name, algo, lr in runs:
    workdir = os.path.join(args.out, name)
    done = os.path.exists(os.path.join(workdir, "summary.json"))
    if not (args.reuse_runs and done):
      if os.path.exists(workdir):
        shutil.rmtree(workdir)
      shutil.copytree(os.path.join(warm, "reference"), os.path.join(workdir, "reference"))
      print(f"== {name}: {args.steps} RL steps, reward = the reward model only -> {workdir}")
      with open(os.devnull, "w") as quiet:
        loop.run(_config(args, algo, os.path.abspath(rm_dir), lr), workdir, stream=quiet)
    with open(os.path.join(workdir, "summary.json")) as f:
      wall_s = json.load(f)["wall_s"]
    evals = read_jsonl(os.path.join(workdir, "eval.jsonl"))
    rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    last = rows[-max(1, len(rows) // 4) :]  # the last quarter of the steps
    results[name] = dict(
      steps=[e["step"] for e in evals],
      accuracy=[e["accuracy"] for e in evals],
      before=evals[0]["accuracy"],
      final=evals[-1]["accuracy"],
      wall_s=wall_s,
      # The rollouts' exact-verifier accuracy and true (partial-credit) score, logged by the
      # zero-weight `task` reward, and the reward model's median, late in training.
      train_accuracy_late=float(np.mean([r["accuracy"] for r in last])),
      true_reward_late=float(np.mean([r["reward/task"] for r in last])),
      rm_reward_late=float(np.mean([r["reward/rm"] for r in last])),
      grad_norm_median=float(np.median([r["grad_norm"] for r in rows])),
    )
    print(
      f"   {name}: held-out accuracy {results[name]['before']:.1%} -> "
      f"{results[name]['final']:.1%} in {results[name]['wall_s']:.0f} s",
      flush=True,
    )
  timings["total_s"] = time.time() - t_start
  summary = dict(args=vars(args), rm=model.report, test=quality, rl=results, timings=timings)
  with open(os.path.join(args.out, "uarm.json"), "w") as f:
    json.dump(summary, f, indent=1)
  _plot(summary, os.path.join(args.out, "uarm.png"))
  table = _table(summary)
  with open(os.path.join(args.out, "uarm.md"), "w") as f:
    f.write(table)
  print(table)
  print(f"total wall time {timings['total_s']:.0f} s")
  return 0


def _plot(summary, path):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(10, 4))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 2, 1)
  w = summary["test"]["widths"]
  bins = np.linspace(0, max(max(w["clean"]), max(w["noisy"])), 40)
  for fam in ("clean", "noisy"):
    label = f"{fam} family (label sd {summary['args'][fam + '_sd']:.2f})"
    ax.hist(w[fam], bins=bins, alpha=0.6, label=label)
  t = summary["test"]
  ax.set_title(
    f"calibrated RM intervals, test split: coverage {t['all']['coverage']:.1%} "
    f"(target {t['target']:.0%})",
    fontsize=9,
  )
  ax.set_xlabel("interval width (q_hi + Q) - (q_lo - Q)")
  ax.set_ylabel("completions")
  ax.legend(fontsize=8)
  ax = fig.add_subplot(1, 2, 2)
  for name, r in summary["rl"].items():
    ax.plot(r["steps"], r["accuracy"], marker="o", label=name)
  ax.set_xlabel("RL step")
  ax.set_ylabel("held-out greedy accuracy (exact verifier)")
  ax.set_title("reward model as the only reward", fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)


def _table(summary) -> str:
  a, t = summary["args"], summary["test"]
  lines = [
    f"Reward model calibrated at alpha={a['alpha']} (Q = {summary['rm']['offset']:+.4f}); "
    f"test split of {t['all']['n']} fresh completions, noisy labels.",
    "",
    "| family | label noise sd | n | coverage | mean width | median MAE vs true | corr vs true | "
    "pairs ordered right |",
    "|---|---|---|---|---|---|---|---|",
  ]
  sds = dict(all="-", clean=a["clean_sd"], noisy=a["noisy_sd"])
  for fam in ("all", "clean", "noisy"):
    q = t[fam]
    lines.append(
      f"| {fam} | {sds[fam]} | {q['n']} | {q['coverage']:.1%} | {q['mean_width']:.3f} | "
      f"{q['median_mae_true']:.3f} | {q['corr_true']:.2f} | {q['pair_accuracy']:.1%} |"
    )
  lines += [
    "",
    f"{a['steps']} RL steps each, shared warm start, reward = the reward model only; held-out "
    f"greedy accuracy by the exact verifier on {a['eval_prompts']} prompts.",
    "",
    "| algorithm | held-out before RL | held-out after RL | rollout accuracy, last quarter | "
    "rollout true score / RM median, last quarter | median grad norm | wall time (s) |",
    "|---|---|---|---|---|---|---|",
  ]
  for name, r in summary["rl"].items():
    lines.append(
      f"| {name} | {r['before']:.1%} | {r['final']:.1%} | {r['train_accuracy_late']:.1%} | "
      f"{r['true_reward_late']:.3f} / {r['rm_reward_late']:.3f} | {r['grad_norm_median']:.2g} | "
      f"{r['wall_s']:.0f} |"
    )
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  sys.exit(main())
