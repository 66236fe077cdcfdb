"""Tests for rl_jax.metrics (host-side writers, plot, progress line)."""

import glob
import io
import json
import math
import os

import numpy as np
import pytest

from rl_jax.metrics import (
  MetricsWriter,
  Progress,
  format_duration,
  plot_rewards,
  read_jsonl,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------ MetricsWriter


def test_jsonl_round_trip_numpy_scalars(tmp_path):
  with MetricsWriter(str(tmp_path), tensorboard=False) as w:
    w.write(np.int64(1), {"reward_mean": np.float32(0.5), "num_tokens": np.int64(42)})
    w.write(2, {"reward_mean": 0.75, "flag": np.bool_(True), "x": np.array(3.25)})
  rows = read_jsonl(tmp_path / "metrics.jsonl")
  assert rows == [
    {"step": 1, "reward_mean": 0.5, "num_tokens": 42},
    {"step": 2, "reward_mean": 0.75, "flag": 1, "x": 3.25},
  ]
  assert type(rows[0]["num_tokens"]) is int
  assert type(rows[0]["reward_mean"]) is float
  # "step" is the first key on disk.
  first_line = (tmp_path / "metrics.jsonl").read_text().splitlines()[0]
  assert first_line.startswith('{"step": 1,')


def test_jax_scalars(tmp_path):
  jnp = pytest.importorskip("jax.numpy")
  with MetricsWriter(str(tmp_path), tensorboard=False) as w:
    w.write(jnp.asarray(3), {"loss": jnp.asarray(1.5, jnp.float32), "n": jnp.asarray(7)})
  assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 3, "loss": 1.5, "n": 7}]


def test_write_flushes_each_row(tmp_path):
  w = MetricsWriter(str(tmp_path), tensorboard=False)
  w.write(1, {"a": 1.0})
  # Readable before close: the file is flushed after every write.
  assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1, "a": 1.0}]
  w.close()
  w.close()  # idempotent


def test_non_finite_written_as_null(tmp_path):
  with MetricsWriter(str(tmp_path), tensorboard=False) as w:
    w.write(1, {"a": float("nan"), "b": np.float32(np.inf), "c": -math.inf, "d": 2.0})
  text = (tmp_path / "metrics.jsonl").read_text()
  assert "NaN" not in text and "Infinity" not in text
  json.loads(text)  # strict JSON
  assert read_jsonl(tmp_path / "metrics.jsonl") == [
    {"step": 1, "a": None, "b": None, "c": None, "d": 2.0}
  ]


def test_write_eval_separate_file(tmp_path):
  with MetricsWriter(str(tmp_path), tensorboard=False) as w:
    w.write(1, {"reward_mean": 0.1})
    w.write_eval(1, {"accuracy": np.float32(0.25)})
  assert read_jsonl(tmp_path / "eval.jsonl") == [{"step": 1, "accuracy": 0.25}]
  assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1, "reward_mean": 0.1}]


def test_bad_values_rejected(tmp_path):
  with MetricsWriter(str(tmp_path), tensorboard=False) as w:
    with pytest.raises(TypeError, match="'text'"):
      w.write(1, {"text": "hello"})
    with pytest.raises(TypeError, match="'vec'"):
      w.write(1, {"vec": np.zeros(3)})
    with pytest.raises(ValueError, match="reserved"):
      w.write(1, {"step": 1})


def test_truncate_from_drops_later_rows(tmp_path):
  # A run logged steps 1..5 (eval at 2 and 4) then crashed; last checkpoint was step 3.
  with MetricsWriter(str(tmp_path), tensorboard=False) as w:
    for s in range(1, 6):
      w.write(s, {"reward_mean": s / 10})
      if s % 2 == 0:
        w.write_eval(s, {"accuracy": s / 10})
  # Resume at step 4.
  with MetricsWriter(str(tmp_path), tensorboard=False) as w:
    w.truncate_from(4)
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    assert [r["step"] for r in read_jsonl(tmp_path / "eval.jsonl")] == [2]
    w.write(4, {"reward_mean": 0.44})
    w.write_eval(4, {"accuracy": 0.44})
  rows = read_jsonl(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert rows[-1]["reward_mean"] == 0.44 and rows[0]["reward_mean"] == 0.1
  assert read_jsonl(tmp_path / "eval.jsonl") == [
    {"step": 2, "accuracy": 0.2},
    {"step": 4, "accuracy": 0.44},
  ]


def test_truncate_from_after_writes_same_writer_and_fresh_dir(tmp_path):
  fresh = tmp_path / "fresh"
  with MetricsWriter(str(fresh), tensorboard=False) as w:
    w.truncate_from(1)  # nothing there yet: no-op, no files created
    assert not (fresh / "metrics.jsonl").exists()
    for s in range(1, 4):
      w.write(s, {"a": float(s)})
    w.truncate_from(2)
    w.write(2, {"a": 20.0})
  assert read_jsonl(fresh / "metrics.jsonl") == [{"step": 1, "a": 1.0}, {"step": 2, "a": 20.0}]


def test_truncate_from_drops_partial_last_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "a": 1.0}\n{"step": 2, "a"')  # crash mid-write
  assert read_jsonl(path) == [{"step": 1, "a": 1.0}]
  with MetricsWriter(str(tmp_path), tensorboard=False) as w:
    w.truncate_from(2)
    w.write(2, {"a": 2.0})
  assert read_jsonl(path) == [{"step": 1, "a": 1.0}, {"step": 2, "a": 2.0}]


def test_read_jsonl_rejects_corrupt_middle_line(tmp_path):
  path = tmp_path / "x.jsonl"
  path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
  with pytest.raises(ValueError, match=":2:"):
    read_jsonl(path)


def test_tensorboard_event_file(tmp_path):
  with MetricsWriter(str(tmp_path), config={"lr": 1e-3}) as w:
    w.write(1, {"reward_mean": np.float32(0.5), "kl": float("nan")})
    w.write_eval(1, {"accuracy": 0.25})
    w.truncate_from(1)  # reopens the event writer with a purge marker
    w.write(1, {"reward_mean": 0.6})
  events = glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents*"))
  assert events
  assert sum(os.path.getsize(e) for e in events) > 100


def test_wandb_missing_raises_clear_import_error(tmp_path):
  try:
    import wandb  # noqa: F401
  except ImportError:
    pass
  else:
    pytest.skip("wandb is installed")
  with pytest.raises(ImportError, match="pip install wandb"):
    MetricsWriter(str(tmp_path), tensorboard=False, wandb_project="proj")


# ------------------------------------------------------------------------------ plot_rewards


def _assert_png(path):
  assert os.path.exists(path)
  with open(path, "rb") as f:
    data = f.read()
  assert data[:8] == PNG_MAGIC
  assert len(data) > 10_000


def test_plot_rewards_with_eval(tmp_path):
  with MetricsWriter(str(tmp_path), tensorboard=False) as w:
    for s in range(1, 31):
      w.write(s, {"reward_mean": s / 30, "accuracy": s / 40, "kl": 0.001})
      if s % 10 == 0:
        w.write_eval(s, {"accuracy": s / 35})
    w.write(31, {"reward_mean": float("nan")})  # null in file -> gap, not a crash
  path = plot_rewards(str(tmp_path))
  assert path == str(tmp_path / "reward.png")
  _assert_png(path)


def test_plot_rewards_without_eval(tmp_path):
  with MetricsWriter(str(tmp_path), tensorboard=False) as w:
    for s in range(1, 6):
      w.write(s, {"reward_mean": s / 5})
  _assert_png(plot_rewards(str(tmp_path)))  # no eval.jsonl
  (tmp_path / "eval.jsonl").write_text("")  # empty eval.jsonl
  out = tmp_path / "plots" / "r.png"
  assert plot_rewards(str(tmp_path), out=str(out)) == str(out)
  _assert_png(out)


def test_plot_rewards_no_files(tmp_path):
  with pytest.raises(FileNotFoundError):
    plot_rewards(str(tmp_path))


# ------------------------------------------------------------------------------ Progress


class FakeClock:
  def __init__(self):
    self.t = 100.0

  def __call__(self):
    return self.t


class TTYStream(io.StringIO):
  def isatty(self):
    return True


def test_progress_non_tty_lines():
  stream, clock = io.StringIO(), FakeClock()
  p = Progress(200, stream=stream, clock=clock)
  p.update(1, {"reward_mean": 0.5312, "accuracy": 0.5, "kl": 0.0012, "other": 9.0})
  clock.t += 2.0
  p.update(2, {"reward_mean": 0.6, "loss": 0.25})
  p.close()
  lines = stream.getvalue().splitlines()
  assert "\r" not in stream.getvalue()
  assert len(lines) == 2
  first, second = lines
  assert first == "step   1/200 | reward 0.531 | acc 0.500 | kl 0.0012"  # no rate yet
  assert "step   2/200" in second and "reward 0.600" in second and "loss 0.25" in second
  assert "acc" not in second and "kl" not in second
  assert "2.00 s/step" in second
  assert "eta 6m36s" in second  # 198 steps * 2 s


def test_progress_every_and_last_step():
  stream, clock = io.StringIO(), FakeClock()
  p = Progress(10, stream=stream, every=4, clock=clock)
  for s in range(1, 11):
    clock.t += 1.0
    p.update(s, {"reward_mean": s / 10})
  lines = stream.getvalue().splitlines()
  assert [line.split("|")[0].strip() for line in lines] == [
    "step  4/10",
    "step  8/10",
    "step 10/10",
  ]
  assert "eta 0.0s" in lines[-1]


def test_progress_tty_rewrites_line_and_log():
  stream, clock = TTYStream(), FakeClock()
  with Progress(100, stream=stream, clock=clock) as p:
    p.update(1, {"reward_mean": 0.1})
    clock.t += 1.5
    p.update(2, {"reward_mean": 0.2})
    p.log("eval accuracy 0.5")
  out = stream.getvalue()
  assert out.startswith("\rstep   1/100 | reward 0.100")
  assert "\rstep   2/100 | reward 0.200 | 1.50 s/step | eta 2m27s" in out
  assert "\neval accuracy 0.5\n" in out or "\reval accuracy 0.5\n" in out
  assert out.endswith("\n")
  # After carriage-return handling, the message sits on its own line, the live line is last.
  screen = [line.split("\r")[-1].rstrip() for line in out.split("\n")]
  assert screen[-2].startswith("step   2/100") and screen[-1] == ""
  assert "eval accuracy 0.5" in screen


# ------------------------------------------------------------------------------ format_duration


@pytest.mark.parametrize(
  "seconds, expected",
  [
    (0, "0.0s"),
    (12.34, "12.3s"),
    (59.94, "59.9s"),
    (59.96, "1m00s"),
    (348, "5m48s"),
    (3599.4, "59m59s"),
    (3720, "1h02m"),
    (3 * 3600 + 59 * 60 + 59, "3h59m"),
    (float("inf"), "?"),
    (float("nan"), "?"),
  ],
)
def test_format_duration(seconds, expected):
  assert format_duration(seconds) == expected
