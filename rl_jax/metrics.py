"""Host-side metrics: JSONL writers (always), TensorBoard, W&B (optional), a progress line, plots.

Nothing here touches the device. Metric values may be Python numbers, numpy scalars or 0-d
jax arrays; they are converted with ``int()`` / ``float()`` before being written. In a
multi-host run only process 0 should construct a :class:`MetricsWriter`.

File format
-----------
``{workdir}/metrics.jsonl`` (training) and ``{workdir}/eval.jsonl`` (evaluation) hold one JSON
object per line, ``"step"`` first, then the metrics in the order given::

    {"step": 12, "reward_mean": 0.53125, "accuracy": 0.5, "kl": 0.0012}

Integer values (Python ints, numpy/jax integer scalars, bools) are written as JSON integers,
everything else as JSON floats. **Non-finite floats (NaN, +inf, -inf) are written as
``null``**, because JSON has no NaN; :func:`read_jsonl` gives them back as ``None``.
TensorBoard and W&B receive the raw float (NaN stays NaN there).

Resuming
--------
A run that crashed after logging step 5 but whose last checkpoint is step 3 resumes at step
4. The loop calls ``writer.truncate_from(4)`` once before writing: rows with ``step >= 4`` are
dropped from both JSONL files and TensorBoard is told to purge events from step 4 on.
"""

from __future__ import annotations

import io
import json
import math
import numbers
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from rl_jax import storage

__all__ = [
  "MetricsWriter",
  "Progress",
  "format_duration",
  "plot_rewards",
  "read_jsonl",
]

METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"
TENSORBOARD_DIR = "tensorboard"
PLOT_FILE = "reward.png"


# --------------------------------------------------------------------------------------------
# Value conversion and JSONL reading
# --------------------------------------------------------------------------------------------


def _is_integer(value: Any) -> bool:
  if isinstance(value, (bool, numbers.Integral)):
    return True
  dtype = getattr(value, "dtype", None)  # numpy / jax scalars and 0-d arrays
  if dtype is None:
    return False
  kind = getattr(dtype, "kind", None)
  return kind in ("i", "u", "b")


def _to_number(name: str, value: Any) -> int | float:
  """Converts a metric value to a Python int or float (raises TypeError otherwise)."""
  try:
    if _is_integer(value):
      return int(value)
    return float(value)
  except (TypeError, ValueError) as e:
    raise TypeError(
      f"metric {name!r} must be a scalar number (Python, numpy or 0-d jax array); "
      f"got {type(value).__name__}: {value!r:.80}"
    ) from e


def _json_value(value: int | float) -> int | float | None:
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def _row(step: int, metrics: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, int | float]]:
  """Returns (the JSON row, the converted numbers) for one write."""
  numbers_: dict[str, int | float] = {}
  for name, value in metrics.items():
    if not isinstance(name, str):
      raise TypeError(f"metric names must be strings; got {name!r}")
    if name == "step":
      raise ValueError("'step' is reserved; pass the step as the first argument")
    numbers_[name] = _to_number(name, value)
  row: dict[str, Any] = {"step": int(step)}
  row.update({k: _json_value(v) for k, v in numbers_.items()})
  return row, numbers_


def read_jsonl(path: str | os.PathLike) -> list[dict]:
  """Reads a JSONL file into a list of dicts.

  Blank lines are skipped. A malformed *last* line (a write cut short by a crash) is
  ignored; a malformed line anywhere else raises ``ValueError`` naming the line.
  Non-finite values written by :class:`MetricsWriter` come back as ``None``.
  """
  lines = storage.read_text(os.fspath(path)).splitlines()
  rows: list[dict] = []
  last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      if i == last:
        break
      raise ValueError(f"{path}:{i + 1}: not valid JSON: {e}") from e
    if not isinstance(row, dict):
      raise ValueError(f"{path}:{i + 1}: expected a JSON object, got {type(row).__name__}")
    rows.append(row)
  return rows


# --------------------------------------------------------------------------------------------
# MetricsWriter
# --------------------------------------------------------------------------------------------


class MetricsWriter:
  """Writes scalar metrics to JSONL (always), TensorBoard (default) and W&B (optional).

  Args:
    workdir: run folder; ``metrics.jsonl``, ``eval.jsonl`` and ``tensorboard/`` go here. A
      bucket (``gs://...``) works too: the files are written in a local staging folder and
      uploaded whole by ``flush`` (the loop calls it before every checkpoint), at most
      ``storage.SYNC_SECONDS`` after a write, and by ``close``.
    tensorboard: also write TensorBoard event files (tags ``train/<name>``, ``eval/<name>``).
    wandb_project: also log to this Weights & Biases project (needs ``pip install wandb``).
    config: run configuration, passed to W&B and stored as TensorBoard text.

  Usage::

      with MetricsWriter(workdir) as writer:
          writer.truncate_from(start_step)      # once, when resuming
          writer.write(step, {"reward_mean": r, "kl": kl})
          writer.write_eval(step, {"accuracy": acc})
  """

  def __init__(
    self,
    workdir: str,
    *,
    tensorboard: bool = True,
    wandb_project: str | None = None,
    config: dict | None = None,
  ):
    self.workdir = os.fspath(workdir)
    storage.makedirs(self.workdir)
    self._staging = storage.Staging(self.workdir)
    for name in (METRICS_FILE, EVAL_FILE):  # a resumed run on a bucket appends to its rows
      self._staging.pull(name)
    self._pushed_at = time.monotonic()
    local = self._staging.local  # the workdir itself unless it is a bucket
    self.metrics_path = os.path.join(local, METRICS_FILE)
    self.eval_path = os.path.join(local, EVAL_FILE)
    self.tensorboard_dir = os.path.join(local, TENSORBOARD_DIR)
    self._config = dict(config) if config is not None else None
    self._files: dict[str, TextIO] = {}
    self._closed = False

    self._tb_enabled = tensorboard
    self._tb = None
    self._tb_purge_step: int | None = None
    self._summary_writer_cls = None
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter
      except ImportError as e:  # pragma: no cover - tensorboardX is a dependency
        raise ImportError(
          "MetricsWriter(tensorboard=True) needs tensorboardX: `pip install tensorboardX` "
          "(or pass tensorboard=False)"
        ) from e
      self._summary_writer_cls = SummaryWriter

    self._wandb_run = None
    if wandb_project is not None:
      try:
        import wandb
      except ImportError as e:
        raise ImportError(
          f"MetricsWriter(wandb_project={wandb_project!r}) needs Weights & Biases, "
          "which is not installed: `pip install wandb` (or leave wandb_project unset)"
        ) from e
      wandb_dir = None if self._staging.staged else self.workdir  # W&B keeps its own copy
      self._wandb_run = wandb.init(project=wandb_project, config=self._config, dir=wandb_dir)

  # -- public API ------------------------------------------------------------------------

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Appends one training row to ``metrics.jsonl`` (and TensorBoard / W&B)."""
    self._write(self.metrics_path, "train", step, metrics)

  def write_eval(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Appends one evaluation row to ``eval.jsonl`` (and TensorBoard / W&B)."""
    self._write(self.eval_path, "eval", step, metrics)

  def truncate_from(self, step: int) -> None:
    """Drops every row with ``step >= step`` from ``metrics.jsonl`` and ``eval.jsonl``.

    Call once when (re)starting at ``step``; a fresh run (no files yet) is a no-op.
    Rows without a readable integer step are dropped too. TensorBoard events from
    ``step`` on are purged (hidden) as well.
    """
    self._check_open()
    step = int(step)
    for path in (self.metrics_path, self.eval_path):
      handle = self._files.pop(path, None)
      if handle is not None:
        handle.close()
      if not os.path.exists(path):
        continue
      kept: list[str] = []
      with open(path, encoding="utf-8") as f:
        for line in f:
          try:
            row = json.loads(line)
            row_step = row["step"]
          except (json.JSONDecodeError, KeyError, TypeError):
            continue
          if isinstance(row_step, int) and row_step < step:
            kept.append(line if line.endswith("\n") else line + "\n")
      tmp = path + ".tmp"
      with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, path)
    if self._tb_enabled:
      self._tb_purge_step = step
      if self._tb is not None:  # reopen so that TensorBoard sees the purge marker
        self._tb.close()
        self._tb = None

  def flush(self) -> None:
    """Flushes every sink; with a bucket workdir, uploads the files that changed."""
    for handle in self._files.values():
      handle.flush()
    if self._tb is not None:
      self._tb.flush()
    self._staging.push()
    self._pushed_at = time.monotonic()

  def close(self) -> None:
    """Flushes and closes every sink; safe to call twice."""
    if self._closed:
      return
    self._closed = True
    for handle in self._files.values():
      handle.flush()
      handle.close()
    self._files.clear()
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()
      self._tb = None
    if self._wandb_run is not None:
      self._wandb_run.finish()
      self._wandb_run = None
    self._staging.close()

  def __enter__(self) -> MetricsWriter:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  # -- internals -------------------------------------------------------------------------

  def _check_open(self) -> None:
    if self._closed:
      raise RuntimeError("MetricsWriter is closed")

  def _file(self, path: str) -> TextIO:
    handle = self._files.get(path)
    if handle is None:
      handle = open(path, "a", encoding="utf-8")
      self._files[path] = handle
    return handle

  def _tensorboard(self):
    if self._tb is None:
      self._tb = self._summary_writer_cls(
        logdir=self.tensorboard_dir, purge_step=self._tb_purge_step, flush_secs=30
      )
      if self._config is not None and self._tb_purge_step is None:
        text = json.dumps(self._config, indent=2, sort_keys=True, default=str)
        self._tb.add_text("config", "```\n" + text + "\n```", 0)
      self._tb_purge_step = None
    return self._tb

  def _write(self, path: str, prefix: str, step: int, metrics: Mapping[str, Any]) -> None:
    self._check_open()
    row, values = _row(step, metrics)
    handle = self._file(path)
    handle.write(json.dumps(row, allow_nan=False) + "\n")
    handle.flush()
    step = row["step"]
    if self._tb_enabled:
      tb = self._tensorboard()
      for name, value in values.items():
        tb.add_scalar(f"{prefix}/{name}", float(value), step)
    if self._wandb_run is not None:
      self._wandb_run.log({f"{prefix}/{k}": v for k, v in values.items()}, step=step)
    if self._staging.staged and time.monotonic() - self._pushed_at > storage.SYNC_SECONDS:
      self.flush()


# --------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]] | None:
  """(steps, values) for rows that have ``key``; None (null) becomes NaN (a gap)."""
  steps, values = [], []
  for row in rows:
    if key in row and "step" in row:
      value = row[key]
      steps.append(row["step"])
      values.append(math.nan if value is None else float(value))
  return (steps, values) if steps else None


def _smooth(values: list[float], weight: float) -> list[float]:
  """Exponential moving average that skips NaN."""
  out, last = [], None
  for v in values:
    if not math.isnan(v):
      last = v if last is None else weight * last + (1 - weight) * v
    out.append(math.nan if last is None else last)
  return out


def plot_rewards(workdir: str, out: str | None = None) -> str:
  """Plots training reward (and accuracy) and eval accuracy against step; returns the PNG path.

  Top panel: training ``reward_mean`` (and eval ``reward_mean`` if logged). Bottom panel (if
  any accuracy was logged): training and eval ``accuracy``. Reads ``metrics.jsonl`` and
  ``eval.jsonl``; either may be missing or empty, not both. Saves to ``out`` or
  ``{workdir}/reward.png``. Uses the Agg canvas directly, so it never needs a display and
  never changes pyplot's global backend.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  workdir = os.fspath(workdir)
  metrics_path = storage.join(workdir, METRICS_FILE)
  eval_path = storage.join(workdir, EVAL_FILE)
  has_metrics, has_evals = storage.exists(metrics_path), storage.exists(eval_path)
  if not has_metrics and not has_evals:
    raise FileNotFoundError(f"no {METRICS_FILE} or {EVAL_FILE} in {workdir}")
  train = read_jsonl(metrics_path) if has_metrics else []
  evals = read_jsonl(eval_path) if has_evals else []

  train_reward = _series(train, "reward_mean")
  eval_reward = _series(evals, "reward_mean")
  train_acc = _series(train, "accuracy")
  eval_acc = _series(evals, "accuracy")
  has_acc = train_acc is not None or eval_acc is not None

  fig = Figure(figsize=(8, 7 if has_acc else 4.2), dpi=100)
  FigureCanvasAgg(fig)
  axes = fig.subplots(2 if has_acc else 1, 1, sharex=True, squeeze=False)[:, 0]

  ax = axes[0]
  if train_reward is not None:
    steps, values = train_reward
    if len(values) >= 20:
      ax.plot(steps, values, color="tab:blue", alpha=0.3, linewidth=1, label="train (raw)")
      ax.plot(steps, _smooth(values, 0.9), color="tab:blue", linewidth=2, label="train (smoothed)")
    else:
      ax.plot(steps, values, color="tab:blue", marker=".", linewidth=2, label="train")
  if eval_reward is not None:
    ax.plot(*eval_reward, color="tab:orange", marker="o", linewidth=2, label="eval")
  ax.set_title("Reward (mean per sample)")
  ax.set_ylabel("reward_mean")
  if train_reward is None and eval_reward is None:
    ax.text(
      0.5,
      0.5,
      "no reward_mean logged",
      ha="center",
      va="center",
      transform=ax.transAxes,
      color="gray",
    )

  if has_acc:
    ax = axes[1]
    if train_acc is not None:
      ax.plot(*train_acc, color="tab:green", alpha=0.8, linewidth=1.5, label="train accuracy")
    if eval_acc is not None:
      ax.plot(*eval_acc, color="tab:red", marker="o", linewidth=2, label="eval accuracy")
    ax.set_title("Accuracy")
    ax.set_ylabel("accuracy")

  for ax in axes:
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(loc="best")
  axes[-1].set_xlabel("step")
  fig.suptitle(f"rl_jax run: {storage.basename(storage.absolute(workdir))}")
  fig.tight_layout()

  out = os.fspath(out) if out is not None else storage.join(workdir, PLOT_FILE)
  if storage.is_remote(out):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    storage.write_bytes(out, buffer.getvalue())
    return out
  parent = os.path.dirname(out)
  if parent:
    os.makedirs(parent, exist_ok=True)
  fig.savefig(out, format="png")
  return out


# --------------------------------------------------------------------------------------------
# Progress line
# --------------------------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
  """Short human duration: ``12.3s``, ``5m48s``, ``1h02m``; ``?`` when not finite."""
  seconds = float(seconds)
  if not math.isfinite(seconds):
    return "?"
  if seconds < 0:
    return "-" + format_duration(-seconds)
  if round(seconds, 1) < 60:
    return f"{seconds:.1f}s"
  total = int(round(seconds))
  if total < 3600:
    minutes, secs = divmod(total, 60)
    return f"{minutes}m{secs:02d}s"
  hours, rest = divmod(total, 3600)
  return f"{hours}h{rest // 60:02d}m"


def _fmt(value: Any, spec: str) -> str:
  if value is None:
    return "nan"
  try:
    return format(float(value), spec)
  except (TypeError, ValueError):
    return str(value)


# (metric key, label, format spec); shown in this order when present.
_PROGRESS_FIELDS = (
  ("reward_mean", "reward", ".3f"),
  ("accuracy", "acc", ".3f"),
  ("kl", "kl", ".4g"),
  ("loss", "loss", ".4g"),
)


class Progress:
  """A live one-line training progress display.

  ``step   12/200 | reward 0.531 | acc 0.500 | kl 0.0012 | 1.84 s/step | eta 5m48s``

  On a terminal (``stream.isatty()``) each :meth:`update` rewrites the same line with
  ``\\r``; :meth:`close` ends it with a newline. Otherwise (log files, CI) a full line is
  printed every ``every`` steps and at the last step. Seconds per step is an exponential
  moving average of the time between :meth:`update` calls (so the first call, which
  usually includes compilation, shows no rate). Metric fields appear only when present.
  """

  def __init__(
    self,
    total_steps: int,
    *,
    stream: TextIO = sys.stdout,
    every: int = 1,
    clock=time.monotonic,
  ):
    if every < 1:
      raise ValueError(f"every must be >= 1, got {every}")
    self.total_steps = int(total_steps)
    self.stream = stream
    self.every = int(every)
    self._clock = clock
    isatty = getattr(stream, "isatty", None)
    self._live = bool(isatty()) if callable(isatty) else False
    self._last_time: float | None = None
    self._last_step: int | None = None
    self.seconds_per_step: float | None = None
    self._line = ""  # the live line currently shown (tty only)
    self._closed = False

  def format_line(self, step: int, metrics: Mapping[str, Any]) -> str:
    width = len(str(self.total_steps))
    parts = [f"step {int(step):>{width}d}/{self.total_steps}"]
    for key, label, spec in _PROGRESS_FIELDS:
      if key in metrics:
        parts.append(f"{label} {_fmt(metrics[key], spec)}")
    if self.seconds_per_step is not None:
      parts.append(f"{self.seconds_per_step:.2f} s/step")
      remaining = max(self.total_steps - int(step), 0)
      parts.append(f"eta {format_duration(remaining * self.seconds_per_step)}")
    return " | ".join(parts)

  def update(self, step: int, metrics: Mapping[str, Any] | None = None) -> None:
    metrics = metrics or {}
    step = int(step)
    now = self._clock()
    if self._last_time is not None and self._last_step is not None and step > self._last_step:
      rate = (now - self._last_time) / (step - self._last_step)
      if self.seconds_per_step is None:
        self.seconds_per_step = rate
      else:
        self.seconds_per_step = 0.7 * self.seconds_per_step + 0.3 * rate
    self._last_time, self._last_step = now, step

    line = self.format_line(step, metrics)
    if self._live:
      pad = " " * max(len(self._line) - len(line), 0)
      self.stream.write("\r" + line + pad)
      self._line = line
      self.stream.flush()
    elif step % self.every == 0 or step >= self.total_steps:
      self.stream.write(line + "\n")
      self.stream.flush()

  def log(self, msg: str) -> None:
    """Prints ``msg`` on its own line; on a terminal the live line is redrawn below it."""
    if self._live and self._line:
      clear = "\r" + " " * len(self._line) + "\r"
      self.stream.write(clear + str(msg) + "\n" + self._line)
    else:
      self.stream.write(str(msg) + "\n")
    self.stream.flush()

  def close(self) -> None:
    if self._closed:
      return
    self._closed = True
    if self._live and self._line:
      self.stream.write("\n")
      self._line = ""
    self.stream.flush()

  def __enter__(self) -> Progress:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
