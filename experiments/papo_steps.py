"""PAPO in miniature (methods.md B3, arXiv:2603.26535): outcome-only GRPO, the naive summed
reward (outcome + process score in one scalar, the hackable baseline) and PAPO (outcome z-score
+ process z-score among the correct), for the same budget from one warm start on the step-lines
task (experiments/steps.py: the process score is the share of right intermediate lines).

  python experiments/papo_steps.py --steps=200 --out=runs/papo_steps

Writes OUT/papo_steps.png (held-out accuracy, process score and completion length against the
step) and OUT/papo_steps.md (the final table). docs/papo_segment.md records a run.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import arms as arms_lib  # noqa: E402  (experiments/arms.py)

ARMS = {
  "grpo_outcome": {"algorithm.name": "grpo"},
  "grpo_summed": {"rewards.process.name": "step_process", "rewards.process.weight": "1.0"},
  "papo": {"algorithm.name": "papo"},
}


def main(argv=None) -> int:
  args, common, chosen = arms_lib.command_line(argv, __doc__, ARMS, "papo_steps")
  results = arms_lib.run_arms("steps.py", chosen, steps=args.steps, out=args.out, common=common)
  panels = [
    ("accuracy", "held-out accuracy"),
    ("process_mean", "held-out process score"),
    ("response_len_mean", "mean completion length"),
  ]
  title = f"step-lines task: outcome GRPO vs summed reward vs PAPO, {args.steps} steps"
  arms_lib.plot(results, os.path.join(args.out, "papo_steps.png"), panels, title)
  text = arms_lib.table(
    results,
    [
      ("accuracy", "held-out accuracy %"),
      ("process_mean", "held-out process score"),
      ("response_len_mean", "completion length"),
    ],
  )
  before = next(iter(results.values()))["evals"][0]
  text = (
    f"Step-lines task, {args.steps} RL steps per arm from one warm start (before RL: accuracy "
    f"{before['accuracy']:.1%}, process {before['process_mean']:.3f}).\n\n" + text
  )
  return arms_lib.write(args.out, "papo_steps", text)


if __name__ == "__main__":
  sys.exit(main())
