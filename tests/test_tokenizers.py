"""Tests of rl_jax.tokenizers: the character tokenizer, the Hugging Face wrapper built from small
tokenizers saved in temporary folders (no downloads), and the padded batch layouts."""

import json
import sys

import numpy as np
import pytest

from rl_jax.tokenizers import (
  CharTokenizer,
  HFTokenizer,
  Tokenizer,
  char_tokenizer_from_texts,
  encode_left_padded,
  encode_right_padded,
  load_tokenizer,
)

ALPHABET = "0123456789+-*="


# --- character tokenizer ----------------------------------------------------------


def test_char_ids_and_roundtrip():
  tok = CharTokenizer(ALPHABET)
  assert isinstance(tok, Tokenizer)
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.stop_ids) == (0, 1, 2, (2,))
  assert tok.vocab_size == 3 + 14
  assert tok.alphabet == ALPHABET
  # ids follow the alphabet after the three specials: '0' -> 3, '+' -> 13, '=' -> 16.
  assert tok.encode("348+67=") == [6, 7, 11, 13, 9, 10, 16]
  assert tok.encode("7", eos=True) == [10, 2]
  assert tok.encode_prompt("7") == [1, 10]
  assert tok.encode_prompt("") == [1]
  for text in ["348+67=", "-999", "12*0=", ""]:
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode(text, eos=True)) == text
    assert tok.decode(tok.encode_prompt(text)) == text


def test_char_errors():
  tok = CharTokenizer(ALPHABET)
  with pytest.raises(ValueError, match="'a'"):
    tok.encode("12a")
  with pytest.raises(ValueError, match="'x'"):
    tok.encode_prompt("x")
  with pytest.raises(ValueError, match=r"repeated characters \['0'\]"):
    CharTokenizer("0120")


def test_char_decode_stops_at_eos_and_skips_specials():
  tok = CharTokenizer(ALPHABET)
  ids = [1, 4, 0, 5, 2, 6, 0, 0]  # bos "1" pad "2" eos "3" pad pad
  assert tok.decode(ids) == "12"
  assert tok.decode(np.asarray(ids, np.int32)) == "12"
  assert tok.decode([2, 4]) == ""
  assert tok.decode([4, 99, 5]) == "12"  # ids outside the vocabulary are skipped


def test_char_tokenizer_from_texts():
  tok = char_tokenizer_from_texts(["b=a+1", "c0", "", "a=b"])
  assert tok.alphabet == "+01=abc"
  assert tok.encode("abc+") == [7, 8, 9, 3]
  assert tok.decode(tok.encode("c=b+10", eos=True)) == "c=b+10"
  # The order of the texts does not change the ids.
  assert char_tokenizer_from_texts(["a=b", "c0", "b=a+1"]).alphabet == tok.alphabet
  assert char_tokenizer_from_texts(iter(["zz"])).alphabet == "z"


# --- padded layouts ---------------------------------------------------------------


def test_encode_left_padded_layout():
  tok = CharTokenizer(ALPHABET)
  tokens, mask = encode_left_padded(tok, ["1+2=", "34+5=", "9"], 7)
  assert tokens.dtype == np.int32 and mask.dtype == bool
  assert tokens.shape == mask.shape == (3, 7)
  np.testing.assert_array_equal(
    tokens, [[0, 0, 1, 4, 13, 5, 16], [0, 1, 6, 7, 13, 8, 16], [0, 0, 0, 0, 0, 1, 12]]
  )
  np.testing.assert_array_equal(mask, tokens != 0)
  exact, exact_mask = encode_left_padded(tok, ["34+5="], 6)
  np.testing.assert_array_equal(exact, [[1, 6, 7, 13, 8, 16]])
  assert exact_mask.all()
  with pytest.raises(ValueError) as e:
    encode_left_padded(tok, ["1=", "34+5="], 5)  # 6 tokens with BOS
  message = str(e.value)
  assert "'34+5='" in message and "has 6 tokens" in message
  assert "prompt bucket of 5" in message and "sampling.max_prompt_tokens" in message


def test_encode_left_padded_quotes_the_start_of_a_long_prompt():
  tok = CharTokenizer(ALPHABET)
  with pytest.raises(ValueError, match=r"'1{60}\.\.\.' has 101 tokens .* bucket of 8 ") as e:
    encode_left_padded(tok, ["1" * 100], 8)
  assert "1" * 61 not in str(e.value)


def test_encode_right_padded_layout():
  tok = CharTokenizer(ALPHABET)
  tokens, mask = encode_right_padded(tok, ["12", "345+6", ""], 4)
  assert tokens.dtype == np.int32 and mask.dtype == bool
  assert tokens.shape == mask.shape == (3, 4)
  # "12" + eos; "345+6" + eos cut to 4 tokens (no eos left); "" is eos alone.
  np.testing.assert_array_equal(tokens, [[4, 5, 2, 0], [6, 7, 8, 13], [2, 0, 0, 0]])
  np.testing.assert_array_equal(
    mask, [[True, True, True, False], [True, True, True, True], [True, False, False, False]]
  )
  no_eos, no_eos_mask = encode_right_padded(tok, ["12", "3"], 3, eos=False)
  np.testing.assert_array_equal(no_eos, [[4, 5, 0], [6, 0, 0]])
  np.testing.assert_array_equal(no_eos_mask, [[True, True, False], [True, False, False]])


# --- Hugging Face tokenizer -------------------------------------------------------

WORDS = ["<pad>", "<bos>", "<eos>", "<unk>", "<end>", "user", ":", "assistant"]
WORDS += ["the", "cat", "sat", "on", "mat", "a", "dog", "ran"]
ID = {w: i for i, w in enumerate(WORDS)}
TEMPLATE = (
  "{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} <end> "
  "{% endfor %}{% if add_generation_prompt %}assistant :{% endif %}"
)


def _save(folder, *, bos=True, pad=True, eos=True, template=None, generation_eos=None):
  """Saves a WordLevel tokenizer over WORDS (whitespace-split) in `folder`; `bos` makes its
  post-processor prepend <bos>."""
  transformers = pytest.importorskip("transformers")
  tokenizers = pytest.importorskip("tokenizers")
  backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(ID, unk_token="<unk>"))
  backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  if bos:
    backend.post_processor = tokenizers.processors.TemplateProcessing(
      single="<bos> $A", special_tokens=[("<bos>", ID["<bos>"])]
    )
  specials = {"unk_token": "<unk>", "bos_token": "<bos>"}
  specials.update({"pad_token": "<pad>"} if pad else {})
  specials.update({"eos_token": "<eos>"} if eos else {})
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, **specials)
  if template is not None:
    tok.chat_template = template
  tok.save_pretrained(str(folder))
  if generation_eos is not None:
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": generation_eos}))
  return str(folder)


def test_hf_encode_with_and_without_bos(tmp_path):
  tok = HFTokenizer.from_folder(_save(tmp_path / "bos"))
  assert isinstance(tok, Tokenizer)
  assert (tok.eos_id, tok.pad_id, tok.bos_id, tok.stop_ids) == (2, 0, 1, (2,))
  assert tok.vocab_size == len(WORDS) == 16
  assert not tok.uses_chat_template
  assert tok.encode_prompt("the cat sat") == [1, 8, 9, 10]
  assert tok.encode("the cat sat") == [8, 9, 10]
  assert tok.encode("the cat sat", eos=True) == [8, 9, 10, 2]
  assert tok.encode("the zebra", eos=True) == [8, 3, 2]  # unknown word -> <unk>
  assert tok.decode([8, 9, 10]) == "the cat sat"

  plain = HFTokenizer.from_folder(_save(tmp_path / "plain", bos=False))
  assert plain.encode_prompt("the cat sat") == [8, 9, 10]
  assert plain.encode("a dog", eos=True) == [13, 14, 2]


def test_hf_decode_cuts_at_stop_ids(tmp_path):
  tok = HFTokenizer.from_folder(_save(tmp_path / "a"))
  assert tok.decode([8, 9, 2, 10, 11]) == "the cat"
  assert tok.decode(np.asarray([1, 8, 0, 9, 2, 10], np.int32)) == "the cat"  # bos, pad dropped
  assert tok.decode([4, 8]) == "<end> the"  # <end> is no stop id without a generation config
  assert tok.decode([2]) == ""

  stops = HFTokenizer.from_folder(_save(tmp_path / "b", generation_eos=[ID["<end>"], 2, 4]))
  assert stops.stop_ids == (2, 4)
  assert stops.decode([14, 15, 4, 8, 2]) == "dog ran"
  assert stops.decode([14, 2, 4]) == "dog"
  assert stops.encode("a", eos=True) == [13, 2]  # eos is still <eos>

  single = HFTokenizer.from_folder(_save(tmp_path / "c", generation_eos=4))
  assert single.stop_ids == (2, 4)
  reversed_order = HFTokenizer.from_folder(_save(tmp_path / "d", generation_eos=[15, 4]))
  assert reversed_order.stop_ids == (2, 4, 15)


def test_hf_bad_generation_config(tmp_path):
  folder = _save(tmp_path, generation_eos="<end>")
  with pytest.raises(ValueError, match="model.tokenizer: eos_token_id in .* list of ids"):
    HFTokenizer.from_folder(folder)
  (tmp_path / "generation_config.json").write_text("{not json")
  with pytest.raises(ValueError, match="model.tokenizer: cannot read"):
    HFTokenizer.from_folder(folder)


def test_hf_pad_falls_back_to_eos(tmp_path):
  tok = HFTokenizer.from_folder(_save(tmp_path, pad=False))
  assert tok.pad_id == tok.eos_id == 2
  tokens, mask = encode_left_padded(tok, ["the cat", "a dog ran"], 5)
  np.testing.assert_array_equal(tokens, [[2, 2, 1, 8, 9], [2, 1, 13, 14, 15]])
  np.testing.assert_array_equal(mask, [[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])
  # <pad> (id 0) is an ordinary word now: kept by decode.
  assert tok.decode([8, 0, 9]) == "the <pad> cat"


def test_hf_no_eos_is_an_error(tmp_path):
  with pytest.raises(ValueError, match="model.tokenizer: .* has no EOS token"):
    HFTokenizer.from_folder(_save(tmp_path, eos=False))


def test_hf_chat_template(tmp_path):
  folder = _save(tmp_path, template=TEMPLATE)
  tok = HFTokenizer.from_folder(folder)
  assert tok.uses_chat_template
  # The template renders "<bos>user : the cat <end> assistant :"; its BOS is the only one.
  expected = [ID[w] for w in "<bos> user : the cat <end> assistant :".split()]
  assert expected == [1, 5, 6, 8, 9, 4, 7, 6]
  assert tok.encode_prompt("the cat") == expected
  assert all(isinstance(i, int) for i in tok.encode_prompt("the cat"))
  assert tok.encode("the cat") == [8, 9]  # plain text ignores the template
  assert HFTokenizer.from_folder(folder, chat_template=True).encode_prompt("a") == [
    1, 5, 6, 13, 4, 7, 6
  ]  # fmt: skip
  assert HFTokenizer.from_folder(folder, chat_template=False).encode_prompt("the cat") == [1, 8, 9]
  tokens, mask = encode_left_padded(tok, ["the cat", "a"], 9)
  np.testing.assert_array_equal(tokens, [[0, *expected], [0, 0, 1, 5, 6, 13, 4, 7, 6]])
  assert mask.sum() == 15


def test_hf_chat_template_required(tmp_path):
  folder = _save(tmp_path)
  with pytest.raises(ValueError, match="model.tokenizer: .* has no chat template"):
    HFTokenizer.from_folder(folder, chat_template=True)
  assert HFTokenizer.from_folder(folder, chat_template=None).encode_prompt("a") == [1, 13]


def test_hf_folder_errors(tmp_path):
  with pytest.raises(ValueError, match="model.tokenizer: .*nowhere.* is not a folder"):
    HFTokenizer.from_folder(str(tmp_path / "nowhere"))
  (tmp_path / "tokenizer_config.json").write_text("{}")
  with pytest.raises(ValueError, match="model.tokenizer: .* has no tokenizer.json"):
    HFTokenizer.from_folder(str(tmp_path))


def test_hf_without_transformers(tmp_path, monkeypatch):
  folder = _save(tmp_path)
  monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` fails
  with pytest.raises(ImportError, match=r'pip install -e "\.\[hf\]"'):
    HFTokenizer.from_folder(folder)


def test_load_tokenizer_dispatch(tmp_path):
  char = load_tokenizer("char", alphabet="ab")
  assert isinstance(char, CharTokenizer) and char.encode_prompt("ba") == [1, 4, 3]
  with pytest.raises(ValueError, match="model.tokenizer.*the task defines no alphabet"):
    load_tokenizer("char")
  folder = _save(tmp_path, template=TEMPLATE)
  hf = load_tokenizer(folder, alphabet="ignored")
  assert isinstance(hf, HFTokenizer) and hf.encode_prompt("a")[:3] == [1, 5, 6]
  assert load_tokenizer(folder, chat_template=False).encode_prompt("a") == [1, 13]
  with pytest.raises(ValueError, match="model.tokenizer"):
    load_tokenizer(str(tmp_path / "missing"))


def test_right_padded_with_hf(tmp_path):
  tok = HFTokenizer.from_folder(_save(tmp_path, template=TEMPLATE))
  tokens, mask = encode_right_padded(tok, ["the cat sat", "a"], 3)
  np.testing.assert_array_equal(tokens, [[8, 9, 10], [13, 2, 0]])  # no BOS, no template
  np.testing.assert_array_equal(mask, [[1, 1, 1], [1, 1, 0]])


def test_ids_containing_a_delimiter(tmp_path):
  """Segment delimiters as token ids: every token whose text contains one (here "at" in cat,
  sat and mat), never special or stop tokens; the same walk for the character tokenizer."""
  from rl_jax.tokenizers import ids_containing

  tok = HFTokenizer.from_folder(_save(tmp_path / "a", generation_eos=[ID["<end>"]]))
  assert ids_containing(tok, ["at"]) == (ID["cat"], ID["sat"], ID["mat"])
  assert ids_containing(tok, ["<end>", "<eos>", "<pad>"]) == ()
  assert ids_containing(tok, ["dog", ""]) == (ID["dog"],)
  assert ids_containing(tok, []) == ()
  char = CharTokenizer("ab\n")
  assert ids_containing(char, ["\n"]) == (5,)
