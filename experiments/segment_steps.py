"""Segment-level policy gradient in miniature (methods.md B7, arXiv:2512.10365): the same
clipped objective with one ratio per token (GRPO's loss), per line (the `segment` preset), and
per completion (one segment, the mean log-ratio: GSPO's ratio at GRPO's clip 0.2), for the same
budget from one warm start on the step-lines task.

  python experiments/segment_steps.py --steps=200 --out=runs/segment_steps

The ratio must move for the granularity to matter: at ratio 1 every segmentation has the same
gradient. Each rollout batch is therefore split into 4 minibatches (four optimizer steps, the
last three off-policy), at a quarter of the default learning rate (5e-5: four steps of it per
batch; at 2e-4 every arm over-stepped, docs/papo_segment.md). Writes OUT/segment_steps.png and
OUT/segment_steps.md.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import arms as arms_lib  # noqa: E402  (experiments/arms.py)

ARMS = {
  "token": {"algorithm.name": "grpo"},
  "line": {"algorithm.name": "segment"},
  "sequence": {"algorithm.name": "segment", "algorithm.segment_delimiters": ""},
}


def main(argv=None) -> int:
  args, common, chosen = arms_lib.command_line(
    argv, __doc__, ARMS, "segment_steps", minibatches=4, learning_rate="5e-5"
  )
  common["train.num_minibatches"] = args.minibatches
  common["train.learning_rate"] = args.learning_rate
  results = arms_lib.run_arms("steps.py", chosen, steps=args.steps, out=args.out, common=common)
  panels = [("accuracy", "held-out accuracy"), ("process_mean", "held-out process score")]
  title = f"step-lines task: token / line / sequence ratios, {args.steps} steps"
  arms_lib.plot(results, os.path.join(args.out, "segment_steps.png"), panels, title)
  clip = {
    name: sum(r["clip_frac"] for r in res["train"]) / len(res["train"])
    for name, res in results.items()
  }
  text = arms_lib.table(
    results, [("accuracy", "held-out accuracy %"), ("process_mean", "held-out process score")]
  )
  text += "\nMean clip fraction over training: " + ", ".join(
    f"{k} {v:.3f}" for k, v in clip.items()
  )
  text += "\n"
  return arms_lib.write(args.out, "segment_steps", text)


if __name__ == "__main__":
  sys.exit(main())
