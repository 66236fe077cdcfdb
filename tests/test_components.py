"""Open components, end to end and without editing rl_jax/: a JSONL dataset with a Hugging Face
tokenizer saved by the test, a reward defined here combined with the verifier at weight 0.5, a
task from a module in a temporary folder, a TFDS dataset built by the test; and the config's
rules for components (renaming resets a section, keys are checked) and for resuming."""

import io
import json
import os

import numpy as np
import pytest
from tests_support import ROOT, make_small_config

from rl_jax import config as config_lib
from rl_jax import loop
from rl_jax.checkpoint import CheckpointError
from rl_jax.metrics import read_jsonl

TINY_RUN = {
  "model.preset": "test",
  "sft.steps": "30",
  "sft.batch_size": "8",
  "train.steps": "2",
  "rl.prompts_per_step": "4",
  "rl.group_size": "4",
  "eval.every": "0",
  "eval.num_prompts": "8",
  "checkpoint.every": "2",
  "log.tensorboard": "false",
}


def brevity(examples, completions, per_char: float = 0.1):
  """A reward defined outside rl_jax: minus `per_char` per completion character."""
  del examples
  return -per_char * np.array([len(c) for c in completions], np.float32)


def _sum_rows(n, offset=0):
  rng = np.random.default_rng(offset)
  a, b = rng.integers(0, 50, n), rng.integers(0, 50, n)
  return [
    dict(question=f"{x}+{y}=", answer=f"{x}+{y} is {x + y}\n#### {x + y}", level=int(x > 25))
    for x, y in zip(a, b)
  ]


def _write_jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def _save_bpe_tokenizer(folder, texts):
  """A byte-level BPE tokenizer trained on `texts`, with <bos> added to prompts, saved with
  transformers' save_pretrained (tokenizer.json + config)."""
  tokenizers = pytest.importorskip("tokenizers")
  transformers = pytest.importorskip("transformers")
  backend = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
  backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  backend.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
    vocab_size=300,
    special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"],
    initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
  )
  backend.train_from_iterator(texts, trainer)
  bos = backend.token_to_id("<bos>")
  backend.post_processor = tokenizers.processors.TemplateProcessing(
    single="<bos> $A", special_tokens=[("<bos>", bos)]
  )
  tok = transformers.PreTrainedTokenizerFast(
    tokenizer_object=backend,
    pad_token="<pad>",
    bos_token="<bos>",
    eos_token="<eos>",
    unk_token="<unk>",
  )
  tok.save_pretrained(str(folder))
  return str(folder)


def _run(overrides, workdir, config="jsonl_math.py"):
  cd = config_lib.load_config_file(os.path.join(ROOT, "experiments", config))
  cd = config_lib.apply_overrides(cd, {**TINY_RUN, **overrides})
  cfg = config_lib.from_configdict(cd)
  loop.run(cfg, str(workdir), log=lambda m: None, stream=io.StringIO())
  return read_jsonl(os.path.join(workdir, "metrics.jsonl"))


def test_jsonl_with_a_saved_tokenizer_and_a_weighted_reward_of_our_own(tmp_path):
  train, heldout = _sum_rows(200), _sum_rows(16, offset=1)
  texts = [r["question"] for r in train + heldout] + [r["answer"] for r in train + heldout]
  folder = _save_bpe_tokenizer(tmp_path / "tok", texts)
  rows = _run(
    {
      "task.path": _write_jsonl(tmp_path / "train.jsonl", train),
      "task.heldout_path": _write_jsonl(tmp_path / "test.jsonl", heldout),
      "model.tokenizer": folder,
      "rewards.brevity.name": "test_components:brevity",
      "rewards.brevity.weight": "0.5",
      "rewards.brevity.per_char": "0.01",
    },
    tmp_path / "run",
  )
  assert [r["step"] for r in rows] == [1, 2]
  for r in rows:
    assert r["reward/brevity"] < 0 and 0 <= r["reward/task"] <= 1 and "accuracy" in r
    # The total is the weighted sum of the components, each logged as its own column.
    np.testing.assert_allclose(
      r["reward_mean"], r["reward/task"] + 0.5 * r["reward/brevity"], rtol=1e-5, atol=1e-6
    )
    assert np.isfinite(r["loss"]) and r["skipped_updates"] == 0
  for name in ("eval.jsonl", "config.json", "reward.png", "checkpoints"):
    assert os.path.exists(tmp_path / "run" / name), name
  with open(tmp_path / "run" / "config.json") as f:
    saved = json.load(f)
  assert saved["rewards"]["brevity"] == dict(
    name="test_components:brevity", weight=0.5, per_char=0.01
  )
  assert saved["model"]["tokenizer"] == folder


TASK_MODULE = '''
import numpy as np
from rl_jax.tasks import Example, max_lengths_of


class Copy:
  """Repeat the digits: "123=" -> "123"."""

  name = "copy"

  def __init__(self, width: int = 2):
    self.width = width

  def _examples(self, rng, n):
    nums = rng.integers(0, 10 ** self.width, n)
    return [Example(prompt=f"{x}=", answer=str(x)) for x in nums]

  def train_examples(self, rng, n):
    return self._examples(rng, n)

  def heldout_examples(self, n):
    return self._examples(np.random.default_rng(123), n)

  def score(self, examples, completions):
    correct = np.array([c == e.answer for e, c in zip(examples, completions)])
    return dict(reward=correct.astype(np.float32), correct=correct)

  def max_lengths(self, tokenizer):
    return max_lengths_of(tokenizer, [Example("9" * self.width + "=", "9" * self.width)])

  def alphabet(self):
    return "0123456789="


def make_task(width: int = 2):
  return Copy(width)
'''


def test_task_from_a_module_outside_the_package(tmp_path, monkeypatch):
  (tmp_path / "my_tasks.py").write_text(TASK_MODULE)
  monkeypatch.syspath_prepend(str(tmp_path))
  overrides = {"task.name": "my_tasks:make_task", "task.width": "3", "eval.num_prompts": "8"}
  rows = _run(overrides, tmp_path / "run", config="default.py")
  assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
  with pytest.raises(config_lib.ConfigError, match=r"task\.widht'.*did you mean.*width"):
    _run({**overrides, "task.widht": "3"}, tmp_path / "bad", config="default.py")


def test_tfds_dataset_built_in_a_temporary_data_dir(tmp_path):
  from test_datasets import _build_tfds

  train = [dict(r, score=0.5, tags=["t"]) for r in _sum_rows(64)]
  test = [dict(r, score=0.5, tags=["t"]) for r in _sum_rows(8, offset=1)]
  _build_tfds(tmp_path / "data", "sums", {"train": train, "test": test})
  rows = _run(
    {"task.name": "tfds", "task.dataset": "sums", "task.data_dir": str(tmp_path / "data")},
    tmp_path / "run",
  )
  assert [r["step"] for r in rows] == [1, 2] and "accuracy" in rows[0]


def test_renaming_a_component_starts_its_section_afresh():
  cd = config_lib.load_config_file(os.path.join(ROOT, "experiments", "dapo.py"))
  c = config_lib.from_configdict(config_lib.apply_overrides(cd, {"algorithm.name": "grpo"}))
  assert c.algorithm.name == "grpo" and c.algorithm.args == {}  # dapo's overlong_cache_len gone
  c = config_lib.from_configdict(
    config_lib.apply_overrides(cd, {"task.name": "countdown", "task.num_numbers": "4"})
  )
  assert c.task.args == {"num_numbers": 4}  # typed by the task's signature
  with pytest.raises(config_lib.ConfigError, match="algorithm.clip_eps_hgih"):
    config_lib.from_configdict(config_lib.apply_overrides(cd, {"algorithm.clip_eps_hgih": "1"}))
  with pytest.raises(config_lib.ConfigError, match="rewards.task.weight' must be float"):
    config_lib.from_configdict(config_lib.apply_overrides(cd, {"rewards.task.weight": "x"}))


def test_resume_refuses_a_changed_config_and_accepts_more_steps(tmp_path):
  small = {"train.steps": 1, "eval.every": 0, "checkpoint.every": 1}
  loop.run(make_small_config(**small), str(tmp_path), log=lambda m: None, stream=io.StringIO())
  changed = make_small_config(**small, **{"train.learning_rate": 1e-3})
  with pytest.raises(CheckpointError, match="train.learning_rate"):
    loop.run(changed, str(tmp_path), log=lambda m: None, stream=io.StringIO())
  longer = make_small_config(**{**small, "train.steps": 2})
  loop.run(longer, str(tmp_path), log=lambda m: None, stream=io.StringIO())
  assert [r["step"] for r in read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))] == [1, 2]
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["train"]["steps"] == 2
