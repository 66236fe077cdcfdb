"""Fault injection: a run killed with SIGKILL again and again ends exactly like one never killed.

  python scripts/fault_injection.py [--kills 20] [--seed 0] [--workdir-root DIR] [--keep]
                                    [--kinds warm,checkpoint,random,...] [--config.FIELD=VALUE ...]

Runs `rl-jax train` on a small configuration (the default experiment with the "test" model, a
60-step warm start and 60 RL steps, so that most random kills land in the RL steps rather
than in restarts) once without interruption, then runs the same command in a
second workdir, kills it with SIGKILL at `--kills` moments and restarts it each time until it
finishes. Then it compares the two workdirs bit for bit: every row of metrics.jsonl and
eval.jsonl (all fields but the wall-time ones: keys ending in `_s`, `gen_tokens_per_s`, `time`),
summary.json and config.json, every array of the RL checkpoints both keep (the final one
required) and of the reference policy. Exit status 0 when all are identical, 1 naming the first
difference (or a restart that failed or hung).

What it proves: a process that dies at any moment (no signal handler runs, no buffer is
flushed, an asynchronous checkpoint write is cut short) loses nothing but time. Resuming from
the newest complete checkpoint (RL or warm start) reproduces the uninterrupted run exactly, and
no checkpoint cut short is ever taken for a complete one.

The kill moments (`--kinds` forces a list, one per kill, cycled):
  warm              during the warm start: on the n-th "sft step" log line (n in 1..4)
  checkpoint        on first sight of a new `*.orbax-checkpoint-tmp*` directory (a checkpoint
                    write in progress) under checkpoints/, warm_start/ or the workdir (reference)
  random            a uniform delay in [0, R], R the expected wall time of this restart (a
                    quarter of an uninterrupted run's time T for startup, plus T's share of
                    the RL steps still to run)
  rl                during the RL steps: on the n-th "step N/T" progress line (n in 1..4)
  after-checkpoint  on first sight of a new complete RL checkpoint directory
  final-checkpoint  on first sight of the final RL checkpoint (checkpoints/<train.steps>)
By default the first kill is `warm`, the second `checkpoint`, the third `after-checkpoint`, and
the rest a shuffled mix with `checkpoint` for about a third of all kills and `random` for the
others; the random delays are drawn up front and used in increasing order (from startup towards
the end of a restart). A kind that no longer applies (a warm-start kill once the warm start is
done; any but `random` once the run has finished, whose restarts only say so and exit) becomes
`random`. A restart that finishes before its kill ends the run; the remaining kills hit
restarts of the finished run. Every restart must end by its kill or exit 0 within
--restart-timeout seconds.

`after-checkpoint` and `final-checkpoint` found a gap when this script was written: a step's
checkpoint could be complete before its evaluation row (and, at the last step, summary.json)
was written, so a run killed in between resumed past that step without them. The loop now
evaluates before it saves and writes the summary again when it finds the run finished;
`--kills 6 --kinds after-checkpoint` and `--kills 1 --kinds final-checkpoint` check it.

The workdirs share a persistent JAX compilation cache (--jit-cache), so a restart takes seconds
rather than a recompilation's half minute and the kills land in the work rather than in XLA.
With random kills, a second uninterrupted run (its programs read from the cache) measures T and
must itself equal the first, so that any difference found is the resumption's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The small configuration: 35-50 s compiling, 13-15 s from the compilation cache on 2 cores.
SMALL_CONFIG = {
  "model.preset": "test",
  "task.max_digits": "2",
  "sft.steps": "60",
  "sft.batch_size": "32",
  "sft.checkpoint_every": "10",
  "train.steps": "60",
  "rl.prompts_per_step": "4",
  "rl.group_size": "4",
  "eval.every": "4",
  "eval.num_prompts": "16",
  "checkpoint.every": "2",
  "log.tensorboard": "false",
}

KINDS = ("warm", "checkpoint", "random", "rl", "after-checkpoint", "final-checkpoint")
TMP_MARK = ".orbax-checkpoint-tmp"
WALL_KEYS = ("gen_tokens_per_s", "time")
SFT_LINE = re.compile(r"sft step\s+(\d+)/(\d+)")
RL_LINE = re.compile(r"step\s+(\d+)/(\d+) \|")
RESUMED_LINE = re.compile(r"resumed from checkpoint step (\d+)")
FINISHED_LINE = "already holds the finished run"
POLL_S = 0.002


class FaultInjectionError(RuntimeError):
  """A restart failed or hung, or the harness cannot go on."""


@dataclasses.dataclass
class Plan:
  """One kill: its kind and the random draws it may use (drawn up front from the seed)."""

  kind: str
  unit: float  # the delay of a random kill as a fraction of T
  nth: int  # warm / rl: kill on the nth new progress line


@dataclasses.dataclass
class Kill:
  index: int
  trigger: str  # what fired it: "random 7.4 s", "checkpoint tmp dir", ...
  at_s: float  # seconds after the restart began
  category: str  # startup | warm start | RL | finished run
  phase: str  # in words: "RL step 7", "warm start (after sft step 20)", ...
  write: str | None  # the checkpoint write cut short, if any: "RL checkpoint 6"

  def line(self, total: int) -> str:
    write = f"; cut the write of the {self.write} short" if self.write else ""
    return (
      f"kill {self.index:2d}/{total} at {self.at_s:6.2f} s [{self.trigger}]: {self.phase}{write}"
    )


@dataclasses.dataclass
class Result:
  identical: bool
  difference: str | None
  kills: list[Kill]
  restarts: int
  wall_s: float
  summary: str
  notes: list[str] = dataclasses.field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Running the command
# --------------------------------------------------------------------------------------------


def train_command(workdir: str, config: dict[str, str]) -> list[str]:
  """`rl-jax train` on `workdir` with `config`'s overrides, run by this interpreter."""
  flags = [f"--config.{k}={v}" for k, v in config.items()]
  default = os.path.join(REPO, "experiments", "default.py")
  cli = [sys.executable, "-m", "rl_jax.cli", "train"]
  return cli + [f"--config={default}", f"--workdir={workdir}", *flags]


def command_env(jit_cache: str | None) -> dict[str, str]:
  env = dict(os.environ)
  env.setdefault("JAX_PLATFORMS", "cpu")  # resumption is bit-exact on CPU
  env["PYTHONUNBUFFERED"] = "1"
  if jit_cache:
    env["JAX_COMPILATION_CACHE_DIR"] = jit_cache
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  return env


def _launch(cmd: list[str], log_path: str, env: dict[str, str]) -> subprocess.Popen:
  with open(log_path, "wb") as log:  # the child keeps its own descriptor
    return subprocess.Popen(
      cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True
    )


def _kill(proc: subprocess.Popen) -> None:
  """SIGKILL to the process group this harness started (the command and anything it spawned)."""
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except ProcessLookupError:
    pass
  proc.wait()


def _tail(path: str, n: int = 15) -> str:
  try:
    with open(path, errors="replace") as f:
      return "".join(f.readlines()[-n:])
  except OSError:
    return ""


def run_uninterrupted(workdir: str, config, env, log_path: str, timeout: float) -> float:
  """Runs the command to the end; returns its wall time. Raises if it fails or hangs."""
  t0 = time.monotonic()
  proc = _launch(train_command(workdir, config), log_path, env)
  try:
    rc = proc.wait(timeout)
  except subprocess.TimeoutExpired:
    _kill(proc)
    raise FaultInjectionError(
      f"the uninterrupted run in {workdir} hung ({timeout:.0f} s)"
    ) from None
  if rc != 0:
    raise FaultInjectionError(
      f"the uninterrupted run in {workdir} exited with {rc}:\n{_tail(log_path)}"
    )
  return time.monotonic() - t0


# --------------------------------------------------------------------------------------------
# Watching a restart
# --------------------------------------------------------------------------------------------


class Watch:
  """What a restart has done so far: checkpoint directories (against those present when it
  started) and its log."""

  def __init__(self, workdir: str, log_path: str):
    self.workdir, self.log_path = workdir, log_path
    self.tmp_at_start = self.tmp_dirs()
    self.complete_at_start = set(complete_steps(workdir))
    self.text, self._offset = "", 0

  def tmp_dirs(self) -> dict[str, tuple[int, int]]:
    """{"<sub>/<name>": (inode, mtime)} of every in-progress checkpoint directory."""
    found = {}
    for sub in ("checkpoints", "warm_start", "."):
      directory = os.path.join(self.workdir, sub)
      try:
        names = os.listdir(directory)
      except OSError:
        continue
      for name in names:
        if TMP_MARK in name:
          try:
            st = os.stat(os.path.join(directory, name))
          except OSError:
            continue
          found[f"{sub}/{name}"] = (st.st_ino, st.st_mtime_ns)
    return found

  def new_tmp_dirs(self) -> list[str]:
    """In-progress checkpoint directories this restart created (or is writing into)."""
    return sorted(k for k, v in self.tmp_dirs().items() if self.tmp_at_start.get(k) != v)

  def new_complete_steps(self) -> list[int]:
    return sorted(set(complete_steps(self.workdir)) - self.complete_at_start)

  def read_log(self) -> str:
    try:
      with open(self.log_path, "rb") as f:
        f.seek(self._offset)
        data = f.read()
    except OSError:
      return self.text
    self._offset += len(data)
    self.text += data.decode(errors="replace")
    return self.text

  def lines(self, pattern: re.Pattern) -> int:
    """Complete log lines that start with `pattern`."""
    complete = self.text[: self.text.rfind("\n") + 1]
    return sum(1 for line in complete.splitlines() if pattern.match(line))


def has_reference(workdir: str) -> bool:
  return os.path.isdir(os.path.join(workdir, "reference"))


def complete_steps(workdir: str) -> list[int]:
  """The steps of the complete RL checkpoints in `workdir`."""
  try:
    names = os.listdir(os.path.join(workdir, "checkpoints"))
  except OSError:
    return []
  return [int(n) for n in names if n.isdigit()]


def _describe_write(key: str) -> str:
  sub, name = key.split("/", 1)
  step = name.split(TMP_MARK)[0]
  if sub == "checkpoints":
    return f"RL checkpoint {step}"
  if sub == "warm_start":
    return f"warm-start checkpoint {step}"
  return f"{step} policy" if step == "reference" else f"checkpoint {name}"


def classify(workdir: str, text: str, finished: bool, train_steps: int) -> tuple[str, str]:
  """(category, phase in words) of a restart killed after writing `text` to its log."""
  if finished or FINISHED_LINE in text:
    return "finished run", "restart of the finished run"
  rl_step = None
  sft_step = None
  warm = loaded = False
  for line in text.splitlines():
    if m := RESUMED_LINE.match(line):
      rl_step = int(m[1])
    elif line.startswith("held-out before RL"):
      rl_step = 0
    elif m := RL_LINE.match(line):
      rl_step = int(m[1])
    elif m := SFT_LINE.match(line):
      sft_step, warm = int(m[1]), True
    elif line.startswith(("warm start:", "warm start resumed")):
      warm = True
    elif line.startswith("warm start loaded"):
      loaded = True
  if rl_step is not None and rl_step >= train_steps:
    return "RL", "after the last RL step (final checkpoint, evaluation, summary)"
  if rl_step is not None:
    return "RL", f"RL step {rl_step + 1}"
  if (warm or loaded) and has_reference(workdir):
    return "RL", "before RL step 1 (reference policy saved; evaluation before RL)"
  if warm:
    after = f"after sft step {sft_step}" if sft_step else "before the first logged sft step"
    return "warm start", f"warm start ({after})"
  return "startup", "startup"


def _trigger(plan: Plan, watch: Watch, elapsed: float, delay: float, final: int) -> str | None:
  """What fires `plan`'s kill now, or None."""
  kind = plan.kind
  if kind == "random":
    return f"random {delay:.2f} s" if elapsed >= delay else None
  if kind == "checkpoint":
    return "checkpoint tmp dir" if watch.new_tmp_dirs() else None
  if kind == "after-checkpoint":
    new = watch.new_complete_steps()
    return f"RL checkpoint {new[0]} complete" if new else None
  if kind == "final-checkpoint":
    return f"RL checkpoint {final} complete" if final in watch.new_complete_steps() else None
  watch.read_log()
  if kind == "warm":
    if watch.lines(SFT_LINE) >= plan.nth:
      return f"sft log line {plan.nth}"
    return "warm start over" if has_reference(watch.workdir) else None
  if kind == "rl":
    return f"RL log line {plan.nth}" if watch.lines(RL_LINE) >= plan.nth else None
  raise ValueError(f"unknown kill kind {kind!r}")


# --------------------------------------------------------------------------------------------
# The kill loop
# --------------------------------------------------------------------------------------------


def plan_kills(kills: int, rng: random.Random, kinds: list[str] | None = None) -> list[Plan]:
  """The kinds of `kills` kills (`kinds` cycled, or the default mix) with their random draws."""
  if kinds:
    bad = [k for k in kinds if k not in KINDS]
    if bad:
      raise ValueError(f"unknown kill kinds {bad}; choose from {', '.join(KINDS)}")
    chosen = [kinds[i % len(kinds)] for i in range(kills)]
  else:
    n_checkpoint = max(1, round(kills / 3)) if kills >= 2 else 0
    head = ["warm", "checkpoint", "after-checkpoint"][:kills]
    rest = ["checkpoint"] * (n_checkpoint - head.count("checkpoint"))
    rest += ["random"] * (kills - len(head) - len(rest))
    rng.shuffle(rest)
    chosen = head + rest
  # Random delays in increasing order: the early kills land early in their restarts (startup, the
  # warm start), the later ones further on, and only the last few are likely to let the run
  # finish; in random order, one late draw early on would leave the rest to hit restarts of the
  # finished run.
  units = sorted(rng.random() for _ in chosen)
  return [Plan(kind, unit, rng.randint(1, 4)) for kind, unit in zip(chosen, units)]


def _applicable(plan: Plan, workdir: str, finished: bool, train_steps: int) -> Plan:
  """`plan`, or a random kill where its kind cannot happen in this restart; an `rl` kill's line
  is moved up to one the restart will print."""
  if plan.kind == "random":
    return plan
  if finished or (plan.kind == "warm" and has_reference(workdir)):
    return dataclasses.replace(plan, kind="random")
  if plan.kind == "rl":
    done = max(complete_steps(workdir), default=0)
    return dataclasses.replace(plan, nth=max(1, min(plan.nth, train_steps - done)))
  return plan


def _remaining(workdir: str, wall_s: float, train_steps: int) -> float:
  """The expected wall time of a restart of `workdir`: its startup (about a quarter of an
  uninterrupted run's here) plus the share of the RL steps still to run, so that random kills
  keep landing in the work as the run advances rather than after it has finished."""
  startup = wall_s / 4
  done = max(complete_steps(workdir), default=0)
  return startup + (wall_s - startup) * (1 - done / max(train_steps, 1))


def kill_and_restart(
  workdir: str,
  config: dict[str, str],
  env: dict[str, str],
  plans: list[Plan],
  wall_s: float,
  logs: str,
  *,
  restart_timeout: float = 300.0,
  echo=print,
) -> tuple[list[Kill], int]:
  """Runs the command on `workdir` until it has been killed once per plan and then finished
  (a restart after the last kill runs to its end). Returns (the kills, the number of runs)."""
  train_steps = int(config["train.steps"])
  cmd = train_command(workdir, config)
  kills: list[Kill] = []
  finished, finished_wall = False, None
  for run in range(1, 4 * len(plans) + 11):
    plan = plans[len(kills)] if len(kills) < len(plans) else None
    if plan is not None:
      plan = _applicable(plan, workdir, finished, train_steps)
    span = finished_wall if finished and finished_wall else _remaining(workdir, wall_s, train_steps)
    delay = plan.unit * span if plan is not None else 0.0
    log_path = os.path.join(logs, f"restart-{run:02d}.log")
    watch = Watch(workdir, log_path)
    t0 = time.monotonic()
    proc = _launch(cmd, log_path, env)
    fired = None
    while proc.poll() is None:
      elapsed = time.monotonic() - t0
      if elapsed > restart_timeout:
        _kill(proc)
        raise FaultInjectionError(
          f"restart {run} hung: still running after {restart_timeout:.0f} s "
          f"(log {log_path}):\n{_tail(log_path)}"
        )
      if plan is not None:
        fired = _trigger(plan, watch, elapsed, delay, train_steps)
        if fired:
          _kill(proc)
          break
      time.sleep(POLL_S)
    elapsed = time.monotonic() - t0
    if fired:
      writes = [_describe_write(k) for k in watch.new_tmp_dirs()]  # the process is gone
      category, phase = classify(workdir, watch.read_log(), finished, train_steps)
      kill = Kill(len(kills) + 1, fired, elapsed, category, phase, ", ".join(writes) or None)
      kills.append(kill)
      echo(kill.line(len(plans)))
      continue
    proc.wait()
    if proc.returncode != 0:
      raise FaultInjectionError(
        f"restart {run} exited with status {proc.returncode} after {elapsed:.1f} s "
        f"(log {log_path}):\n{_tail(log_path)}"
      )
    was = "finished the run"
    if FINISHED_LINE in watch.read_log():
      was = "restart of the finished run" if finished else "found the run finished"
    before = " (before its kill)" if plan is not None else ""
    echo(f"run {run:2d}: {was}, exit 0 after {elapsed:.2f} s{before}")
    if finished:
      finished_wall = elapsed
    finished = True
    if len(kills) == len(plans):
      return kills, run
  raise FaultInjectionError(f"gave up after {run} runs with {len(kills)} of {len(plans)} kills")


# --------------------------------------------------------------------------------------------
# Comparing two workdirs
# --------------------------------------------------------------------------------------------


def is_wall_time(key: str) -> bool:
  return key.endswith("_s") or key in WALL_KEYS


def _same(a, b) -> bool:
  return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # floats by repr


def read_rows(path: str) -> list[dict]:
  """Every row of a JSONL file; an unreadable line is an error here."""
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f.read().splitlines() if line.strip()]


def compare_rows(name: str, expected: list[dict], got: list[dict]) -> str | None:
  if len(expected) != len(got):
    steps = lambda rows: [r.get("step") for r in rows]
    return (
      f"{name}: {len(got)} rows (steps {steps(got)}), the uninterrupted run "
      f"{len(expected)} (steps {steps(expected)})"
    )
  for e, g in zip(expected, got):
    where = f"{name} row of step {e.get('step')}"
    if set(e) != set(g):
      return f"{where}: fields {sorted(set(e) ^ set(g))} are in only one of the runs"
    for key in e:
      if not is_wall_time(key) and not _same(e[key], g[key]):
        return f"{where}: {key} = {g[key]!r}, uninterrupted run {e[key]!r}"
  return None


def compare_json(name: str, expected, got, ignore=("workdir",)) -> str | None:
  """The first difference of two JSON values (wall-time keys and `ignore` skipped)."""
  if isinstance(expected, dict) and isinstance(got, dict):
    keys = [k for k in set(expected) | set(got) if not is_wall_time(k) and k not in ignore]
    for key in sorted(keys):
      if key not in expected or key not in got:
        return f"{name}: {key!r} is in only one of the runs"
      diff = compare_json(f"{name}.{key}", expected[key], got[key], ignore)
      if diff:
        return diff
    return None
  return None if _same(expected, got) else f"{name} = {got!r}, uninterrupted run {expected!r}"


def read_arrays(path: str) -> dict:
  """A checkpoint's arrays by flat key, read without a target."""
  import numpy as np
  import orbax.checkpoint as ocp

  with ocp.StandardCheckpointer() as ckptr:
    return {k: np.asarray(v) for k, v in ckptr.restore(path).items()}


def compare_arrays(name: str, expected_path: str, got_path: str) -> str | None:
  """Every array bit for bit (dtype, shape and bytes)."""
  import numpy as np

  if not os.path.isdir(got_path):
    return f"{name}: {got_path} is missing"
  expected, got = read_arrays(expected_path), read_arrays(got_path)
  if set(expected) != set(got):
    return f"{name}: arrays {sorted(set(expected) ^ set(got))[:5]} are in only one of the runs"
  for key in sorted(expected):
    e, g = expected[key], got[key]
    if e.dtype != g.dtype or e.shape != g.shape or e.tobytes() != g.tobytes():
      detail = f"{g.dtype}{list(g.shape)} vs {e.dtype}{list(e.shape)}"
      if e.shape == g.shape and np.issubdtype(e.dtype, np.number):
        delta = np.abs(e.astype(np.float64) - g.astype(np.float64))
        detail = f"{int((delta > 0).sum())} of {e.size} values differ, max |diff| {delta.max():.3g}"
      return f"{name}: array {key!r} differs ({detail})"
  return None


def compare_workdirs(expected: str, got: str, train_steps: int) -> str | None:
  """The first difference between two finished workdirs, or None when identical."""
  for name in ("metrics.jsonl", "eval.jsonl"):
    path = os.path.join(got, name)
    if not os.path.exists(path):
      return f"{name} is missing"
    diff = compare_rows(name, read_rows(os.path.join(expected, name)), read_rows(path))
    if diff:
      return diff
  for name in ("summary.json", "config.json"):
    path = os.path.join(got, name)
    if not os.path.exists(path):
      return f"{name} is missing (the uninterrupted run wrote one)"
    with open(os.path.join(expected, name)) as f, open(path) as g:
      diff = compare_json(name, json.load(f), json.load(g))
    if diff:
      return diff
  steps = sorted(int(n) for n in os.listdir(os.path.join(expected, "checkpoints")) if n.isdigit())
  if train_steps not in steps:
    raise FaultInjectionError(f"the uninterrupted run has no checkpoint {train_steps}")
  for step in reversed(steps):
    got_dir = os.path.join(got, "checkpoints", str(step), "state")
    if step != train_steps and not os.path.isdir(got_dir):
      continue  # an older checkpoint the run need not keep
    exp_dir = os.path.join(expected, "checkpoints", str(step), "state")
    diff = compare_arrays(f"checkpoint {step}", exp_dir, got_dir)
    if diff:
      return diff
  reference = lambda d: os.path.join(d, "reference")
  return compare_arrays("reference policy", reference(expected), reference(got))


def leftovers(workdir: str) -> list[str]:
  """Notes on what the kills left behind: in-progress directories, moved-aside checkpoints."""
  notes = []
  for sub in ("checkpoints", "warm_start", "."):
    directory = os.path.join(workdir, sub)
    if os.path.isdir(directory):
      stale = sorted(n for n in os.listdir(directory) if TMP_MARK in n)
      if stale:
        notes.append(f"in-progress directories left in {os.path.normpath(directory)}: {stale}")
  corrupt = os.path.join(workdir, "corrupt")
  if os.path.isdir(corrupt) and os.listdir(corrupt):
    notes.append(f"checkpoints moved aside as unreadable: {sorted(os.listdir(corrupt))}")
  if os.path.isdir(os.path.join(workdir, "warm_start")):
    notes.append("warm_start/ was not removed")
  return notes


# --------------------------------------------------------------------------------------------
# The whole experiment
# --------------------------------------------------------------------------------------------


def summarize(kills: list[Kill]) -> str:
  count = lambda category: sum(k.category == category for k in kills)
  parts = [f"{sum(k.write is not None for k in kills)} during checkpoint writes"]
  for category, words in (
    ("warm start", "during the warm start"),
    ("RL", "during RL steps"),
    ("startup", "during startup"),
    ("finished run", "restarting the finished run"),
  ):
    if count(category):
      parts.append(f"{count(category)} {words}")
  return f"{len(kills)} kill{'s' * (len(kills) != 1)} ({', '.join(parts)})"


def run_fault_injection(
  kills: int = 20,
  seed: int = 0,
  workdir_root: str | None = None,
  *,
  kinds: list[str] | None = None,
  config: dict[str, str] | None = None,
  jit_cache: str | None = "",
  restart_timeout: float = 300.0,
  echo=print,
) -> Result:
  """The reference run, the killed and restarted run, and their comparison, in `workdir_root`
  (a new temporary folder when None). `jit_cache`: "" for one in `workdir_root`, None for
  none, or a folder."""
  t_start = time.monotonic()
  config = {**SMALL_CONFIG, **(config or {})}
  train_steps = int(config["train.steps"])
  root = workdir_root or tempfile.mkdtemp(prefix="rl_jax_fault_")
  reference, faulted, logs = (os.path.join(root, n) for n in ("uninterrupted", "faulted", "logs"))
  for path in (reference, faulted, os.path.join(root, "uninterrupted-2")):
    if os.path.exists(path):
      raise FaultInjectionError(f"{path} exists already; use a new --workdir-root")
  os.makedirs(logs, exist_ok=True)
  if jit_cache == "":
    jit_cache = os.path.join(root, "jit_cache")
  env = command_env(jit_cache)
  rng = random.Random(seed)
  plans = plan_kills(kills, rng, kinds)

  echo(f"workdirs in {root}; compilation cache {jit_cache or 'off'}")
  wall = run_uninterrupted(reference, config, env, os.path.join(logs, "uninterrupted.log"), 900)
  echo(f"uninterrupted run: {wall:.1f} s")
  if any(p.kind == "random" for p in plans):
    second = os.path.join(root, "uninterrupted-2")
    wall = run_uninterrupted(second, config, env, os.path.join(logs, "uninterrupted-2.log"), 900)
    diff = compare_workdirs(reference, second, train_steps)
    if diff:
      total = time.monotonic() - t_start
      return Result(False, f"two uninterrupted runs differ: {diff}", [], 0, total, "0 kills")
    echo(f"second uninterrupted run: {wall:.1f} s, identical to the first (T = {wall:.1f} s)")
  done, runs = kill_and_restart(
    faulted, config, env, plans, wall, logs, restart_timeout=restart_timeout, echo=echo
  )
  diff = compare_workdirs(reference, faulted, train_steps)
  summary = summarize(done)
  total = time.monotonic() - t_start
  return Result(diff is None, diff, done, runs, total, summary, leftovers(faulted))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    epilog="Any --config.FIELD=VALUE is passed on to `rl-jax train` (after the small config).",
  )
  parser.add_argument("--kills", type=int, default=20)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workdir-root", default=None, help="default: a new temporary folder")
  parser.add_argument("--keep", action="store_true", help="keep the workdirs (kept on failure)")
  parser.add_argument("--kinds", default="", help=f"comma-separated, cycled: {', '.join(KINDS)}")
  parser.add_argument("--jit-cache", default="", help='a folder; "none" for no cache')
  parser.add_argument("--restart-timeout", type=float, default=300.0)
  args, rest = parser.parse_known_args(argv)
  overrides = {}
  for arg in rest:
    name, eq, value = arg.partition("=")
    if not (name.startswith("--config.") and eq):
      parser.error(f"unrecognized argument {arg!r}")
    overrides[name[len("--config.") :]] = value
  root = args.workdir_root
  created = root is None or not os.path.exists(root)
  root = root or tempfile.mkdtemp(prefix="rl_jax_fault_")
  jit_cache = None if args.jit_cache == "none" else args.jit_cache
  kinds = [k.strip() for k in args.kinds.split(",") if k.strip()] or None
  ok = False
  try:
    result = run_fault_injection(
      args.kills,
      args.seed,
      root,
      kinds=kinds,
      config=overrides,
      jit_cache=jit_cache,
      restart_timeout=args.restart_timeout,
    )
    for note in result.notes:
      print(f"note: {note}")
    if result.identical:
      print(
        f"{result.summary}; final metrics, evals and parameters identical to the uninterrupted "
        f"run ({result.restarts} runs, {result.wall_s:.0f} s in all)"
      )
      ok = True
    else:
      print(f"{result.summary}; DIFFERENT from the uninterrupted run: {result.difference}")
  except FaultInjectionError as e:
    print(f"fault injection failed: {e}")
  finally:
    if ok and not args.keep:
      if created:
        shutil.rmtree(root, ignore_errors=True)
      else:
        for name in ("uninterrupted", "uninterrupted-2", "faulted", "logs", "jit_cache"):
          shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    else:
      print(f"workdirs and logs kept in {root}")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
