"""Where a run's files live: a local folder, or a bucket (`gs://`, `s3://`) through
`etils.epath`, the path library Orbax itself uses. The one place that knows the difference.

Paths are strings throughout rl_jax; this module gives them the few file operations a workdir
needs. A local path behaves exactly as before (`open`, `os.replace`, `shutil`); a bucket path
goes through epath (fsspec: `gcsfs` for `gs://`, the `gcs` extra). Two things differ on a
bucket, and the callers here account for them:

- objects cannot be appended to: `append_text` rewrites the object, and the metrics writer
  writes its JSONL and TensorBoard files in a local `Staging` folder that it uploads whole
  (at each checkpoint, every `SYNC_SECONDS` and on close);
- a directory is only a name prefix: `move` copies then deletes, and `makedirs` may be a no-op.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile

import fsspec
from etils import epath

# gcsfs caches directory listings, but Orbax writes its arrays through TensorStore, behind
# gcsfs's back: a cached listing of checkpoints/ would miss the newest steps. Never cache them
# (unless the user configured gcsfs otherwise).
fsspec.config.conf.setdefault("gs", {}).setdefault("use_listings_cache", False)

SYNC_SECONDS = 60.0  # the most a bucket's copy of a staged file lags behind (besides checkpoints)


def is_remote(path: str | os.PathLike) -> bool:
  """Whether `path` is a URL (`gs://bucket/run`) rather than a local path."""
  return "://" in os.fspath(path)


_FILESYSTEMS = {"gs": "gcsfs", "s3": "s3fs"}  # URL scheme -> the fsspec package it needs


def unusable(path: str | os.PathLike) -> str | None:
  """Why `path` cannot hold a run here (an unknown scheme, a missing package), or None."""
  path = os.fspath(path)
  if not is_remote(path):
    return None
  scheme = path.split("://", 1)[0]
  package = _FILESYSTEMS.get(scheme)
  if package is None:
    return f"{scheme}:// is not supported (local paths, gs:// and s3:// are)"
  try:
    importlib.import_module(package)
  except ImportError:
    extra = "pip install 'rl_jax[gcs]'" if scheme == "gs" else f"pip install {package}"
    return f"{scheme}:// paths need the {package} package: {extra}"
  return None


def absolute(path: str | os.PathLike) -> str:
  """A local path made absolute; a URL as it is (without a trailing slash)."""
  path = os.fspath(path)
  return path.rstrip("/") if is_remote(path) else os.path.abspath(path)


def join(path: str, *names: str) -> str:
  if is_remote(path):
    return "/".join([path.rstrip("/"), *names])
  return os.path.join(path, *names)


def basename(path: str) -> str:
  return path.rstrip("/").rsplit("/", 1)[-1] if is_remote(path) else os.path.basename(path)


def exists(path: str) -> bool:
  if is_remote(path):
    return epath.Path(path).is_file() or isdir(path)
  return os.path.exists(path)


def isdir(path: str) -> bool:
  """Whether `path` is a directory (on a bucket: whether any object is named under it)."""
  return bool(listdir(path)) if is_remote(path) else os.path.isdir(path)


def listdir(path: str) -> list[str]:
  """The names in directory `path` (an empty list when there is none). On a bucket this is one
  listing of the prefix, the operation GCS answers consistently."""
  if not is_remote(path):
    return os.listdir(path) if os.path.isdir(path) else []
  try:
    return [p.name for p in epath.Path(path).iterdir()]
  except (FileNotFoundError, NotADirectoryError):
    return []


def makedirs(path: str) -> None:
  if is_remote(path):
    epath.Path(path).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


def rmtree(path: str) -> None:
  """Deletes directory `path` and everything in it; nothing when it does not exist."""
  if is_remote(path):
    if exists(path):
      epath.Path(path).rmtree()
  else:
    shutil.rmtree(path, ignore_errors=True)


def _files(path: str) -> list[tuple[str, str]]:
  """(relative name, full path) of every file under directory `path`."""
  out = []
  if is_remote(path):
    root = path.rstrip("/")
    bare = root.split("://", 1)[1]  # fsspec's walk may give the parents without the scheme
    for parent, _, files in epath.Path(root).walk():
      sub = os.fspath(parent).split("://", 1)[-1][len(bare) :].strip("/")
      for name in files:
        rel = f"{sub}/{name}" if sub else name
        out.append((rel.replace("/", os.sep), join(root, rel)))
  else:
    for parent, _, files in os.walk(path):
      for name in files:
        full = os.path.join(parent, name)
        out.append((os.path.relpath(full, path), full))
  return out


def move(src: str, dst: str) -> None:
  """Moves directory `src` to `dst` (on a bucket: copies every object, then deletes `src`)."""
  if not is_remote(src) and not is_remote(dst):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.move(src, dst)
    return
  for rel, full in _files(src):
    copy_file(full, join(dst, *rel.split(os.sep)))
  rmtree(src)


def size(path: str) -> int:
  """The bytes of every file under directory `path`."""
  if is_remote(path):
    return sum(epath.Path(full).stat().length for _, full in _files(path))
  return sum(os.path.getsize(full) for _, full in _files(path))


def read_text(path: str) -> str:
  if is_remote(path):
    return epath.Path(path).read_text()
  with open(path, encoding="utf-8") as f:
    return f.read()


def write_text(path: str, text: str) -> None:
  """Replaces the file with `text`: atomically (a temporary file, then a rename) when local,
  as one object write on a bucket (atomic there)."""
  if is_remote(path):
    epath.Path(path).write_text(text)
    return
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


def write_bytes(path: str, data: bytes) -> None:
  """Replaces the file with `data` (one object write on a bucket)."""
  if is_remote(path):
    epath.Path(path).write_bytes(data)
    return
  with open(path, "wb") as f:
    f.write(data)


def append_text(path: str, text: str) -> None:
  """Appends `text` (on a bucket by rewriting the object: for small, rarely written files)."""
  if is_remote(path):
    write_text(path, (read_text(path) if exists(path) else "") + text)
    return
  with open(path, "a", encoding="utf-8") as f:
    f.write(text)


def copy_file(src: str, dst: str) -> None:
  """Copies one file between any two places (local or bucket), replacing `dst`."""
  if not is_remote(src) and not is_remote(dst):
    shutil.copyfile(src, dst)
    return
  with epath.Path(src).open("rb") as fin, epath.Path(dst).open("wb") as fout:
    shutil.copyfileobj(fin, fout, 1 << 20)


class Staging:
  """A local folder that stands in for a bucket folder whose files are appended to (JSONL,
  TensorBoard events): work on `local`, then `push` uploads each file that changed since the
  last push, whole. For a local `remote` there is nothing to stage: `local` is the folder
  itself and `pull` / `push` do nothing."""

  def __init__(self, remote: str):
    self.remote = remote
    self.staged = is_remote(remote)
    self.local = tempfile.mkdtemp(prefix="rl_jax-staging-") if self.staged else remote
    self._pushed: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns) at its last push

  def pull(self, name: str) -> None:
    """Copies the bucket's `name` (when it exists) into the local folder."""
    if not self.staged or not exists(join(self.remote, name)):
      return
    dst = os.path.join(self.local, name)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    copy_file(join(self.remote, name), dst)
    self._pushed[name] = _signature(dst)

  def push(self) -> None:
    """Uploads every local file that is new or changed since the last push."""
    if not self.staged:
      return
    for rel, full in _files(self.local):
      signature = _signature(full)
      if self._pushed.get(rel) != signature:
        copy_file(full, join(self.remote, *rel.split(os.sep)))
        self._pushed[rel] = signature

  def close(self) -> None:
    """Pushes, then deletes the local folder."""
    if self.staged:
      self.push()
      shutil.rmtree(self.local, ignore_errors=True)


def _signature(path: str) -> tuple[int, int]:
  stat = os.stat(path)
  return stat.st_size, stat.st_mtime_ns
