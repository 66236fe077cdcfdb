"""A task read from a prepared TFDS dataset in a local data directory, scored by the math-answer
verifier: the same rows-to-examples behaviour as `JsonlTask` (`rl_jax.tasks.jsonl.RowsTask`).

The dataset must already be prepared in `data_dir` (nothing is downloaded) in the array_record
file format, which `tfds.data_source` reads by random access without TensorFlow; prepare it
with `builder.download_and_prepare(file_format="array_record")` (or `tfds build
--file_format=array_record`). Both splits are read once, here, in record order. Byte strings
(TFDS `Text` features) are decoded as UTF-8, numpy scalars become Python numbers, so a row is
the same dict a JSON line with the same fields gives.

`tensorflow_datasets` and `array_record` are imported only when a `TfdsTask` is built
(`pip install tensorflow-datasets array_record`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from rl_jax.tasks.jsonl import Row, RowsTask

_READ_CHUNK = 1024  # records read per batched lookup


def _import_tfds():
  try:
    import tensorflow_datasets as tfds
    from array_record.python import array_record_data_source  # noqa: F401 (checked here)
  except ImportError as e:
    raise ImportError(
      f"TfdsTask needs tensorflow-datasets and array_record ({e}); install them with "
      f"`pip install tensorflow-datasets array_record`"
    ) from e
  return tfds


def _plain(value: Any, where: str) -> Any:
  """`value` of a TFDS record with bytes decoded as UTF-8 and numpy scalars as Python ones."""
  if isinstance(value, bytes):
    try:
      return value.decode("utf-8")
    except UnicodeDecodeError as e:
      raise ValueError(f"task.dataset: {where} has a byte string that is not UTF-8: {e}") from e
  if isinstance(value, np.generic):
    return _plain(value.item(), where)
  if isinstance(value, np.ndarray) and value.dtype.kind in "OS":
    return [_plain(v, where) for v in value.tolist()]
  if isinstance(value, dict):
    return {k: _plain(v, where) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [_plain(v, where) for v in value]
  return value


class TfdsTask(RowsTask):
  """Prompts and reference answers from the `split` and `heldout_split` of the prepared TFDS
  dataset `dataset` (e.g. "gsm8k", "my_set:1.0.0", or a split slice like "train[:90%]") in
  `data_dir`; `heldout_split=None` holds out a hash split of `split` at `heldout_fraction`
  instead. Scored by the math-answer verifier."""

  def __init__(
    self,
    dataset: str,
    data_dir: str,
    split: str = "train",
    heldout_split: str | None = "test",
    prompt_field: str = "question",
    answer_field: str = "answer",
    prompt_template: str = "{prompt}",
    name: str = "tfds",
    heldout_fraction: float = 0.05,
  ):
    tfds = _import_tfds()
    self.dataset, self.data_dir = dataset, data_dir
    self.split, self.heldout_split = split, heldout_split
    data_dir = os.path.expanduser(data_dir)
    if not os.path.isdir(data_dir):
      raise ValueError(f"task.data_dir={data_dir!r} is not a directory")
    base = dataset.split("/", 1)[0].split(":", 1)[0]
    if not base or not os.path.isdir(os.path.join(data_dir, base)):
      there = sorted(
        d
        for d in os.listdir(data_dir)
        if d != "downloads" and os.path.isdir(os.path.join(data_dir, d))
      )
      raise ValueError(
        f"task.dataset={dataset!r} is not prepared in task.data_dir={data_dir!r} (nothing is "
        f"downloaded; folders there: {there})"
      )
    rows = self._read(tfds, split, "task.split")
    heldout = (
      None if heldout_split is None else self._read(tfds, heldout_split, "task.heldout_split")
    )
    source = f"task.dataset={dataset!r} task.split={split!r}"
    super().__init__(
      rows,
      heldout,
      source=source,
      heldout_source=None if heldout_split is None else f"task.heldout_split={heldout_split!r}",
      heldout_option="task.heldout_split",
      prompt_field=prompt_field,
      answer_field=answer_field,
      heldout_fraction=heldout_fraction,
      prompt_template=prompt_template,
      name=name,
    )

  def _read(self, tfds, split: str, config_field: str) -> list[Row]:
    """The records of `split` as (where, plain row dict) pairs, in record order."""
    data_dir = os.path.expanduser(self.data_dir)
    here = f"task.dataset={self.dataset!r} in task.data_dir={data_dir!r}"
    try:
      source = tfds.data_source(self.dataset, split=split, data_dir=data_dir, download=False)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise ValueError(f"{here} was not found: {str(e).splitlines()[0]}") from e
    except NotImplementedError as e:  # prepared as tfrecord (or another sequential format)
      raise ValueError(
        f"{here} cannot be read by random access: prepare it with "
        f'file_format="array_record" ({str(e).splitlines()[0]})'
      ) from e
    except ValueError as e:  # an unknown split or a bad slice
      raise ValueError(f"{config_field}={split!r} of {here}: {e}") from e
    except (AssertionError, OSError) as e:
      raise ValueError(f"{here} could not be read: {e}") from e
    rows = []
    for start in range(0, len(source), _READ_CHUNK):
      keys = list(range(start, min(start + _READ_CHUNK, len(source))))
      for key, record in zip(keys, source.__getitems__(keys)):
        where = f"record {key} of split {split!r} of task.dataset={self.dataset!r}"
        if not isinstance(record, dict):
          raise ValueError(f"{where} is a {type(record).__name__}, not a dict of named fields")
        rows.append((where, _plain(record, where)))
    return rows
