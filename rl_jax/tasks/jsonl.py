"""Tasks read from a dataset of rows (a JSONL file here; TFDS in `tfds_source`), scored by the
math-answer verifier (`rl_jax.tasks.math_answer`).

A row is a dict of named fields. Its prompt is `prompt_template.format(prompt=row[prompt_field])`
and its reference answer `str(row[answer_field])` (a whole solution ending in `#### 42`, a boxed
answer, or just `42`); the whole row is the example's `meta`, so its other fields reach other
rewards. Both fields must be strings or numbers.

Held-out split: the rows of a separate held-out source when one is given (training rows whose
prompt text is also a held-out prompt are dropped); otherwise a fixed hash of each row's prompt
text (the field's text, before the template: sha256 of its UTF-8 bytes, the first 8 bytes as a
big-endian integer, held out when below `heldout_fraction * 2**64`), so the split depends on
neither a seed nor the order of the rows, and every copy of a held-out prompt is held out.

Training draws `n` rows uniformly with replacement (`rng.integers`), a deterministic function
of the generator's state; `heldout_examples(n)` is the first `n` held-out rows in source order.
"""

from __future__ import annotations

import hashlib
import json
import os
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from rl_jax.tasks.base import Example, max_lengths_of
from rl_jax.tasks.math_answer import score_math

Row = tuple[str, Mapping[str, Any]]  # (where the row comes from, for messages; the row)


def is_heldout_prompt(prompt: str, heldout_fraction: float) -> bool:
  """Whether the hash split holds out a row with prompt text `prompt` (see module docstring)."""
  digest = hashlib.sha256(prompt.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") < heldout_fraction * 2**64


def _check_template(template: str) -> None:
  try:
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    template.format(prompt="")
  except (ValueError, KeyError, IndexError, AttributeError) as e:
    raise ValueError(f"task.prompt_template={template!r} is not a valid template: {e}") from e
  if any(f != "prompt" for f in fields):
    raise ValueError(
      f"task.prompt_template={template!r} may only use the field {{prompt}}, got "
      f"{sorted(set(fields) - {'prompt'})}"
    )


def _field_text(row: Mapping[str, Any], field: str, config_field: str, where: str) -> str:
  if field not in row:
    raise ValueError(
      f"{config_field}={field!r}: {where} has no field {field!r} (its fields: {sorted(row)})"
    )
  value = row[field]
  if isinstance(value, bool) or not isinstance(value, str | int | float):
    raise ValueError(
      f"{config_field}={field!r}: {where}: field {field!r} is a {type(value).__name__}, not a "
      f"string or number"
    )
  return value if isinstance(value, str) else str(value)


class RowsTask:
  """The Task protocol over fixed lists of rows, scored by `score_math`; `JsonlTask` and
  `TfdsTask` read their rows and hand them here.

  `rows` / `heldout_rows` are `(where, row)` pairs in source order (`where` names the row in
  error messages, e.g. "line 3 of data.jsonl"); `source` / `heldout_source` name where they
  came from in the config's terms (e.g. "task.path='data.jsonl'"). `heldout_rows=None` splits
  `rows` by the prompt hash at `heldout_fraction`; `heldout_option` is the config field that
  would give a held-out source instead (named in the error when the hash split is empty).
  """

  def __init__(
    self,
    rows: Iterable[Row],
    heldout_rows: Iterable[Row] | None,
    *,
    source: str,
    heldout_source: str | None = None,
    heldout_option: str = "a held-out split",
    prompt_field: str = "question",
    answer_field: str = "answer",
    heldout_fraction: float = 0.05,
    prompt_template: str = "{prompt}",
    name: str = "rows",
  ):
    _check_template(prompt_template)
    self.name = name
    self.prompt_field, self.answer_field = prompt_field, answer_field
    self.prompt_template, self.heldout_fraction = prompt_template, heldout_fraction
    keyed = self._examples(rows)
    if not keyed:
      raise ValueError(f"{source} has no rows")
    if heldout_rows is None:
      if not 0 < heldout_fraction < 1:
        raise ValueError(f"task.heldout_fraction must be in (0, 1), got {heldout_fraction}")
      held = [is_heldout_prompt(key, heldout_fraction) for key, _ in keyed]
      train = [ex for (_, ex), h in zip(keyed, held) if not h]
      heldout = [ex for (_, ex), h in zip(keyed, held) if h]
      if not heldout:
        raise ValueError(
          f"{source}: none of its {len(keyed)} rows falls in the held-out split at "
          f"task.heldout_fraction={heldout_fraction}; raise task.heldout_fraction or give "
          f"{heldout_option}"
        )
      if not train:
        raise ValueError(
          f"{source}: all of its {len(keyed)} rows fall in the held-out split at "
          f"task.heldout_fraction={heldout_fraction}; lower task.heldout_fraction"
        )
    else:
      keyed_heldout = self._examples(heldout_rows)
      if not keyed_heldout:
        raise ValueError(f"{heldout_source} has no rows")
      heldout_keys = {key for key, _ in keyed_heldout}
      train = [ex for key, ex in keyed if key not in heldout_keys]
      heldout = [ex for _, ex in keyed_heldout]
      if not train:
        raise ValueError(
          f"{source}: every one of its {len(keyed)} rows has a prompt of the held-out split "
          f"({heldout_source}), so none is left for training"
        )
    self._train: list[Example] = train
    self._heldout: list[Example] = heldout

  def _examples(self, rows: Iterable[Row]) -> list[tuple[str, Example]]:
    """(prompt text, Example) of each row, checking the fields."""
    out = []
    for where, row in rows:
      prompt = _field_text(row, self.prompt_field, "task.prompt_field", where)
      answer = _field_text(row, self.answer_field, "task.answer_field", where)
      example = Example(self.prompt_template.format(prompt=prompt), answer, meta=row)
      out.append((prompt, example))
    return out

  @property
  def num_train(self) -> int:
    """Rows of the training split."""
    return len(self._train)

  @property
  def num_heldout(self) -> int:
    """Rows of the held-out split."""
    return len(self._heldout)

  def train_examples(self, rng: np.random.Generator, n: int) -> list[Example]:
    """`n` training rows drawn uniformly with replacement with `rng`."""
    return [self._train[i] for i in rng.integers(0, len(self._train), n)]

  def heldout_examples(self, n: int) -> list[Example]:
    """The first `n` held-out rows in source order (all of them if there are fewer)."""
    return self._heldout[:n]

  def score(self, examples: Sequence[Example], completions: Sequence[str]) -> dict:
    """The math verifier (`score_math`): `reward`, `correct`, `answered`."""
    return score_math(examples, completions)

  def max_lengths(self, tokenizer) -> tuple[int, int]:
    """The longest prompt and answer in `tokenizer`'s tokens over both splits."""
    return max_lengths_of(tokenizer, self._train + self._heldout, task=self)

  def alphabet(self) -> str:
    """Every character of the prompts (after the template) and answers of both splits."""
    chars = set()
    for ex in self._train + self._heldout:
      chars.update(ex.prompt)
      chars.update(ex.answer)
    return "".join(sorted(chars))


def read_jsonl(path: str, config_field: str) -> list[Row]:
  """The rows of a JSON-lines file (one JSON object a line; blank lines skipped), each with
  its place ("line N of PATH"). Errors name `config_field` (e.g. "task.path")."""
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    what = "is a directory, not a file" if os.path.isdir(path) else "does not exist"
    raise ValueError(f"{config_field}={path!r} {what}")
  rows = []
  with open(path, "rb") as f:
    for number, raw in enumerate(f, 1):
      where = f"line {number} of {path}"
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(f"{config_field}: {where} is not UTF-8: {e}") from e
      if number == 1:
        line = line.removeprefix("\ufeff")  # a byte-order mark
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{config_field}: {where} is not valid JSON: {e}") from e
      if not isinstance(row, dict):
        raise ValueError(f"{config_field}: {where} is a JSON {type(row).__name__}, not an object")
      rows.append((where, row))
  return rows


class JsonlTask(RowsTask):
  """Prompts and reference answers from a JSON-lines file (`task.path`), with a held-out file
  (`task.heldout_path`) or a hash split of `task.path` (`task.heldout_fraction`); scored by the
  math-answer verifier. The file(s) are read once, here."""

  def __init__(
    self,
    path: str,
    heldout_path: str | None = None,
    prompt_field: str = "question",
    answer_field: str = "answer",
    heldout_fraction: float = 0.05,
    prompt_template: str = "{prompt}",
    name: str = "jsonl",
  ):
    self.path, self.heldout_path = path, heldout_path
    rows = read_jsonl(path, "task.path")
    heldout = None if heldout_path is None else read_jsonl(heldout_path, "task.heldout_path")
    super().__init__(
      rows,
      heldout,
      source=f"task.path={path!r}",
      heldout_source=None if heldout_path is None else f"task.heldout_path={heldout_path!r}",
      heldout_option="task.heldout_path",
      prompt_field=prompt_field,
      answer_field=answer_field,
      heldout_fraction=heldout_fraction,
      prompt_template=prompt_template,
      name=name,
    )
