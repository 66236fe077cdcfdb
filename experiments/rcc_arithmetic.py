"""Reward-confidence correction in miniature (methods.md B4, arXiv:2603.13134): the group
baseline corrected by 2 Cov(r, delta), delta the sampled sequence's log-ratio to the reference,
against the same objective with the plain group-mean baseline, for the same budget from one
warm start on the default task (arithmetic with a flawed warm start).

  python experiments/rcc_arithmetic.py --steps=200 --out=runs/rcc_arithmetic

Both arms use the paper's setting otherwise: clip 0.2 / 0.28, token-mean aggregation, no KL,
8 samples per prompt; `dr_grpo_clip_higher` is exactly RCC with delta = 0 (the Dr. GRPO
advantage r - mean_g r). Writes OUT/rcc_arithmetic.png and OUT/rcc_arithmetic.md.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import arms as arms_lib  # noqa: E402  (experiments/arms.py)

SAME = {"algorithm.clip_eps_high": "0.28", "algorithm.aggregation": "token_mean"}
ARMS = {
  "dr_grpo_clip_higher": {"algorithm.name": "dr_grpo", **SAME},
  "rcc": {"algorithm.name": "rcc"},
  "rcc_std": {"algorithm.name": "rcc", "algorithm.normalize_std": "true"},
}


def main(argv=None) -> int:
  args, common, chosen = arms_lib.command_line(argv, __doc__, ARMS, "rcc_arithmetic")
  results = arms_lib.run_arms("default.py", chosen, steps=args.steps, out=args.out, common=common)
  title = f"arithmetic: group-mean baseline vs RCC, {args.steps} steps"
  panels = [("accuracy", "held-out accuracy")]
  arms_lib.plot(results, os.path.join(args.out, "rcc_arithmetic.png"), panels, title)
  kl = {  # logged where the reference is read (the RCC arms); Dr. GRPO does not compute it
    n: sum(r["kl"] for r in res["train"]) / len(res["train"])
    for n, res in results.items()
    if res["overrides"].get("algorithm.name") == "rcc"
  }
  text = arms_lib.table(results, [("accuracy", "held-out accuracy %")])
  text += "\nMean KL to the reference over training (k3): "
  text += ", ".join(f"{k} {v:.4f}" for k, v in kl.items()) + "\n"
  return arms_lib.write(args.out, "rcc_arithmetic", text)


if __name__ == "__main__":
  sys.exit(main())
