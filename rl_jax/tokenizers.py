"""Tokenizers: the interface the package uses, a character tokenizer, and a Hugging Face wrapper.

`Tokenizer` is what the rest of the package needs: prompt ids (BOS and chat template applied as
the tokenizer is configured), plain-text ids (warm-start targets, forced prefixes, answers), and
decoding of completions up to the first stop id. `CharTokenizer` serves the embedded tasks;
`HFTokenizer` wraps a `transformers` fast tokenizer saved in a local folder (the `hf` extra).
`load_tokenizer` builds either from the config field `model.tokenizer`, and `encode_left_padded`
/ `encode_right_padded` lay out batches of texts as numpy arrays on the host.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"


@runtime_checkable
class Tokenizer(Protocol):
  """What the package needs from a tokenizer.

  `stop_ids` are the ids that end a completion; they always include `eos_id`. `pad_id` may equal
  `eos_id` (a tokenizer without a pad token).
  """

  vocab_size: int
  pad_id: int
  eos_id: int
  stop_ids: tuple[int, ...]

  def encode_prompt(self, text: str) -> list[int]:
    """The ids the policy sees for prompt `text`: BOS first when the tokenizer uses one, and the
    chat template applied (one user turn and the generation prompt) when it is configured to."""

  def encode(self, text: str, *, eos: bool = False) -> list[int]:
    """The ids of plain `text` (no BOS, no template), with `eos_id` appended if `eos`."""

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """The text of `ids` up to (not including) the first stop id, pad and special ids dropped."""


class CharTokenizer:
  """Maps each character of a fixed alphabet to one id; ids 0-2 are pad, bos, eos.

  >>> tok = CharTokenizer("0123456789+=")
  >>> tok.encode_prompt("12+3=")
  [1, 4, 5, 13, 6, 14]
  >>> tok.decode(tok.encode("12+3=", eos=True) + [4])
  '12+3='
  """

  def __init__(self, alphabet: str):
    repeated = sorted({c for c in alphabet if alphabet.count(c) > 1})
    if repeated:
      raise ValueError(f"alphabet has repeated characters {repeated}: {alphabet!r}")
    self.specials = (PAD, BOS, EOS)
    self.pad_id, self.bos_id, self.eos_id = 0, 1, 2
    self.stop_ids = (self.eos_id,)
    self.alphabet = alphabet
    self._to_id = {c: i + len(self.specials) for i, c in enumerate(alphabet)}
    self._to_char = {i: c for c, i in self._to_id.items()}

  @property
  def vocab_size(self) -> int:
    return len(self.specials) + len(self.alphabet)

  def encode_prompt(self, text: str) -> list[int]:
    """BOS, then one id per character of `text`."""
    return [self.bos_id] + self.encode(text)

  def encode(self, text: str, *, eos: bool = False) -> list[int]:
    """One id per character of `text`, then EOS if `eos`.

    Raises ValueError naming the first character that is not in the alphabet.
    """
    try:
      ids = [self._to_id[c] for c in text]
    except KeyError as e:
      raise ValueError(
        f"character {e.args[0]!r} is not in the tokenizer alphabet {self.alphabet!r}"
      ) from None
    return ids + ([self.eos_id] if eos else [])

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """The characters of `ids` up to the first EOS; pad, BOS and unknown ids are skipped."""
    out = []
    for i in np.asarray(ids).reshape(-1).tolist():
      if i in self.stop_ids:
        break
      if i in self._to_char:
        out.append(self._to_char[i])
    return "".join(out)


def char_tokenizer_from_texts(texts: Iterable[str]) -> CharTokenizer:
  """A `CharTokenizer` whose alphabet is the sorted set of the characters of `texts`."""
  chars: set[str] = set()
  for text in texts:
    chars.update(text)
  return CharTokenizer("".join(sorted(chars)))


class HFTokenizer:
  """A `transformers` fast tokenizer behind the `Tokenizer` interface.

  Build it with `HFTokenizer.from_folder` from a local folder as `save_pretrained` writes it.
  `chat_template` says whether `encode_prompt` applies the tokenizer's chat template (None: when
  it has one). With the template, the template decides the special tokens (HF convention: a
  template that wants a BOS writes `{{ bos_token }}`); without it, the tokenizer's own
  post-processor does (`add_special_tokens=True`). `stop_ids` is EOS first, then `extra_stop_ids`
  sorted (e.g. the end-of-turn ids of a chat model's generation config).
  """

  def __init__(
    self,
    tokenizer: Any,
    *,
    extra_stop_ids: Iterable[int] = (),
    chat_template: bool | None = None,
    name: str = "",
  ):
    self.hf = tokenizer
    self.name = name or str(getattr(tokenizer, "name_or_path", "")) or "the tokenizer"
    eos = tokenizer.eos_token_id
    if eos is None:
      raise ValueError(
        f"model.tokenizer: {self.name} has no EOS token (set eos_token in its "
        "tokenizer_config.json or special_tokens_map.json)"
      )
    self.eos_id = int(eos)
    pad = tokenizer.pad_token_id
    self.pad_id = self.eos_id if pad is None else int(pad)
    bos = tokenizer.bos_token_id
    self.bos_id = None if bos is None else int(bos)
    self.stop_ids = (self.eos_id,) + tuple(sorted({int(i) for i in extra_stop_ids} - {self.eos_id}))
    self.vocab_size = len(tokenizer)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat_template and not has_template:
      raise ValueError(
        f"model.tokenizer: {self.name} has no chat template, but one was required "
        "(chat_template=True)"
      )
    self.uses_chat_template = has_template if chat_template is None else bool(chat_template)
    self._stops = frozenset(self.stop_ids)

  @classmethod
  def from_folder(cls, path: str, *, chat_template: bool | None = None) -> HFTokenizer:
    """Loads the tokenizer saved in local folder `path` (never downloads, never runs its code).

    The folder holds `tokenizer.json` (and the `tokenizer_config.json` /
    `special_tokens_map.json` that `save_pretrained` writes); the ids listed as `eos_token_id`
    in its `generation_config.json`, if there is one, become extra stop ids.
    """
    folder = os.path.expanduser(str(path))
    if not os.path.isdir(folder):
      raise ValueError(f"model.tokenizer: {path!r} is not a folder (nor 'char')")
    if not os.path.isfile(os.path.join(folder, "tokenizer.json")):
      raise ValueError(
        f"model.tokenizer: the folder {path!r} has no tokenizer.json (save a fast tokenizer "
        "there with save_pretrained)"
      )
    try:
      import transformers
    except ImportError as e:
      raise ImportError(
        f'model.tokenizer={path!r} needs transformers: pip install -e ".[hf]"'
      ) from e
    # The generic fast tokenizer over tokenizer.json (the pipeline it defines, special tokens
    # and chat template from the folder's other files), not the class a model type names:
    # transformers 5 rebuilds e.g. Qwen2Tokenizer from the vocabulary when the folder's
    # config.json says qwen2, which drops a tokenizer.json of another model (tested).
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(
      folder, local_files_only=True, trust_remote_code=False
    )
    extra = _generation_config_eos_ids(os.path.join(folder, "generation_config.json"))
    return cls(tokenizer, extra_stop_ids=extra, chat_template=chat_template, name=repr(path))

  def encode_prompt(self, text: str) -> list[int]:
    """The ids of `text` as one user turn plus the generation prompt (with the chat template),
    or of `text` with the tokenizer's special tokens (BOS) otherwise."""
    if not self.uses_chat_template:
      return [int(i) for i in self.hf(text, add_special_tokens=True)["input_ids"]]
    out = self.hf.apply_chat_template(
      [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
    )
    # transformers 5 returns a BatchEncoding ({"input_ids", "attention_mask"}); 4.x a list.
    ids = out["input_ids"] if isinstance(out, Mapping) else out
    if len(ids) and isinstance(ids[0], (list, tuple, np.ndarray)):
      (ids,) = ids
    return [int(i) for i in ids]

  def encode(self, text: str, *, eos: bool = False) -> list[int]:
    """The ids of plain `text` (no special tokens), with EOS appended if `eos`."""
    ids = [int(i) for i in self.hf(text, add_special_tokens=False)["input_ids"]]
    return ids + ([self.eos_id] if eos else [])

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """The text of `ids` up to the first stop id; pad and special tokens dropped."""
    kept = []
    for i in np.asarray(ids).reshape(-1).tolist():
      if i in self._stops:
        break
      if i != self.pad_id:
        kept.append(i)
    return self.hf.decode(kept, skip_special_tokens=True)


def ids_containing(tokenizer, texts: Iterable[str]) -> tuple[int, ...]:
  """The ids whose own text (`tokenizer.decode([id])`) contains one of `texts`: the tokens that
  carry a delimiter such as a newline, whatever else they merge with. Special and stop ids
  decode to nothing and are never included."""
  texts = tuple(t for t in texts if t)
  if not texts:
    return ()
  vocab = int(tokenizer.vocab_size)
  hf = getattr(tokenizer, "hf", None)
  if hf is not None:  # one batched call instead of a Python loop over ~150k ids
    pieces = hf.batch_decode([[i] for i in range(vocab)], skip_special_tokens=True)
    stops = set(tokenizer.stop_ids) | {tokenizer.pad_id}
    pieces = ["" if i in stops else p for i, p in enumerate(pieces)]
  else:
    pieces = [tokenizer.decode([i]) for i in range(vocab)]
  return tuple(i for i, p in enumerate(pieces) if any(t in p for t in texts))


def _generation_config_eos_ids(path: str) -> list[int]:
  """The `eos_token_id` (an int or a list of ints) of the generation config at `path`, if any."""
  if not os.path.isfile(path):
    return []
  try:
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"model.tokenizer: cannot read {path}: {e}") from e
  eos = config.get("eos_token_id") if isinstance(config, dict) else None
  if eos is None:
    return []
  eos = [eos] if isinstance(eos, int) else eos
  if not isinstance(eos, list) or not all(isinstance(i, int) and i >= 0 for i in eos):
    raise ValueError(
      f"model.tokenizer: eos_token_id in {path} must be an id or a list of ids, not {eos!r}"
    )
  return eos


def load_tokenizer(
  spec: str, *, alphabet: str | None = None, chat_template: bool | None = None
) -> Tokenizer:
  """The tokenizer named by the config field `model.tokenizer`.

  `"char"` is a `CharTokenizer` over the task's `alphabet`; anything else is a local folder
  holding a Hugging Face tokenizer (`HFTokenizer.from_folder`, with `chat_template`).
  """
  if spec == "char":
    if alphabet is None:
      raise ValueError(
        "model.tokenizer=char: the task defines no alphabet; give a tokenizer folder"
      )
    return CharTokenizer(alphabet)
  return HFTokenizer.from_folder(spec, chat_template=chat_template)


def encode_left_padded(
  tokenizer: Tokenizer, texts: Sequence[str], length: int
) -> tuple[np.ndarray, np.ndarray]:
  """Prompts (`encode_prompt`) left-padded with `pad_id` to `length`.

  Returns (tokens int32[N, length], mask bool[N, length]), the mask True on prompt ids. Raises
  ValueError for a prompt longer than `length` (the bucket `sampling.max_prompt_tokens`).
  """
  tokens = np.full((len(texts), length), tokenizer.pad_id, np.int32)
  mask = np.zeros((len(texts), length), bool)
  for n, text in enumerate(texts):
    ids = tokenizer.encode_prompt(text)
    if len(ids) > length:
      start = text if len(text) <= 60 else text[:60] + "..."
      raise ValueError(
        f"prompt {start!r} has {len(ids)} tokens and does not fit the prompt bucket of "
        f"{length} (sampling.max_prompt_tokens)"
      )
    if ids:
      tokens[n, length - len(ids) :] = ids
      mask[n, length - len(ids) :] = True
  return tokens, mask


def encode_right_padded(
  tokenizer: Tokenizer, texts: Sequence[str], length: int, *, eos: bool = True
) -> tuple[np.ndarray, np.ndarray]:
  """Plain texts (`encode`, EOS appended if `eos`) truncated and right-padded to `length`.

  Returns (tokens int32[N, length], mask bool[N, length]), the mask True on text ids. These are
  the warm-start targets; a text longer than `length` loses its end (and its EOS).
  """
  tokens = np.full((len(texts), length), tokenizer.pad_id, np.int32)
  mask = np.zeros((len(texts), length), bool)
  for n, text in enumerate(texts):
    ids = tokenizer.encode(text, eos=eos)[:length]
    tokens[n, : len(ids)] = ids
    mask[n, : len(ids)] = True
  return tokens, mask
