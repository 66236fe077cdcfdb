"""benchmarks/side_by_side.py: medians over processes, the ratio table and the target verdicts,
on hand-made results (no benchmark is run here)."""

import importlib.util
import os

import pytest
from tests_support import ROOT

spec = importlib.util.spec_from_file_location(
  "side_by_side", os.path.join(ROOT, "benchmarks", "side_by_side.py")
)
sbs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sbs)


def _result(w1=None, w2=None, w3=None, w1async=None, w1floor=None):
  out = {}
  if w1 is not None:
    out["w1"] = dict(
      seconds=dict(median=w1),
      generation_s=w1 / 3,
      peak_rss_gib=1.0,
      reference_s=w1 / 6,
      update_s=w1 / 2,
    )
  if w1floor is not None:
    out["w1floor"] = dict(step_s=w1floor)
  if w1async is not None:
    out["w1async"] = dict(seconds=dict(median=w1async))
  if w2 is not None:
    out["w2"] = dict(tokens_per_s=w2)
  if w3 is not None:
    out["w3"] = dict(tokens_per_s=1000.0, fraction_of_matmul_rate=w3)
    out["matmul_gflops"] = 200.0
  return out


ROUNDS = [
  dict(
    rl_jax=_result(w1=1.0, w2=6000.0, w3=0.55, w1async=0.8, w1floor=0.7),
    trl=_result(w1=3.0, w2=3000.0),
    tunix=_result(w1=4.0, w2=2000.0),
  ),
  dict(
    rl_jax=_result(w1=1.6, w2=5000.0, w3=0.45, w1async=0.9, w1floor=0.9),
    trl=_result(w1=2.0, w2=2500.0),
    tunix=_result(w1=5.0, w2=2600.0),
  ),
  dict(
    rl_jax=_result(w1=1.2, w2=7000.0, w3=0.50, w1async=1.0, w1floor=1.1),
    trl=_result(w1=2.4, w2=2800.0),
    tunix=None,
  ),  # a failed peer process is left out
]


def test_summary_is_the_median_of_per_process_medians_with_the_spread():
  s = sbs.summarise(ROUNDS)
  assert s["rl_jax"]["w1_s"] == (1.2, 1.0, 1.6)
  assert s["trl"]["w1_s"] == (2.4, 2.0, 3.0)
  assert s["tunix"]["w1_s"] == (4.5, 4.0, 5.0)  # two processes: the mean of the two
  assert s["rl_jax"]["w2_tok_s"] == (6000.0, 5000.0, 7000.0)
  assert s["rl_jax"]["w3_frac"] == (0.50, 0.45, 0.55)
  assert s["trl"]["w3_frac"] is None


def test_table_and_verdicts_use_the_ratios_of_the_medians():
  s = sbs.summarise(ROUNDS)
  table = sbs.table(s)
  assert "0.50x trl, 0.27x tunix" in table  # W1: 1.2 / 2.4 and 1.2 / 4.5
  assert "2.14x trl, 2.61x tunix" in table  # W2: 6000 / 2800 and 6000 / 2300
  verdicts = "\n".join(sbs.verdict(s))
  assert "W1: 0.50x the faster peer's step time (target <= 0.50x): met" in verdicts
  assert "one-step-off mode, a different algorithm: 0.38x" in verdicts  # 0.9 / 2.4
  # The floor: median 0.9 s of W1's dense matmuls alone, 0.9 / 2.4 of the faster peer.
  assert "W1's dense matmuls alone take 0.90 s here = 0.38x the faster peer's step" in verdicts
  assert (
    "| W1's dense matmuls alone (the float32 floor, `w1floor`), s | 0.90 (0.70-1.10) |" in table
  )
  assert (
    "| W1 reference pass + advantages; update, s | 0.20 (0.17-0.27); 0.60 (0.50-0.80) |" in table
  )
  assert "W2: 2.14x TRL 1.16 / HF generate (target >= 2.0x): met" in verdicts
  assert "W2: 2.61x Tunix 0.1.7 (target >= 1.5x): met" in verdicts
  assert "W3: 50.0% of the matmul rate (target >= 50%): met" in verdicts
  slower = sbs.summarise(
    [dict(rl_jax=_result(w1=2.0, w2=4000.0, w3=0.4), trl=_result(w1=3.0, w2=3000.0))]
  )
  verdicts = "\n".join(sbs.verdict(slower))
  assert "W1: 0.67x" in verdicts and "NOT met" in verdicts
  assert "W2: 1.33x TRL 1.16 / HF generate (target >= 2.0x): NOT met" in verdicts
  assert "W3: 40.0% of the matmul rate (target >= 50%): NOT met" in verdicts


def test_peer_environment_preloads_tcmalloc_only_when_asked(monkeypatch):
  assert sbs.peer_environment("stock") is None  # the peers as they ship
  monkeypatch.setattr(sbs.allocator, "find_tcmalloc", lambda: "libtcmalloc_minimal.so.4")
  monkeypatch.setenv("LD_PRELOAD", "libother.so")
  env = sbs.peer_environment("tcmalloc")
  assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4 libother.so"
  monkeypatch.setattr(sbs.allocator, "find_tcmalloc", lambda: None)
  with pytest.raises(SystemExit, match="no tcmalloc"):
    sbs.peer_environment("tcmalloc")


# --- rl_jax/bench.py ------------------------------------------------------------------------


def test_train_flops_hand_value_for_the_benchmark_model():
  from rl_jax import bench
  from rl_jax.models import transformer

  cfg = transformer.preset("bench", 512)
  layer = 4 * 256 * 4 * 64 + 3 * 256 * 1024  # q, k, v, o (4 heads of 64) and the SwiGLU MLP
  trunk = 6 * 4 * layer * 64 * 96  # 64 sequences of 32 + 64 tokens
  head = 6 * 512 * 256 * 64 * 64  # the LM head on the completion tokens only
  attention = 3 * 4 * 64 * 96 * 96 * 256 * 4
  assert trunk + head + attention == 165_087_805_440
  assert bench.train_flops(cfg, 64, 32, 64) == 165_087_805_440


def test_half_billion_preset_has_qwen2_5_0_5b_shape():
  from rl_jax.models import transformer

  cfg = transformer.preset("0.5b", 151_936)
  assert cfg.num_params() == 494_032_768  # Qwen2.5-0.5B's parameter count
  assert cfg.tie_embeddings and cfg.qkv_bias and cfg.num_kv_heads == 2


def test_w3_runs_in_bfloat16_and_reports_the_fraction_of_the_bf16_rate():
  from rl_jax import bench

  w = bench.w3_train(repeats=1, rate=1e18, model="test", dtype="bfloat16")
  assert w["fraction_of_matmul_rate"] == pytest.approx(
    w["achieved_gflops"] * 1e9 / (w["matmul_gflops"] * 1e9)
  )
  assert w["matmul_gflops"] == pytest.approx(1e9)  # the best rate seen is kept (here: given)
  assert w["step_gflop"] * 1e9 == pytest.approx(
    bench.train_flops(bench._model("test")[0], 64, bench.PROMPT, 64)
  )


def test_bench_refuses_w1_at_another_model():
  from rl_jax import bench

  with pytest.raises(SystemExit) as e:
    bench.main(["--workloads=w1", "--model=0.5b"])
  assert e.value.code == 2


def _real_vocabulary(w4=None, w5=None, rss=None):
  out = {}
  if w4 is not None:
    out["w4"] = dict(tokens_per_s=w4)
  if w5 is not None:
    out["w5"] = dict(seconds=dict(median=w5), generation_s=w5 / 4, peak_rss_gib=rss)
  return out


def test_w4_w5_rows_and_verdicts_against_trl():
  rounds = [
    dict(rl_jax=_real_vocabulary(200.0, 40.0, 3.5), trl=_real_vocabulary(60.0, 140.0, 6.0)),
    dict(rl_jax=_real_vocabulary(100.0, 80.0, 4.5), trl=_real_vocabulary(50.0, 120.0, 6.0)),
  ]
  s = sbs.summarise(rounds)
  assert s["rl_jax"]["w5_s"] == (60.0, 40.0, 80.0)
  assert s["trl"]["w4_tok_s"] == (55.0, 50.0, 60.0)
  table = sbs.table(s)
  # 150 / 55, 60 / 130 and 4.0 / 6.0 GiB
  assert (
    "| W4 sampling at a 151,936 vocabulary, top-p 0.95, tokens/s | 150.0 (100.0-200.0)" in table
  )
  assert "2.73x trl" in table and "0.46x trl" in table and "0.67x trl" in table
  assert "W1" not in table and "W2" not in table  # rows of workloads this run did not ask for
  verdicts = "\n".join(sbs.verdict(s))
  assert "W4: 2.73x HF generate (target >= 2.0x): met" in verdicts
  assert "W5: 0.46x TRL + PEFT's step time (target <= 0.5x): met" in verdicts
  assert "W5: 0.67x TRL + PEFT's peak memory (target <= 0.7x): met" in verdicts
  worse = sbs.summarise([dict(rl_jax=_real_vocabulary(100.0, 80.0, 5.0), trl=rounds[0]["trl"])])
  verdicts = "\n".join(sbs.verdict(worse))
  assert "W4: 1.67x HF generate (target >= 2.0x): NOT met" in verdicts
  assert "W5: 0.57x TRL + PEFT's step time (target <= 0.5x): NOT met" in verdicts
  assert "W5: 0.83x TRL + PEFT's peak memory (target <= 0.7x): NOT met" in verdicts


def test_a_round_runs_w5_alone_and_gives_each_framework_only_its_workloads(tmp_path, monkeypatch):
  """W5 in a process of its own (its peak RSS), the folder passed to W4 / W5 only, Tunix given
  none of them, and each framework's processes merged into one result."""
  venvs = tmp_path / "venvs"
  for peer in ("trl", "tunix"):
    (venvs / peer / "bin").mkdir(parents=True)
    (venvs / peer / "bin" / "python").write_text("")
  folder = tmp_path / "w45"
  folder.mkdir()
  (folder / "config.json").write_text("{}")  # ready: nothing is made
  monkeypatch.setattr(sbs, "VENVS", str(venvs))
  calls = []

  def fake_run(name, cmd, env=None):
    calls.append((name, cmd))
    if "--workloads" in cmd:  # the peers' flag
      workloads = cmd[cmd.index("--workloads") + 1]
    else:  # rl-jax bench's
      workloads = next(a for a in cmd if a.startswith("--workloads=")).split("=")[1]
    return {w: dict(ran_in=len(calls)) for w in workloads.split(",")}

  monkeypatch.setattr(sbs, "_run", fake_run)
  out = sbs.run_round(["trl", "tunix"], "w1,w4,w5", folder=str(folder))
  runs = [(name, cmd[-3:] if "--folder" in cmd else cmd[-1:]) for name, cmd in calls]
  assert runs == [
    ("rl_jax", ["--workloads=w1,w4", "--folder", str(folder)]),
    ("rl_jax", ["--workloads=w5", "--folder", str(folder)]),
    ("trl", ["w1,w4", "--folder", str(folder)]),
    ("trl", ["w5", "--folder", str(folder)]),
    ("tunix", ["w1"]),  # no folder: Tunix runs neither W4 nor W5
  ]
  assert out["rl_jax"] == dict(w1=dict(ran_in=1), w4=dict(ran_in=1), w5=dict(ran_in=2))
  assert out["tunix"] == dict(w1=dict(ran_in=5))
  calls.clear()
  sbs.run_round(["tunix"], "w4,w5", folder=str(folder))
  assert [name for name, _ in calls] == ["rl_jax", "rl_jax"]  # Tunix has neither
  with pytest.raises(SystemExit):
    sbs.main(["--workloads=w6"])
