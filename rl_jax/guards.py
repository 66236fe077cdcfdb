"""What keeps a long run safe: stopping cleanly on a signal, and stopping a diverged run.

`StopRequests` turns SIGTERM (a preemption notice) and the first SIGINT (Ctrl-C) into a flag the
loop reads at every step boundary, where it writes a checkpoint and exits 0; a second SIGINT
interrupts at once. `SkipGuard` follows the updates the trainer skipped as unsafe
(`rl_jax.trainer.apply_gradients`): a warning line for every step that skipped, a
`TrainingDiverged` error after `train.max_consecutive_skips` such steps in a row, and (with
`train.spike_factor`) the gradient-norm limit from the running median of recent steps.
"""

from __future__ import annotations

import collections
import signal
import threading
from collections.abc import Callable

import numpy as np

from rl_jax import trainer

# The exit status of a run stopped as diverged (a config or checkpoint error is 2).
DIVERGED_EXIT = 3


class TrainingDiverged(RuntimeError):
  """Too many consecutive updates were skipped as unsafe: the run cannot make progress."""


class StopRequests:
  """A context that catches SIGTERM and SIGINT while a run is in it (main thread only).

  `requested` is the signal's name once one arrived, else None. A second SIGINT raises
  KeyboardInterrupt at once (for a user who does not want to wait for the step to finish).
  """

  def __init__(self, log: Callable[[str], None]):
    self.requested: str | None = None
    self._log = log
    self._previous: dict[int, object] = {}

  def _handle(self, signum, frame):
    name = signal.Signals(signum).name
    if self.requested is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = name
    self._log(
      f"{name} received: finishing the current step, then saving a checkpoint and exiting "
      "(Ctrl-C again to interrupt at once)"
    )

  def __enter__(self) -> StopRequests:
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
        # Restart system calls the signal interrupts: a blocking call in C++ (a cross-process
        # collective of a multi-host run) must not fail with EINTR; the handler only sets a flag.
        signal.siginterrupt(sig, False)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()


class SkipGuard:
  """Follows skipped updates across steps (the trainer's cumulative `skipped_updates` count and
  the step's `skip_reason` bits) and the gradient norms of applied ones."""

  def __init__(self, max_consecutive: int, spike_factor: float = 0.0, spike_window: int = 20):
    self.max_consecutive = max_consecutive
    self.spike_factor = spike_factor
    self.norms = collections.deque(maxlen=spike_window)
    self.total = 0  # cumulative skipped updates (the train state's count)
    self.streak = 0  # consecutive steps with a skipped update

  def resume(self, skipped_total: int, recent_grad_norms) -> None:
    """The state of a resumed run: its skipped count and the grad norms its log holds."""
    self.total = int(skipped_total)
    self.norms.extend(float(x) for x in recent_grad_norms)

  def grad_norm_limit(self) -> float | None:
    """The spike limit for the next step (None: off, or too little history)."""
    if not self.spike_factor or len(self.norms) < min(5, self.norms.maxlen):
      return None
    return float(self.spike_factor * np.median(self.norms))

  def observe(self, step: int, metrics: dict, what: str = "step") -> str | None:
    """Records a step's metrics; returns a warning line if it skipped an update. Raises
    TrainingDiverged once `max_consecutive` steps in a row have skipped."""
    total = int(metrics["skipped_updates"])
    new, self.total = total - self.total, total
    if new <= 0:
      self.streak = 0
      self.norms.append(float(metrics["grad_norm"]))
      return None
    self.streak += 1
    reason = trainer.describe_skip(int(metrics.get("skip_reason", 0)))
    limit = self.max_consecutive
    message = (
      f"warning: {what} {step}: {new} update(s) skipped ({reason}); {self.streak} step(s) in a "
      f"row, {total} in all"
    )
    if limit and self.streak >= limit:
      raise TrainingDiverged(
        f"stopped at {what} {step}: {self.streak} steps in a row skipped their update "
        f"({reason}); the run diverged or its settings cannot work (learning rate, rewards). "
        f"The last checkpoint holds the last good state. Limit: train.max_consecutive_skips="
        f"{limit}"
      )
    return message + (f"; the run stops at {limit}" if limit else "")
