"""Tests of the dataset tasks: JsonlTask (a JSON-lines file) and TfdsTask (a prepared TFDS
dataset in array_record format), both built from data written in tmp_path."""

import json
import os
import shutil
import sys

import numpy as np
import pytest

from rl_jax.tasks.base import Example
from rl_jax.tasks.jsonl import JsonlTask, is_heldout_prompt

# Prompts whose hash puts them in the held-out split at heldout_fraction=0.25 (pinned: a change
# of the split would silently mix evaluation prompts into training across versions).
HASH_PROMPTS = [f"What is {i} + {i}?" for i in range(40)]
HASH_HELDOUT_AT_QUARTER = [2, 5, 10, 12, 15, 31, 34, 35, 36, 39]


class CharTok:
  """A stand-in tokenizer: one id per character, BOS (1) before a prompt, EOS (2) on request."""

  def encode_prompt(self, text):
    return [1] + [ord(c) for c in text]

  def encode(self, text, eos=False):
    return [ord(c) for c in text] + [2] * eos


def write_jsonl(path, rows, blank_lines=False):
  lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
  text = ("\n\n" if blank_lines else "\n").join(lines) + "\n"
  path.write_text(text, encoding="utf-8")
  return str(path)


def sum_rows(indices):
  return [
    {"question": HASH_PROMPTS[i], "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}", "level": i}
    for i in indices
  ]


# --- JsonlTask -----------------------------------------------------------------------------


def test_fields_template_and_meta(tmp_path):
  train = [
    {"q": "2+2", "a": 4, "level": 1, "tags": ["easy"]},
    {"q": "half of 1", "a": "\\frac{1}{2}", "level": 2, "tags": []},
  ]
  heldout = [{"q": "3*3", "a": "#### 9", "level": 1, "tags": ["easy"]}]
  task = JsonlTask(
    write_jsonl(tmp_path / "train.jsonl", train, blank_lines=True),
    heldout_path=write_jsonl(tmp_path / "test.jsonl", heldout),
    prompt_field="q",
    answer_field="a",
    prompt_template="Q: {prompt}\nA:",
    name="mine",
  )
  assert task.name == "mine" and (task.num_train, task.num_heldout) == (2, 1)
  assert task.heldout_examples(5) == [Example("Q: 3*3\nA:", "#### 9", meta=heldout[0])]
  drawn = task.train_examples(np.random.default_rng(0), 50)
  assert {ex.prompt for ex in drawn} == {"Q: 2+2\nA:", "Q: half of 1\nA:"}
  by_prompt = {ex.prompt: ex for ex in drawn}
  assert by_prompt["Q: 2+2\nA:"] == Example("Q: 2+2\nA:", "4", meta=train[0])  # str(number)
  assert by_prompt["Q: half of 1\nA:"].meta == train[1]  # the whole row, other columns too
  scores = task.score(task.heldout_examples(1) * 3, ["#### 9", "\\boxed{9.0}", "8"])
  np.testing.assert_array_equal(scores["reward"], [1, 1, 0])
  np.testing.assert_array_equal(scores["answered"], [1, 1, 1])


def test_heldout_file_prompts_never_trained(tmp_path):
  rows = sum_rows(range(6))
  train = rows + [dict(rows[1], answer="another solution\n#### 2")]  # a copy of a held-out one
  heldout = [rows[1], rows[4]]
  task = JsonlTask(
    write_jsonl(tmp_path / "train.jsonl", train),
    heldout_path=write_jsonl(tmp_path / "test.jsonl", heldout),
  )
  assert (task.num_train, task.num_heldout) == (4, 2)
  assert [ex.prompt for ex in task.heldout_examples(10)] == [HASH_PROMPTS[1], HASH_PROMPTS[4]]
  assert task.heldout_examples(1) == task.heldout_examples(10)[:1]
  drawn = {ex.prompt for ex in task.train_examples(np.random.default_rng(1), 200)}
  assert drawn == {HASH_PROMPTS[i] for i in (0, 2, 3, 5)}


def test_hash_split_fixed_disjoint_and_order_free(tmp_path):
  rows = sum_rows(range(40))
  expected = [HASH_PROMPTS[i] for i in HASH_HELDOUT_AT_QUARTER]
  assert [p for p in HASH_PROMPTS if is_heldout_prompt(p, 0.25)] == expected
  # A copy of a held-out prompt (with another answer) is held out too, never trained on.
  copy = dict(rows[HASH_HELDOUT_AT_QUARTER[0]], answer="#### 4", level=99)
  task = JsonlTask(write_jsonl(tmp_path / "a.jsonl", rows + [copy]), heldout_fraction=0.25)
  assert [ex.prompt for ex in task.heldout_examples(100)] == expected + [expected[0]]
  assert task.num_train == 30
  drawn = {ex.prompt for ex in task.train_examples(np.random.default_rng(0), 1000)}
  assert drawn == set(HASH_PROMPTS) - set(expected)  # disjoint, and every training row drawn
  # Another row order: the same split, held-out rows listed in the new file order.
  reversed_task = JsonlTask(write_jsonl(tmp_path / "b.jsonl", rows[::-1]), heldout_fraction=0.25)
  assert [ex.prompt for ex in reversed_task.heldout_examples(100)] == expected[::-1]
  assert reversed_task.num_train == 30


def test_draws_deterministic_given_rng(tmp_path):
  task = JsonlTask(write_jsonl(tmp_path / "a.jsonl", sum_rows(range(40))), heldout_fraction=0.25)
  a = task.train_examples(np.random.default_rng(7), 16)
  b = task.train_examples(np.random.default_rng(7), 16)
  c = task.train_examples(np.random.default_rng(8), 16)
  assert len(a) == 16 and a == b and a != c
  rng = np.random.default_rng(7)
  rng.integers(0, 10, 3)  # another state of the same seed's stream
  assert task.train_examples(rng, 16) != a
  assert task.train_examples(np.random.default_rng(7), 0) == []


def test_max_lengths_and_alphabet(tmp_path):
  train = [{"question": "ab", "answer": "7"}, {"question": "abcd", "answer": "#### 12"}]
  heldout = [{"question": "c", "answer": "3"}]
  task = JsonlTask(
    write_jsonl(tmp_path / "train.jsonl", train),
    heldout_path=write_jsonl(tmp_path / "test.jsonl", heldout),
    prompt_template="{prompt}=",
  )
  # Prompts "ab=", "abcd=", "c=": BOS + 5 characters; answers: "#### 12" is 7 characters + EOS.
  assert task.max_lengths(CharTok()) == (6, 8)
  assert task.alphabet() == " #1237=abcd"
  # The held-out split counts too.
  long_heldout = [{"question": "c" * 20, "answer": "3" * 10}]
  task = JsonlTask(
    write_jsonl(tmp_path / "train.jsonl", train),
    heldout_path=write_jsonl(tmp_path / "long.jsonl", long_heldout),
  )
  assert task.max_lengths(CharTok()) == (21, 11)


def _error(tmp_path, rows=None, heldout=None, **kwargs):
  if rows is not None:
    kwargs["path"] = write_jsonl(tmp_path / "train.jsonl", rows)
  if heldout is not None:
    kwargs["heldout_path"] = write_jsonl(tmp_path / "test.jsonl", heldout)
  with pytest.raises(ValueError) as info:
    JsonlTask(**kwargs)
  return str(info.value)


def test_errors(tmp_path):
  good = sum_rows(range(40))
  missing = str(tmp_path / "nope.jsonl")
  msg = _error(tmp_path, path=missing)
  assert "task.path" in msg and "nope.jsonl" in msg and "does not exist" in msg
  assert "is a directory" in _error(tmp_path, path=str(tmp_path))
  msg = _error(tmp_path, good, heldout_path=missing)
  assert "task.heldout_path" in msg and "does not exist" in msg
  msg = _error(tmp_path, good[:2] + ["{not json"])
  assert "task.path" in msg and "line 3 of" in msg and "not valid JSON" in msg
  assert "line 2 of" in _error(tmp_path, good[:1] + ["[1, 2]"]) and "not an object"
  msg = _error(tmp_path, good[:1] + [{"question": "x"}])
  assert "task.answer_field='answer'" in msg and "line 2 of" in msg
  assert "['question']" in msg  # the fields the row has
  msg = _error(tmp_path, good, prompt_field="problem")
  assert "task.prompt_field='problem'" in msg and "line 1 of" in msg
  assert "['answer', 'level', 'question']" in msg
  for bad, kind in [(["a"], "list"), (None, "NoneType"), (True, "bool"), ({}, "dict")]:
    msg = _error(tmp_path, [{"question": "q", "answer": bad}])
    assert "task.answer_field" in msg and f"is a {kind}, not a string or number" in msg
  msg = _error(tmp_path, good, heldout=[{"question": 1, "answer": "1"}, {"question": []}])
  assert "task.prompt_field" in msg and "line 2 of" in msg and "test.jsonl" in msg
  (tmp_path / "bad.jsonl").write_bytes(b'{"question": "\xff"}\n')
  msg = _error(tmp_path, path=str(tmp_path / "bad.jsonl"))
  assert "task.path" in msg and "line 1 of" in msg and "UTF-8" in msg
  # Empty splits.
  assert "has no rows" in _error(tmp_path, ["", "  "])
  msg = _error(tmp_path, good, heldout=[])
  assert "task.heldout_path" in msg and "has no rows" in msg
  msg = _error(tmp_path, good[:2], heldout_fraction=1e-9)
  assert "task.heldout_fraction" in msg and "task.heldout_path" in msg
  msg = _error(tmp_path, good[:2], heldout=good[1::-1])
  assert "task.path" in msg and "none is left for training" in msg
  assert "task.heldout_fraction" in _error(tmp_path, good, heldout_fraction=1.0)
  # Templates.
  assert "task.prompt_template" in _error(tmp_path, good, prompt_template="{question}")
  assert "task.prompt_template" in _error(tmp_path, good, prompt_template="{prompt")


# --- TfdsTask ------------------------------------------------------------------------------

TFDS_TRAIN = [dict(r, score=0.5, tags=["arith", f"l{r['level']}"]) for r in sum_rows(range(40))] + [
  {
    "question": "Ünïcode: 1/4 + 1/4?",
    "answer": "\\frac{1}{2}",
    "level": 7,
    "score": 1.5,
    "tags": [],
  }
]
TFDS_TEST = [
  {"question": "What is 100 + 100?", "answer": "#### 200", "level": 3, "score": 0.25, "tags": []},
  dict(sum_rows([5])[0], score=0.5, tags=["dup"]),
]


def _build_tfds(data_dir, name, splits):
  """Writes a TFDS dataset `name` (array_record files, record order kept) into `data_dir`."""
  tfds = pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("array_record")

  class RowsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")
    name = "rows_builder"  # replaced per instance below

    def __init__(self, **kwargs):
      self.name = name
      super().__init__(**kwargs)

    def _info(self):
      features = tfds.features.FeaturesDict(
        {
          "question": tfds.features.Text(),
          "answer": tfds.features.Text(),
          "level": np.int64,
          "score": np.float32,
          "tags": tfds.features.Sequence(tfds.features.Text()),
        }
      )
      return tfds.core.DatasetInfo(builder=self, features=features, disable_shuffling=True)

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples(rows) for split, rows in splits.items()}

    def _generate_examples(self, rows):
      yield from enumerate(rows)

  tfds.disable_progress_bar()
  RowsBuilder(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  had_tensorflow = "tensorflow" in sys.modules
  data_dir = tmp_path_factory.mktemp("tfds")
  _build_tfds(data_dir, "sums", {"train": TFDS_TRAIN, "test": TFDS_TEST})
  if not had_tensorflow:  # writing array_record needs no TensorFlow
    assert "tensorflow" not in sys.modules
  return str(data_dir)


def test_tfds_task_matches_jsonl(tfds_dir, tmp_path):
  from rl_jax.tasks.tfds_source import TfdsTask

  train_path = write_jsonl(tmp_path / "train.jsonl", TFDS_TRAIN)
  jsonl = JsonlTask(train_path, heldout_path=write_jsonl(tmp_path / "test.jsonl", TFDS_TEST))
  task = TfdsTask("sums", tfds_dir, name="gsm")
  assert task.name == "gsm" and (task.num_train, task.num_heldout) == (40, 2)
  assert task.heldout_examples(10) == jsonl.heldout_examples(10)
  assert task.heldout_examples(1)[0].meta == TFDS_TEST[0]  # str, int, float, list of str
  for seed in (0, 1):
    rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
    assert task.train_examples(rng_a, 64) == jsonl.train_examples(rng_b, 64)
  assert task.max_lengths(CharTok()) == jsonl.max_lengths(CharTok())
  assert task.alphabet() == jsonl.alphabet() and "Ü" in task.alphabet()
  # A hash split of one split, a template, other field names.
  kwargs = dict(heldout_fraction=0.25, prompt_template="> {prompt}")
  hashed = TfdsTask("sums:1.0.0", tfds_dir, heldout_split=None, **kwargs)
  hashed_jsonl = JsonlTask(train_path, **kwargs)
  assert hashed.num_heldout == len(HASH_HELDOUT_AT_QUARTER)
  assert hashed.heldout_examples(100) == hashed_jsonl.heldout_examples(100)
  rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
  assert hashed.train_examples(rng_a, 32) == hashed_jsonl.train_examples(rng_b, 32)
  # A slice of a split (its row 5 has the prompt of a held-out row: dropped), another field.
  sliced = TfdsTask("sums", tfds_dir, split="train[:10]", prompt_field="answer")
  assert sliced.num_train == 9 and sliced.heldout_examples(1)[0].prompt == "#### 200"


def test_tfds_errors(tfds_dir, tmp_path, monkeypatch):
  from rl_jax.tasks.tfds_source import TfdsTask

  with pytest.raises(ValueError, match="task.data_dir=.*is not a directory"):
    TfdsTask("sums", str(tmp_path / "nowhere"))
  with pytest.raises(ValueError, match=r"task.dataset='gsm8k' is not prepared.*\['sums'\]"):
    TfdsTask("gsm8k", tfds_dir)
  with pytest.raises(ValueError, match="task.dataset='sums:2.0.0'.*not found"):
    TfdsTask("sums:2.0.0", tfds_dir)
  with pytest.raises(ValueError, match="task.heldout_split='validation'.*Unknown split"):
    TfdsTask("sums", tfds_dir, heldout_split="validation")
  with pytest.raises(ValueError, match="task.split='train\\[:1000\\]'"):
    TfdsTask("sums", tfds_dir, split="train[:1000]")
  with pytest.raises(ValueError, match="task.prompt_field='problem'.*record 0 of split 'train'"):
    TfdsTask("sums", tfds_dir, prompt_field="problem")
  with pytest.raises(ValueError, match="task.answer_field='tags'.*is a list"):
    TfdsTask("sums", tfds_dir, answer_field="tags")
  # A dataset prepared as tfrecord (here: its info says so) has no random access.
  tfrecord_dir = tmp_path / "tfrecord"
  shutil.copytree(os.path.join(tfds_dir, "sums"), tfrecord_dir / "sums")
  info_path = tfrecord_dir / "sums" / "1.0.0" / "dataset_info.json"
  info = json.loads(info_path.read_text())
  info_path.write_text(json.dumps(dict(info, fileFormat="tfrecord")))
  with pytest.raises(ValueError, match='task.dataset=.*file_format="array_record"'):
    TfdsTask("sums", str(tfrecord_dir))
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # as if not installed
  with pytest.raises(ImportError, match="pip install tensorflow-datasets array_record"):
    TfdsTask("sums", tfds_dir)
