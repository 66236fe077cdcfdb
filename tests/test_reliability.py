"""Reliability: signals stop a run at a step boundary, diverged runs stop loudly, resume refuses
a changed experiment, unreadable and unwritable checkpoints are handled in one line, and bad
inputs and reward outputs are named before they become tracebacks."""

import errno
import io
import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from tests_support import make_small_config

from rl_jax import cli, guards, loop, rewards, trainer
from rl_jax.checkpoint import Checkpointer, CheckpointError, CheckpointStorageError, describe
from rl_jax.metrics import read_jsonl
from rl_jax.tasks import Example

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = ("_s", "gen_tokens_per_s")


def _rows(workdir, name="metrics.jsonl"):
  rows = read_jsonl(os.path.join(workdir, name))
  return [{k: v for k, v in r.items() if not k.endswith(TIMING)} for r in rows]


def _arrays(path):
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(path)


def _same_arrays(a, b):
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


class _SignalAt(io.StringIO):
  """A progress stream that sends `sig` to this process when it first prints `marker`."""

  def __init__(self, marker, sig=signal.SIGTERM):
    super().__init__()
    self.marker, self.sig, self.fired = marker, sig, False

  def write(self, s):
    if not self.fired and self.marker in s:
      self.fired = True
      os.kill(os.getpid(), self.sig)
    return super().write(s)


def _quiet_run(config, workdir, **kw):
  kw.setdefault("stream", io.StringIO())
  return loop.run(config, str(workdir), log=lambda m: None, **kw)


# --- the update guard ---------------------------------------------------------------------------


def _state(lr=0.1):
  params = {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array([0.5])}
  tx = optax.sgd(lr)
  return trainer.init_state(params, tx), tx


@pytest.mark.parametrize(
  "grads, loss, kwargs, reason",
  [
    ({"w": jnp.array([1.0, 0.0, 0.0]), "b": jnp.array([0.0])}, 1.0, {}, 0),
    ({"w": jnp.array([jnp.nan, 0.0, 0.0]), "b": jnp.array([0.0])}, 1.0, {}, 1),
    ({"w": jnp.zeros(3), "b": jnp.zeros(1)}, jnp.inf, {}, 1),
    # finite gradients whose update (learning rate 10) overflows float32: the produced
    # parameters are not finite
    ({"w": jnp.array([3e38, 0.0, 0.0]), "b": jnp.array([0.0])}, 1.0, {"lr": 10.0}, 2),
    # |update| = 0.1 * 40 = 4 > 1.0 * |params| = sqrt(1 + 4 + 9 + 0.25) = 3.775
    ({"w": jnp.array([40.0, 0.0, 0.0]), "b": jnp.array([0.0])}, 1.0, {"max_update_ratio": 1}, 4),
    # ... but 3.7 < 3.775 passes
    ({"w": jnp.array([37.0, 0.0, 0.0]), "b": jnp.array([0.0])}, 1.0, {"max_update_ratio": 1}, 0),
    ({"w": jnp.array([3.0, 4.0, 0.0]), "b": jnp.array([0.0])}, 1.0, {"grad_norm_limit": 4.9}, 8),
    ({"w": jnp.array([3.0, 4.0, 0.0]), "b": jnp.array([0.0])}, 1.0, {"grad_norm_limit": 5.1}, 0),
  ],
)
def test_apply_gradients_skips_unsafe_updates(grads, loss, kwargs, reason):
  kwargs = dict(kwargs)
  state, tx = _state(kwargs.pop("lr", 0.1))
  new, got = trainer.apply_gradients(state, grads, jnp.float32(loss), tx, **kwargs)
  assert int(got) == reason
  assert int(new.skipped) == (reason != 0) and int(new.step) == 1
  if reason:  # kept exactly
    _same_arrays(new.params, state.params)
  else:
    expect = jax.tree.map(lambda p, g: p - 0.1 * g, state.params, grads)
    _same_arrays(new.params, expect)
  if reason & 2:
    assert "non-finite" in trainer.describe_skip(reason)


def test_overflowing_update_skipped_with_both_reasons_in_words():
  assert trainer.describe_skip(2 | 4).count(";") == 1
  assert trainer.describe_skip(0) == "none"


def test_skip_guard_warns_then_stops():
  guard = guards.SkipGuard(max_consecutive=3)
  ok = lambda total: dict(skipped_updates=total, grad_norm=1.0, skip_reason=0)
  bad = lambda total: dict(skipped_updates=total, grad_norm=float("nan"), skip_reason=1)
  assert guard.observe(1, ok(0)) is None
  assert "1 step(s) in a row" in guard.observe(2, bad(1))
  assert guard.observe(3, ok(1)) is None  # the streak restarts
  assert "1 step(s) in a row" in guard.observe(4, bad(2))
  assert "2 step(s) in a row, 3 in all" in guard.observe(5, bad(3))
  with pytest.raises(guards.TrainingDiverged, match="3 steps in a row"):
    guard.observe(6, bad(4))


def test_spike_limit_is_factor_times_running_median():
  guard = guards.SkipGuard(max_consecutive=5, spike_factor=10, spike_window=5)
  assert guard.grad_norm_limit() is None  # no history yet
  for i, norm in enumerate([1.0, 3.0, 2.0, 100.0, 2.5, 4.0]):
    guard.observe(i + 1, dict(skipped_updates=0, grad_norm=norm, skip_reason=0))
  assert guard.grad_norm_limit() == pytest.approx(10 * np.median([3.0, 2.0, 100.0, 2.5, 4.0]))


# --- divergence: the run stops loudly and the last checkpoint stays good --------------------------


def test_exploding_learning_rate_stops_with_exit_3_and_good_checkpoint(tmp_path, capsys):
  workdir = tmp_path / "run"
  # (an entropy bonus gives every step a gradient, so every update is 1e30 x too large)
  over = _small_overrides(
    **{"train.steps": 10, "train.learning_rate": 1e30, "algorithm.entropy_coef": 0.01}
  )
  assert cli.main(_argv("train", workdir, over)) == guards.DIVERGED_EXIT
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "5 steps in a row skipped" in err[0] and "max_update_ratio" in err[0]
  skips = [r["skipped_updates"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))]
  assert skips == [1, 2, 3, 4, 5]
  assert json.load(open(workdir / "summary.json"))["stopped"] == "diverged"
  # The kept checkpoints hold the warm-start weights (no update was applied), not a blown-up
  # state.
  reference = _arrays(str(workdir / "reference"))
  steps = os.listdir(workdir / "checkpoints")
  assert steps and all(s.isdigit() for s in steps)
  for step in steps:
    state = _arrays(str(workdir / "checkpoints" / step / "state"))
    for k, v in reference.items():
      np.testing.assert_array_equal(state[f"state.params.{k}"], v)


def _small_overrides(**extra):
  from conftest import SMALL_OVERRIDES

  out = {k: v for k, v in SMALL_OVERRIDES.items() if k != "log.tensorboard"}
  out["log.tensorboard"] = "false"
  out.update({k: str(v) for k, v in extra.items()})
  return out


def _argv(command, workdir, overrides):
  return [
    command,
    f"--config={ROOT}/experiments/default.py",
    f"--workdir={workdir}",
    *[f"--config.{k}={v}" for k, v in overrides.items()],
  ]


# --- signals --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """An uninterrupted 6-step run (checkpoints every 2)."""
  workdir = tmp_path_factory.mktemp("finished")
  _quiet_run(make_small_config(**{"log.tensorboard": "false"}), workdir)
  return workdir


def test_sigterm_saves_at_the_step_boundary_and_resume_is_exact(finished, tmp_path):
  config = make_small_config(**{"log.tensorboard": "false", "checkpoint.every": 4})
  out = _quiet_run(config, tmp_path, stream=_SignalAt("step 3/"))
  assert out["stopped"] == "SIGTERM"
  assert Checkpointer(str(tmp_path)).all_steps() == [3]  # saved off-schedule, at the boundary
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
  stopped = json.load(open(tmp_path / "summary.json"))
  assert (stopped["stopped"], stopped["after"]) == ("SIGTERM", "step 3")
  _quiet_run(config, tmp_path)
  assert "stopped" not in json.load(open(tmp_path / "summary.json"))  # the finished run's
  assert _rows(tmp_path) == _rows(finished)
  assert _rows(tmp_path, "eval.jsonl") == _rows(finished, "eval.jsonl")
  _same_arrays(
    _arrays(str(tmp_path / "checkpoints" / "6" / "state")),
    _arrays(str(finished / "checkpoints" / "6" / "state")),
  )


def test_sigint_during_warm_start_checkpoints_it_and_resume_is_exact(finished, tmp_path):
  config = make_small_config(**{"log.tensorboard": "false", "sft.checkpoint_every": 20})
  logged = []

  def log(msg):
    logged.append(msg)
    if msg.startswith("sft step    40/"):
      os.kill(os.getpid(), signal.SIGINT)

  out = loop.run(config, str(tmp_path), log=log, stream=io.StringIO())
  assert out["stopped"] == "SIGINT"
  assert not (tmp_path / "reference").exists() and not os.listdir(tmp_path / "checkpoints")
  assert os.listdir(tmp_path / "warm_start") == ["40"]
  assert "warm start stopped after step 40 (checkpoint saved)" in logged
  logged.clear()
  loop.run(config, str(tmp_path), log=logged.append, stream=io.StringIO())
  assert "warm start resumed from its checkpoint at step 40" in logged
  assert not (tmp_path / "warm_start").exists()  # removed once the reference is saved
  _same_arrays(_arrays(str(tmp_path / "reference")), _arrays(str(finished / "reference")))
  assert _rows(tmp_path) == _rows(finished)


# --- resume safety --------------------------------------------------------------------------------


def test_changed_experiment_is_refused_before_anything_is_written(finished, capsys):
  before = open(finished / "config.json").read()
  assert cli.main(_argv("train", finished, _small_overrides(**{"rl.group_size": 2}))) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "rl.group_size (4 -> 2)" in err[0] and "--allow_config_change" in err[0]
  assert open(finished / "config.json").read() == before


def test_steps_below_the_checkpoint_is_an_error_and_equal_is_done(finished, capsys):
  assert cli.main(_argv("train", finished, _small_overrides(**{"train.steps": 4}))) == 2
  assert "beyond train.steps=4" in capsys.readouterr().err
  assert cli.main(_argv("train", finished, _small_overrides())) == 0
  assert "already holds the finished run" in capsys.readouterr().out


def test_changed_fields_compares_against_defaults_for_new_fields():
  from rl_jax import config as config_lib

  current = make_small_config().to_dict()
  saved = json.loads(json.dumps(current))
  del saved["train"]["max_update_ratio"]  # a workdir written before the field existed
  assert config_lib.changed_fields(saved, current) == {}
  saved["algorithm"]["clip_eps"] = 0.3
  assert "algorithm.clip_eps" in config_lib.changed_fields(saved, current)
  assert config_lib.resumable("log.progress_every") and not config_lib.resumable("rl.group_size")


def test_resume_with_more_steps_records_the_change(finished, tmp_path):
  import shutil

  workdir = tmp_path / "w"
  shutil.copytree(finished, workdir)
  _quiet_run(make_small_config(**{"log.tensorboard": "false", "train.steps": 7}), workdir)
  history = read_jsonl(os.path.join(workdir, "config_history.jsonl"))
  assert history[-1]["resumed_at_step"] == 6 and history[-1]["changed"] == {"train.steps": [6, 7]}


# --- unreadable and unwritable checkpoints --------------------------------------------------------


def _truncate_largest(step_dir):
  files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs]
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(100)


def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(finished, tmp_path):
  import shutil

  workdir = tmp_path / "w"
  shutil.copytree(finished, workdir)
  _truncate_largest(workdir / "checkpoints" / "6")
  rows = describe(str(workdir), log=lambda m: None)
  assert [(r["step"], r["state"]) for r in rows] == [
    (2, "complete"),
    (4, "complete"),
    (6, "corrupt"),
  ]
  logged = []
  loop.run(
    make_small_config(**{"log.tensorboard": "false"}),
    str(workdir),
    log=logged.append,
    stream=io.StringIO(),
  )
  warning = [m for m in logged if m.startswith("warning: checkpoint step 6 cannot be read")]
  assert len(warning) == 1 and "\n" not in warning[0]
  assert "resumed from checkpoint step 4 in" in " ".join(logged)
  assert len(os.listdir(workdir / "corrupt")) == 1
  assert _rows(workdir) == _rows(finished)  # steps 5-6 redone exactly
  _same_arrays(
    _arrays(str(workdir / "checkpoints" / "6" / "state")),
    _arrays(str(finished / "checkpoints" / "6" / "state")),
  )


def test_describe_names_an_interrupted_save_in_progress(tmp_path):
  os.makedirs(tmp_path / "checkpoints" / "8.orbax-checkpoint-tmp-123" / "state")
  rows = describe(str(tmp_path), log=lambda m: None)
  assert rows[0]["step"] == 8 and rows[0]["state"] == "in progress"


def test_storage_error_during_save_is_one_line_and_keeps_the_previous(tmp_path, monkeypatch):
  ckpt = Checkpointer(str(tmp_path), keep=3, async_save=True)
  state = {"w": jnp.arange(4.0)}
  ckpt.save(1, state, jax.random.key(0), dict(step=1))
  ckpt.wait()

  def full_disk(step, args=None):  # as Orbax fails: a partial directory, then the error
    os.makedirs(os.path.join(ckpt.directory, f"{step}.orbax-checkpoint-tmp-99", "state"))
    raise ValueError(
      "RESOURCE_EXHAUSTED: Error writing ...: Failed to write 1676249 bytes to file 4: No space "
      "left on device [os_error_code='28']"
    )

  monkeypatch.setattr(ckpt.manager, "save", full_disk)
  with pytest.raises(CheckpointStorageError) as e:
    ckpt.save(2, state, jax.random.key(0), dict(step=2))
  assert "\n" not in str(e.value) and "No space left on device" in str(e.value)
  assert "step 2" in str(e.value) and "last complete one (step 1) is intact" in str(e.value)
  assert sorted(os.listdir(ckpt.directory)) == ["1"]  # the partial save removed

  def no_permission(step, args=None):
    raise OSError(errno.EACCES, "Permission denied", ckpt.directory)

  monkeypatch.setattr(ckpt.manager, "save", no_permission)
  with pytest.raises(CheckpointStorageError, match="Permission denied"):
    ckpt.save(3, state, jax.random.key(0), dict(step=3))


def _can_mount_tmpfs(path):
  os.makedirs(path, exist_ok=True)
  if os.geteuid() != 0:
    return False
  return os.system(f"mount -t tmpfs -o size=700k tmpfs {path} 2>/dev/null") == 0


def test_full_disk_stops_the_run_in_one_line(tmp_path, capsys):
  """A real full filesystem (a 700 KB tmpfs, where this test may mount one: room for the
  reference and one checkpoint): the run stops with
  one error line and exit 2, and the checkpoint before the failed one is complete."""
  mount = str(tmp_path / "small")
  if not _can_mount_tmpfs(mount):
    pytest.skip("needs root to mount a small tmpfs (the simulated-ENOSPC test covers the logic)")
  try:
    workdir = os.path.join(mount, "run")
    over = _small_overrides(**{"train.steps": 12, "checkpoint.every": 1, "eval.every": 0})
    assert cli.main(_argv("train", workdir, over)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0], err
    names = os.listdir(os.path.join(workdir, "checkpoints"))
    assert names and all(n.isdigit() for n in names)  # no partial directory left
    rows = describe(workdir, log=lambda m: None)
    assert rows and all(r["state"] == "complete" for r in rows)
  finally:
    os.system(f"umount -l {mount}")  # lazy: Orbax's threads may still hold a file open


# --- inputs that used to escape as tracebacks -----------------------------------------------------


def _write(tmp_path, name, text):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


@pytest.mark.parametrize(
  "argv, words",
  [
    (["config", "--config={syntax}"], "line 1: syntax error"),
    (["config", "--config={raises}"], "line 3: KeyError"),
    (["config", "--config={returns_int}"], "must return an ml_collections.ConfigDict"),
    (["config", "--config.model.preset=huge"], "is unknown: 'huge'"),
    (["config", "--config.model.num_heads=3"], "num_heads=3 must be a multiple"),
    (["config", "--config.sampling.temperature=inf"], "'sampling.temperature' must be a finite"),
    (["config", "--config.train.learning_rate=nan"], "'train.learning_rate' must be a finite"),
    (["config", "--config.eval.num_prompts=100000000"], "eval.num_prompts' must be in [1, 100000]"),
    (["train", "--workdir={a_file}"], "is a file, not a directory"),
    (["eval", "--workdir={a_file}"], "is a file, not a directory"),
  ],
)
def test_bad_inputs_get_one_line(tmp_path, capsys, argv, words):
  paths = dict(
    syntax=_write(tmp_path, "syntax.py", "def get_config(:\n  pass\n"),
    raises=_write(tmp_path, "raises.py", "def get_config():\n  x = 1\n  raise KeyError('boom')\n"),
    returns_int=_write(tmp_path, "int.py", "def get_config():\n  return 3\n"),
    a_file=_write(tmp_path, "a_file", ""),
  )
  argv = [a.format(**paths) for a in argv]
  assert cli.main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(f"rl-jax {argv[0]}: error: ") and words in err[0], err


def test_eval_step_must_be_an_integer():
  with pytest.raises(SystemExit, match="--step must be a checkpoint step"):
    cli.parse_args(["eval", "--workdir=x", "--step=abc"])


def test_get_config_may_return_a_plain_dict(tmp_path):
  from rl_jax import config as config_lib

  path = _write(
    tmp_path,
    "plain.py",
    "from rl_jax.config import default_configdict\n"
    "def get_config():\n  return default_configdict().to_dict()\n",
  )
  assert config_lib.from_configdict(config_lib.load_config_file(path)).train.steps == 100


# --- task and reward outputs ---------------------------------------------------------------------


EXAMPLES = [Example("1+1=", "2"), Example("2+2=", "4")]


@pytest.mark.parametrize(
  "out, words",
  [
    (np.array([1.0]), "one value per completion, shape (2,); got (1,)"),
    (np.array([1.0, np.nan]), "1 non-finite value(s) of 2 (first at completion 1: nan)"),
    (["a", "b"], "must return real numbers"),
    (None, "returned None"),
    ({"correct": np.array([True, False])}, "without a 'reward' entry"),
    ({"reward": np.ones(2), "extra": np.ones(3)}, "'extra' must have 2 rows"),
  ],
)
def test_reward_outputs_are_checked(out, words):
  r = rewards.Rewards([rewards.Term("bad", lambda e, c: out, 1.0)])
  with pytest.raises(rewards.RewardError) as e:
    r(EXAMPLES, ["2", "5"])
  assert "reward 'bad'" in str(e.value) and words in str(e.value)


def test_reward_time_limit():
  slow = lambda e, c: time.sleep(5) or np.ones(len(c))
  r = rewards.Rewards([rewards.Term("slow", slow, 1.0)], timeout_s=0.2)
  t0 = time.monotonic()
  with pytest.raises(rewards.RewardError, match=r"reward 'slow' took longer than .*=0.2 s"):
    r(EXAMPLES, ["2", "5"])
  assert time.monotonic() - t0 < 2
  fine = rewards.Rewards([rewards.Term("ok", lambda e, c: np.ones(len(c)), 1.0)], timeout_s=1)
  np.testing.assert_array_equal(fine(EXAMPLES, ["2", "5"])[0], [1.0, 1.0])


def test_nan_reward_stops_the_run_naming_the_reward(tmp_path):
  nan_reward = lambda examples, completions: np.full(len(completions), np.nan)
  config = make_small_config(**{"sft.steps": 0, "log.tensorboard": "false"})
  with pytest.raises(rewards.RewardError, match="reward 'judge' returned 16 non-finite"):
    loop.run(
      config,
      str(tmp_path),
      log=lambda m: None,
      stream=io.StringIO(),
      rewards={"task": 1.0, "judge": (nan_reward, 0.5)},
    )


def test_unreadable_checkpoints_everywhere_is_one_error(tmp_path):
  ckpt = Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(1, {"w": jnp.ones(3)}, jax.random.key(0), dict(step=1))
  _truncate_largest(os.path.join(ckpt.directory, "1"))
  ckpt = Checkpointer(str(tmp_path))
  with pytest.raises(CheckpointError, match="no readable checkpoint") as e:
    ckpt.restore_newest({"w": jnp.zeros(3)}, jax.random.key(0), log=lambda m: None)
  assert "run the same command again" in str(e.value)
