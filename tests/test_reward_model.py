"""The quantile reward model of UARM (rl_jax.reward_model, rl_jax.objectives.quantile): the
pinball loss, CQR's coverage guarantee, a tiny model that learns where its labels are noisy,
its checkpoint, the reward that serves it, and the `uarm` preset running on it end to end."""

import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests_support import make_small_config

from rl_jax import cli, loop, rewards
from rl_jax import reward_model as rm
from rl_jax.metrics import read_jsonl
from rl_jax.models import transformer
from rl_jax.objectives import quantile
from rl_jax.tasks import arithmetic
from rl_jax.tasks.base import Example

ALPHA = 0.1


def test_pinball_loss_hand_values():
  pred = jnp.array([[0.0, 1.0, 2.0], [3.0, 3.0, 3.0]])
  taus = jnp.array([0.1, 0.5, 0.9])
  got = quantile.pinball_loss(pred, jnp.array([1.5, 1.0]), taus)
  # u = y - q: row 0 (1.5, 0.5, -0.5) -> (0.1*1.5, 0.5*0.5, 0.1*0.5); row 1 u = -2 everywhere
  # -> (1 - tau) * 2.
  np.testing.assert_allclose(got, [[0.15, 0.25, 0.05], [1.8, 1.0, 0.2]], rtol=1e-6)
  with pytest.raises(ValueError, match="pred_NxQ"):
    quantile.pinball_loss(pred, jnp.array([1.0]), taus)


@pytest.mark.parametrize("tau", [0.05, 0.3, 0.5, 0.95])
def test_pinball_minimiser_is_the_sample_quantile(tau):
  y = np.random.default_rng(1).standard_normal(101).astype(np.float32)
  # The mean pinball loss is piecewise linear and convex in q, minimised at an order statistic:
  # the ceil(n * tau)-th smallest sample (n * tau is not an integer here, so it is unique).
  candidates = np.sort(y)
  risk = jax.vmap(
    lambda q: quantile.pinball_loss(jnp.full((101, 1), q), y, jnp.array([tau])).mean()
  )
  best = candidates[int(np.argmin(risk(candidates)))]
  assert best == np.sort(y)[int(np.ceil(101 * tau)) - 1]
  grad = jax.grad(
    lambda q: quantile.pinball_loss(jnp.full((101, 1), q), y, jnp.array([tau])).mean()
  )
  assert grad(best - 1e-3) < 0 < grad(best + 1e-3)  # a minimum, not just a grid point


def test_cqr_rank_and_too_few_records():
  assert quantile.cqr_rank(100, 0.1) == 91
  assert quantile.cqr_rank(9, 0.1) == 9  # (9 + 1) * 0.9 = 9 exactly, not 10
  with pytest.raises(ValueError, match="at least 9 calibration records"):
    quantile.cqr_rank(8, 0.1)


def test_cqr_coverage_on_heteroscedastic_data():
  """Calibrated intervals of a deliberately wrong quantile model (constant width, while the
  noise grows with x) cover at least 1 - alpha of fresh points on average over 300 calibration
  draws, and at most 1 - alpha + 1/(n + 1): the finite-sample guarantee of CQR."""
  seeds, n_cal, n_test = 300, 199, 1000
  rng = np.random.default_rng(0)

  def draw(n):
    x = rng.uniform(0, 1, (seeds, n))
    y = np.sin(4 * x) + (0.05 + x**2) * rng.standard_normal((seeds, n))
    return np.sin(4 * x) - 0.2, np.sin(4 * x) + 0.2, y  # q_lo, q_hi, y

  lo_c, hi_c, y_c = draw(n_cal)
  q_S = jax.vmap(lambda lo, hi, y: quantile.cqr_offset(lo, hi, y, ALPHA))(lo_c, hi_c, y_c)
  lo_t, hi_t, y_t = draw(n_test)
  covered = (lo_t - q_S[:, None] <= y_t) & (y_t <= hi_t + q_S[:, None])
  raw = ((lo_t <= y_t) & (y_t <= hi_t)).mean()
  assert raw < 0.6  # the uncalibrated intervals are far too narrow
  # Standard error of the mean over seeds: about 0.0015.
  assert 1 - ALPHA - 0.005 <= covered.mean() <= 1 - ALPHA + 1 / (n_cal + 1) + 0.005


def _noisy_records(n, seed):
  """Prompts "d+j=" for digits d, j (j a distractor), completions a digit; the score is 1 for
  the prompt's d and 0 otherwise, plus noise of sd 0.4 where d >= 5 and 0.02 where d < 5."""
  rng = np.random.default_rng(seed)
  d, j = rng.integers(0, 10, n), rng.integers(0, 10, n)
  c = np.where(rng.random(n) < 0.5, d, rng.integers(0, 10, n))
  y = (c == d) + np.where(d >= 5, 0.4, 0.02) * rng.standard_normal(n)
  return [rm.Record(f"{a}+{k}=", str(b), float(s)) for a, k, b, s in zip(d, j, c, y)]


def test_calibration_split_keeps_prompts_apart():
  records = _noisy_records(1000, 3)
  train, cal = rm.split(records, 0.25, seed=0)
  assert len(train) + len(cal) == 1000 and 240 <= len(cal) <= 280  # whole prompts of ~10 rows
  assert not {r.prompt for r in train} & {r.prompt for r in cal}


SPEC = dict(kind="char", alphabet=arithmetic.ALPHABET)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A "test"-preset reward model trained 300 steps on `_noisy_records`, saved to a folder."""
  cfg = transformer.preset("test", 3 + len(arithmetic.ALPHABET))
  settings = rm.TrainSettings(steps=300, batch_size=64, learning_rate=3e-3, log_every=300)
  model = rm.train(
    _noisy_records(1600, 0), model_cfg=cfg, tokenizer_spec=SPEC, settings=settings, log=print
  )
  path = str(tmp_path_factory.mktemp("rm"))
  model.save(path)
  return model, path


def test_trained_model_is_calibrated_and_wider_where_noise_is(trained):
  model, _ = trained
  test = _noisy_records(2000, 1)
  stats = rm.interval_stats(model, test)
  assert stats["coverage"] >= 0.85, stats  # 1 - alpha = 0.9, up to sampling error
  s = rm.score_records(model, test)
  noisy = np.array([int(r.prompt[0]) >= 5 for r in test])
  wide, narrow = s["width"][noisy].mean(), s["width"][~noisy].mean()
  assert wide > 1.5 * narrow, (wide, narrow)  # sd 0.4 vs 0.02: about 1.3 vs 0.1 when fitted
  right = np.array([r.prompt[0] == r.completion for r in test])
  clean = ~noisy
  # The median separates right from wrong completions where the labels are clean.
  assert s["median"][clean & right].mean() - s["median"][clean & ~right].mean() > 0.5
  assert np.all(s["lo"] <= s["median"] + 1e-6) and np.all(s["median"] <= s["hi"] + 1e-6)


def test_checkpoint_round_trips(trained):
  model, path = trained
  loaded = rm.RewardModel.load(path)
  prompts, completions = ["3+1=", "8+0=", "8+0="], ["3", "8", "1"]
  for k, v in model.score(prompts, completions).items():
    np.testing.assert_array_equal(loaded.score(prompts, completions)[k], v, err_msg=k)
  assert loaded.offset == model.offset and loaded.alpha == ALPHA
  with open(os.path.join(path, rm.CONFIG_FILE)) as f:
    meta = json.load(f)
  assert meta["tokenizer"] == SPEC and 380 <= meta["report"]["calibration"]["n"] <= 440
  assert not [n for n in os.listdir(path) if n.endswith((".pkl", ".pickle"))]


def test_reward_class_shapes_and_no_recompile(trained):
  _, path = trained
  reward = rewards.REWARDS["reward_model"](path=path)
  batch = lambda n: (
    [Example(f"{i % 10}+1=", "") for i in range(n)],
    [str(i % 7) for i in range(n)],
  )
  out = reward(*batch(5))
  assert set(out) == {"reward", "rm_interval_width"}
  for v in out.values():
    assert v.shape == (5,) and v.dtype == np.float32 and np.all(np.isfinite(v))
  assert np.all(out["rm_interval_width"] >= 0)
  traces = reward.model.traces
  reward(*batch(7))  # the same row bucket (8) and length buckets: no new compilation
  reward(*batch(8))
  assert reward.model.traces == traces == 1
  reward(*batch(9))  # the next bucket (16) compiles once
  assert reward.model.traces == 2


def test_bad_records_fail_with_one_line(tmp_path, capsys):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"prompt": "1=", "completion": "1", "score": 1}\n{"prompt": "2=", "score": 0}\n')
  assert cli.main(["train-rm", f"--data={bad}", f"--out={tmp_path / 'rm'}"]) == 2
  assert "row 1 lacks field(s) ['completion']" in capsys.readouterr().err
  with pytest.raises(ValueError, match="finite"):
    rm.check_records([{"prompt": "1=", "completion": "1", "score": float("nan")}])
  few = _noisy_records(20, 0)  # 5 calibration records < 9 needed at alpha 0.1
  with pytest.raises(ValueError, match="needs at least 9 calibration records"):
    rm.train(few, model_cfg=transformer.preset("test", 17), tokenizer_spec=SPEC)


@pytest.mark.slow
def test_train_rm_cli_then_uarm_run_with_the_rm_as_only_reward(tmp_path, capsys):
  data = tmp_path / "records.jsonl"
  rm.save_records(str(data), _noisy_records(120, 2))
  out = tmp_path / "rm"
  argv = ["train-rm", f"--data={data}", f"--out={out}", "--rm.steps=10", "--rm.log_every=5"]
  argv += [f"--config.{k}={v}" for k, v in {"model.preset": "test", "task.max_digits": 2}.items()]
  assert cli.main(argv) == 0
  printed = capsys.readouterr().out
  assert "rm step    10/10" in printed and "calibration coverage" in printed
  cfg = make_small_config(
    **{
      "algorithm.name": "uarm",
      "rewards.task.weight": 0.0,
      "rewards.rm.name": "reward_model",
      "rewards.rm.path": str(out),
      "train.steps": 2,
      "sft.steps": 10,
      "eval.every": 0,
      "eval.num_prompts": 8,
    }
  )
  loop.run(cfg, str(tmp_path / "run"), log=lambda m: None, stream=io.StringIO())
  rows = read_jsonl(os.path.join(tmp_path, "run", "metrics.jsonl"))
  assert [r["step"] for r in rows] == [1, 2]
  assert all(np.isfinite(r["loss"]) and r["skipped_updates"] == 0 for r in rows)
