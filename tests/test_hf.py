"""Hugging Face checkpoints: logit parity with the transformers PyTorch implementation on tiny
random-weight checkpoints the test creates, for every supported family; loading errors; the
`hf` model family through the config. Needs the test extra's torch (`pip install
torch==2.13.0`, the CPU build); skipped without it."""

import json
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need torch: pip install torch==2.13.0")
transformers = pytest.importorskip("transformers")

from rl_jax.models import hf  # noqa: E402

COMMON = dict(
  vocab_size=97,
  hidden_size=32,
  intermediate_size=64,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  max_position_embeddings=64,
  rms_norm_eps=1e-6,
)
FAMILIES = {
  "llama": lambda: transformers.LlamaConfig(**COMMON, rope_theta=10_000.0),
  "qwen2": lambda: transformers.Qwen2Config(**COMMON, rope_theta=1e6, tie_word_embeddings=True),
  "qwen3": lambda: transformers.Qwen3Config(**COMMON, head_dim=16, rope_theta=1e6),
  # Llama 3.1's rope scaling, with an original context of 200 so that the 4 frequencies of
  # a head of 8 fall in all three of its bands (kept, interpolated, divided by the factor).
  "llama3": lambda: transformers.LlamaConfig(
    **COMMON,
    rope_parameters=dict(
      rope_type="llama3",
      rope_theta=500_000.0,
      factor=8.0,
      low_freq_factor=1.0,
      high_freq_factor=4.0,
      original_max_position_embeddings=16,
    ),
  ),
  # Gemma 2: layer 0 slides over 4 slots (the batch is 12 long), layer 1 is global; both
  # soft-caps set low enough to bend these logits.
  "gemma2": lambda: transformers.Gemma2Config(
    **COMMON,
    head_dim=16,
    sliding_window=4,
    query_pre_attn_scalar=24,
    attn_logit_softcapping=3.0,
    final_logit_softcapping=5.0,
  ),
  # Gemma 3 text: q/k norm, a local RoPE base on the sliding layer, linear scaling on the global.
  "gemma3": lambda: transformers.Gemma3TextConfig(
    **COMMON,
    head_dim=16,
    sliding_window=4,
    query_pre_attn_scalar=20,
    layer_types=["sliding_attention", "full_attention"],
    rope_parameters={
      "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
      "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
    },
  ),
}


def _save_tokenizer(folder):
  tokenizers = pytest.importorskip("tokenizers")
  words = ["<pad>", "<bos>", "<eos>", "<unk>"] + [f"w{i}" for i in range(90)]
  backend = tokenizers.Tokenizer(
    tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>")
  )
  backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tok = transformers.PreTrainedTokenizerFast(
    tokenizer_object=backend,
    pad_token="<pad>",
    bos_token="<bos>",
    eos_token="<eos>",
    unk_token="<unk>",
  )
  tok.save_pretrained(str(folder))


def _checkpoint(tmp_path, family, seed=0):
  """A random-weight checkpoint of `family` saved as a Hugging Face folder, and the model."""
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(FAMILIES[family]()).eval()
  with torch.no_grad():  # larger than the default init, so that the logits are not all ~0
    for p in model.parameters():
      p.normal_(0.0, 0.2)
  folder = tmp_path / family
  model.save_pretrained(str(folder), safe_serialization=True)
  _save_tokenizer(folder)
  return str(folder), model


def _batch(seed=1):
  """Left-padded token ids [4, 12] with 12, 9, 5 and 1 valid tokens."""
  rng = np.random.default_rng(seed)
  lengths = [12, 9, 5, 1]
  tokens = rng.integers(3, 97, (4, 12)).astype(np.int32)
  mask = np.arange(12)[None, :] >= 12 - np.array(lengths)[:, None]
  return np.where(mask, tokens, 0), mask


def _reference_logits(model, tokens, mask):
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  with torch.no_grad():
    out = model(
      input_ids=torch.tensor(tokens, dtype=torch.long),
      attention_mask=torch.tensor(mask, dtype=torch.long),
      position_ids=torch.tensor(positions, dtype=torch.long),
    )
  return out.logits.float().numpy()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logits_match_transformers(tmp_path, family):
  folder, model = _checkpoint(tmp_path, family)
  policy, params = hf.from_pretrained(folder)
  tokens, mask = _batch()
  ours = np.asarray(hf.logits(policy, params, tokens, mask))
  ref = _reference_logits(model, tokens, mask)
  assert ours.shape == ref.shape == (4, 12, 97)
  valid = mask  # padded positions' logits are not compared (they differ by convention)
  err = np.abs(ours[valid] - ref[valid]).max() / np.abs(ref[valid]).max()
  assert err < 1e-4, f"{family}: max relative error {err:.2e}"
  cfg = policy.model_cfg
  assert (cfg.qkv_bias, cfg.qk_norm, cfg.tie_embeddings) == {
    "llama": (False, False, False),
    "llama3": (False, False, False),
    "qwen2": (True, False, True),
    "qwen3": (False, True, False),
    "gemma2": (False, False, True),
    "gemma3": (False, True, True),
  }[family]
  if family.startswith("gemma"):
    assert cfg.window(0) == 4 and cfg.window(1) is None and cfg.sandwich_norms


@pytest.mark.parametrize("family", ["qwen2", "gemma2", "gemma3"])
def test_greedy_generation_matches_transformers(tmp_path, family):
  """32 greedy tokens from the KV-cached sampler == transformers' `generate` (for Gemma the
  sliding layers' window moves through the decoded tokens)."""
  from rl_jax.sampling import SamplingConfig, generate

  folder, model = _checkpoint(tmp_path, family)
  policy, params = hf.from_pretrained(folder)
  tokens, mask = _batch()
  cfg = SamplingConfig(max_new_tokens=32, temperature=0.0, stop_ids=())
  ours = np.asarray(generate(policy.graphdef, params, tokens, mask, jax.random.key(0), cfg=cfg)[0])
  for n in range(tokens.shape[0]):  # one row at a time: no padding in the reference
    row = torch.tensor(tokens[n][mask[n]][None], dtype=torch.long)
    with torch.no_grad():
      ref = model.generate(
        row, max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0
      )[0, row.shape[1] :].numpy()
    np.testing.assert_array_equal(ours[n], ref, err_msg=f"row {n}")


def test_sharded_checkpoint_and_errors(tmp_path):
  folder, model = _checkpoint(tmp_path, "llama")
  sharded = tmp_path / "sharded"
  model.save_pretrained(str(sharded), safe_serialization=True, max_shard_size="20KB")
  _save_tokenizer(sharded)
  assert os.path.exists(sharded / "model.safetensors.index.json")
  tokens, mask = _batch()
  p1, w1 = hf.from_pretrained(folder)
  p2, w2 = hf.from_pretrained(str(sharded))
  np.testing.assert_array_equal(hf.logits(p1, w1, tokens, mask), hf.logits(p2, w2, tokens, mask))

  with pytest.raises(hf.CheckpointFormatError, match="config.json is missing"):
    hf.from_pretrained(str(tmp_path))
  os.remove(os.path.join(folder, "model.safetensors"))
  with pytest.raises(hf.CheckpointFormatError, match="neither model.safetensors"):
    hf.from_pretrained(folder)
  config = json.loads((sharded / "config.json").read_text())
  (sharded / "config.json").write_text(json.dumps(dict(config, model_type="gpt2")))
  with pytest.raises(hf.CheckpointFormatError, match="model_type 'gpt2'"):
    hf.from_pretrained(str(sharded))
  yarn = dict(config, model_type="llama", rope_parameters={"rope_type": "yarn", "factor": 4.0})
  (sharded / "config.json").write_text(json.dumps(yarn))
  with pytest.raises(hf.CheckpointFormatError, match="rope type 'yarn'"):
    hf.from_pretrained(str(sharded))


def test_hf_family_through_the_config(tmp_path):
  """`model.family=hf model.path=DIR`: the policy is the checkpoint's (config, tokenizer,
  weights), whatever the preset says."""
  from rl_jax import config as config_lib
  from rl_jax import policy as policy_lib
  from rl_jax.tasks import ArithmeticTask

  folder, model = _checkpoint(tmp_path, "qwen3")
  cd = config_lib.apply_overrides(
    config_lib.default_configdict(), {"model.family": "hf", "model.path": folder}
  )
  policy = policy_lib.build(config_lib.from_configdict(cd).model, ArithmeticTask())
  assert policy.family == "hf" and policy.model_cfg.vocab_size == 97
  assert policy.tokenizer.encode("w3 w4") == [7, 8]
  params = policy.init_params(0)
  tokens, mask = _batch()
  ref = _reference_logits(model, tokens, mask)
  np.testing.assert_allclose(
    hf.logits(policy, params, tokens, mask)[mask], ref[mask], atol=1e-4 * np.abs(ref).max()
  )


def short_reward(examples, completions):
  return -0.1 * np.array([len(c) for c in completions], np.float32)


@pytest.mark.parametrize(
  "config, family", [("grpo_hf.py", "qwen2"), ("grpo_hf_pod.py", "gemma2")], ids=["one", "pod"]
)
def test_grpo_on_a_checkpoint_with_experiments_grpo_hf(tmp_path, config, family):
  """experiments/grpo_hf.py on a tiny random Qwen2-shaped checkpoint and a JSONL file: two GRPO
  steps with LoRA through the checkpoint's own tokenizer, the KL reference being the checkpoint
  (the adapters' base weights). The pod configuration (bf16 weights and compute, micro-batches)
  on a Gemma 2 checkpoint, on this one CPU device."""
  import io

  from tests_support import ROOT

  from rl_jax import config as config_lib
  from rl_jax import loop
  from rl_jax.metrics import read_jsonl

  folder, _ = _checkpoint(tmp_path, family)
  rows = [dict(question=f"w{i} w{i + 1}", answer=f"w{i + 2}") for i in range(40)]
  data = tmp_path / "train.jsonl"
  data.write_text("".join(json.dumps(r) + "\n" for r in rows))
  overrides = {
    "model.path": folder,
    "task.path": str(data),
    "task.heldout_fraction": "0.2",
    "train.steps": "2",
    "rl.prompts_per_step": "2",
    "rl.group_size": "4",
    "sampling.max_new_tokens": "6",
    "eval.num_prompts": "4",
    "checkpoint.every": "2",
    "log.tensorboard": "false",
    # The verifier never rewards a random model; a length reward varies within groups.
    "rewards.short.name": "test_hf:short_reward",
    "train.learning_rate": "1e-2",  # large enough that one update moves the policy visibly
    "train.warmup_steps": "0",
    "lora.rank": "4",  # adapters on every projection; the checkpoint is the frozen base
  }
  cd = config_lib.load_config_file(os.path.join(ROOT, "experiments", config))
  cfg = config_lib.from_configdict(config_lib.apply_overrides(cd, overrides))
  loop.run(cfg, str(tmp_path / "run"), log=lambda m: None, stream=io.StringIO())
  metrics = read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))
  assert [r["step"] for r in metrics] == [1, 2]
  assert all(np.isfinite(r["loss"]) and r["skipped_updates"] == 0 for r in metrics)
  assert metrics[1]["kl"] > 0  # the policy moved away from the checkpoint it started from


@pytest.mark.parametrize("family", ["llama3", "qwen2", "qwen3", "gemma2", "gemma3"])
def test_export_loads_in_transformers_with_the_same_logits(tmp_path, family):
  """Trained parameters (here: the checkpoint's, perturbed) written by `save_pretrained` load in
  transformers and give rl_jax's logits; the tokenizer travels with them."""
  folder, _ = _checkpoint(tmp_path, family)
  policy, params = hf.from_pretrained(folder)
  rng = np.random.default_rng(3)
  params = jax.tree.map(lambda x: x + 0.05 * rng.normal(size=x.shape).astype(x.dtype), params)
  out = tmp_path / "export"
  hf.save_pretrained(policy, params, str(out))
  model = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
  tokens, mask = _batch()
  ours = np.asarray(hf.logits(policy, params, tokens, mask))
  ref = _reference_logits(model, tokens, mask)
  assert np.abs(ours[mask] - ref[mask]).max() / np.abs(ref[mask]).max() < 1e-4
  assert transformers.AutoTokenizer.from_pretrained(str(out)).eos_token == "<eos>"
  again, _ = hf.from_pretrained(str(out))  # and back: the same configuration
  assert again.model_cfg == policy.model_cfg


def test_export_an_embedded_model(tmp_path):
  """A model trained from a preset (no checkpoint) exports as a Llama folder transformers runs."""
  from rl_jax.models import transformer

  cfg = transformer.preset("test", 97)
  graphdef, params = transformer.init_model(cfg, 0)
  from rl_jax.policy import Policy
  from rl_jax.tokenizers import CharTokenizer

  policy = Policy("embedded", cfg, graphdef, CharTokenizer("abc"))
  hf.save_pretrained(policy, params, str(tmp_path))
  model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
  assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llama"
  tokens, mask = _batch()
  ours = np.asarray(hf.logits(policy, params, tokens, mask))
  ref = _reference_logits(model, tokens, mask)
  assert np.abs(ours[mask] - ref[mask]).max() / np.abs(ref[mask]).max() < 1e-4


def test_loading_onto_an_8_device_mesh_gives_the_same_logits(tmp_path):
  import subprocess
  import sys

  folder, _ = _checkpoint(tmp_path, "qwen3")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_mesh_check.py")
  r = subprocess.run(
    [sys.executable, script, folder], env=env, capture_output=True, text=True, timeout=600
  )
  assert r.returncode == 0, r.stderr[-4000:]
  result = json.loads(r.stdout.strip().splitlines()[-1])
  assert result["devices"] == 8 and "tensor" in result["q_spec"] and "fsdp" in result["q_spec"]
  assert result["max_diff"] <= 1e-5 * result["scale"], result


def test_safetensors_reader_equals_the_library(tmp_path):
  """`hf.SafetensorsFile` (plain reads, no memory map) gives the safetensors library's arrays for
  float32, bfloat16 and integer tensors, and names a truncated file."""
  import ml_dtypes
  from safetensors import safe_open
  from safetensors.numpy import save_file

  rng = np.random.default_rng(0)
  tensors = {
    "w": rng.normal(size=(5, 3)).astype(np.float32),
    "b": rng.normal(size=(7,)).astype(ml_dtypes.bfloat16),
    "i": np.arange(6, dtype=np.int64).reshape(2, 3),
  }
  file = str(tmp_path / "m.safetensors")
  save_file(tensors, file, metadata={"format": "pt"})
  ours = hf.SafetensorsFile(file)
  assert sorted(ours.keys()) == ["b", "i", "w"]
  with safe_open(file, framework="numpy") as ref:
    for name in tensors:
      x = ours.read(name)
      assert x.dtype == tensors[name].dtype and x.shape == tensors[name].shape
      np.testing.assert_array_equal(x, ref.get_tensor(name))
  with open(file, "rb") as f:
    data = f.read()
  with open(file, "wb") as f:
    f.write(data[:-8])
  with pytest.raises(hf.CheckpointFormatError, match="truncated"):
    hf.SafetensorsFile(file).read(max(tensors, key=lambda n: ours.tensors[n]["data_offsets"]))
