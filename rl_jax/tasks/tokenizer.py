"""A character-level tokenizer with special tokens, for the embedded tasks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"


class CharTokenizer:
  """Maps each character of a fixed alphabet to one id; ids 0-2 are pad, bos, eos.

  >>> tok = CharTokenizer("0123456789+=")
  >>> tok.decode(tok.encode("12+3="))
  '12+3='
  """

  def __init__(self, alphabet: str):
    if len(set(alphabet)) != len(alphabet):
      raise ValueError(f"alphabet has repeated characters: {alphabet!r}")
    self.specials = (PAD, BOS, EOS)
    self.pad_id, self.bos_id, self.eos_id = 0, 1, 2
    self.alphabet = alphabet
    self._to_id = {c: i + len(self.specials) for i, c in enumerate(alphabet)}
    self._to_char = {i: c for c, i in self._to_id.items()}

  @property
  def vocab_size(self) -> int:
    return len(self.specials) + len(self.alphabet)

  def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
    try:
      ids = [self._to_id[c] for c in text]
    except KeyError as e:
      raise ValueError(
        f"character {e.args[0]!r} is not in the tokenizer alphabet {self.alphabet!r}"
      ) from None
    return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

  def decode(self, ids: Sequence[int], *, stop_at_eos: bool = True) -> str:
    out = []
    for i in np.asarray(ids).tolist():
      if i == self.eos_id and stop_at_eos:
        break
      if i in self._to_char:
        out.append(self._to_char[i])
    return "".join(out)

  def batch_encode_left_padded(self, texts: Sequence[str], length: int, *, bos: bool = True):
    """Left-pads encoded texts to `length`.

    Returns (tokens int32[N, length], mask bool[N, length]).
    """
    tokens = np.full((len(texts), length), self.pad_id, np.int32)
    mask = np.zeros((len(texts), length), bool)
    for n, t in enumerate(texts):
      ids = self.encode(t, bos=bos)
      if len(ids) > length:
        raise ValueError(f"prompt of {len(ids)} tokens does not fit the bucket of {length}: {t!r}")
      tokens[n, length - len(ids) :] = ids
      mask[n, length - len(ids) :] = True
    return tokens, mask
