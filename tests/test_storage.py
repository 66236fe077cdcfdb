"""Bucket workdirs: `gs://` paths end to end, against a local GCS server (gcp-storage-emulator:
the JSON API that gcsfs speaks, and the XML / JSON API TensorStore's gcs driver speaks under
Orbax), so the run's files and Orbax's checkpoints really travel as objects. A 3-step run in a
bucket, resumed to 6, matches the same run in a local folder."""

import io
import json
import logging
import os
import socket

import numpy as np
import pytest

from rl_jax import storage

pytest.importorskip("gcsfs", reason="gs:// workdirs need gcsfs: pip install -e '.[test]'")
emulator = pytest.importorskip(
  "gcp_storage_emulator.server", reason="needs gcp-storage-emulator: pip install -e '.[test]'"
)

BUCKET = "rl-jax-test"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _send_generation_headers():
  """The emulator's downloads lack GCS's `x-goog-generation` header, from which TensorStore
  reads the version of what it read (OCDBT rewrites its manifest on the condition that it is
  still that version): send it, as GCS does."""
  from gcp_storage_emulator.handlers import objects

  if getattr(objects.download, "sends_generation", False):
    return
  download = objects.download

  def with_generation(request, response, storage, *args, **kwargs):
    result = download(request, response, storage, *args, **kwargs)
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
    except Exception:  # noqa: BLE001 - a missing object: its 404 needs no header
      pass
    return result

  with_generation.sends_generation = True
  objects.download = with_generation


@pytest.fixture(scope="module")
def bucket():
  """`gs://rl-jax-test`, served from memory on 127.0.0.1 for this module's tests."""
  import fsspec

  logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
  _send_generation_headers()
  port = _free_port()
  server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
  server.start()
  url = f"http://127.0.0.1:{port}"
  env = dict(
    STORAGE_EMULATOR_HOST=url,  # gcsfs (epath's gs:// backend)
    TENSORSTORE_GCS_HTTP_URL=url,  # TensorStore, which writes Orbax's arrays
    GOOGLE_AUTH_TOKEN_FOR_TESTING="test",  # TensorStore: no credential lookup
  )
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  fsspec.AbstractFileSystem.clear_instance_cache()
  yield f"gs://{BUCKET}"
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v
  fsspec.AbstractFileSystem.clear_instance_cache()
  server.stop()


def test_paths_local_and_remote():
  assert storage.is_remote("gs://b/run") and not storage.is_remote("/tmp/run")
  assert storage.join("gs://b/run/", "checkpoints", "3") == "gs://b/run/checkpoints/3"
  assert storage.join("/tmp/run", "x") == os.path.join("/tmp/run", "x")
  assert storage.absolute("gs://b/run/") == "gs://b/run"
  assert storage.absolute("run") == os.path.abspath("run")
  assert storage.basename("gs://b/run/") == "run"
  assert storage.unusable("/tmp/run") is None
  assert "not supported" in storage.unusable("ftp://host/run")


def test_file_operations_on_a_bucket(bucket, tmp_path):
  root = storage.join(bucket, "ops")
  storage.write_text(storage.join(root, "a", "x.txt"), "hello")
  storage.append_text(storage.join(root, "a", "log.jsonl"), "1\n")
  storage.append_text(storage.join(root, "a", "log.jsonl"), "2\n")
  assert storage.read_text(storage.join(root, "a", "log.jsonl")) == "1\n2\n"
  assert storage.isdir(storage.join(root, "a")) and not storage.isdir(storage.join(root, "b"))
  assert sorted(storage.listdir(storage.join(root, "a"))) == ["log.jsonl", "x.txt"]
  assert storage.listdir(storage.join(root, "missing")) == []
  assert storage.size(root) == len("hello") + len("1\n2\n")
  storage.move(storage.join(root, "a"), storage.join(root, "moved", "a"))
  assert not storage.exists(storage.join(root, "a", "x.txt"))
  assert storage.read_text(storage.join(root, "moved", "a", "x.txt")) == "hello"
  storage.rmtree(storage.join(root, "moved"))
  assert not storage.exists(storage.join(root, "moved", "a", "x.txt"))
  storage.rmtree(storage.join(root, "never-there"))  # a no-op, as locally


def test_staging_uploads_only_what_changed(bucket, monkeypatch):
  remote = storage.join(bucket, "staging")
  storage.write_text(storage.join(remote, "m.jsonl"), "old\n")
  staging = storage.Staging(remote)
  staging.pull("m.jsonl")
  with open(os.path.join(staging.local, "m.jsonl"), "a") as f:
    f.write("new\n")
  uploads = []
  copy = storage.copy_file
  monkeypatch.setattr(storage, "copy_file", lambda a, b: (uploads.append(b), copy(a, b)))
  staging.push()
  staging.push()  # nothing changed since: nothing uploaded
  assert uploads == [storage.join(remote, "m.jsonl")]
  staging.close()
  assert storage.read_text(storage.join(remote, "m.jsonl")) == "old\nnew\n"
  assert not os.path.exists(staging.local)
  local = storage.Staging("/tmp/some/run")
  assert not local.staged and local.local == "/tmp/some/run"


def _run(config, workdir):
  from rl_jax import loop

  return loop.run(config, workdir, log=lambda msg: None, stream=io.StringIO())


def test_a_run_in_a_bucket_resumes_and_matches_a_local_run(bucket, tmp_path, monkeypatch):
  """The loop, its checkpoints (Orbax through TensorStore's gcs driver), metrics, TensorBoard
  events, config, summary and plot in `gs://`; stopped after 3 steps and resumed to 6, it gives
  the numbers of the same 6 steps in a local folder. Nothing is written to a local `gs:` path."""
  from tests_support import make_small_config

  from rl_jax import checkpoint, loop
  from rl_jax.metrics import read_jsonl

  monkeypatch.chdir(tmp_path)
  local, remote = str(tmp_path / "local"), storage.join(bucket, "runs", "small")
  _run(make_small_config(), local)
  _run(make_small_config(**{"train.steps": 3}), remote)
  assert [r["step"] for r in read_jsonl(storage.join(remote, "metrics.jsonl"))] == [1, 2, 3]
  summary = _run(make_small_config(), remote)
  assert not os.path.exists(tmp_path / "gs:")

  names = set(storage.listdir(remote))
  for name in ("metrics.jsonl", "eval.jsonl", "config.json", "config_history.jsonl"):
    assert name in names, name
  for name in ("summary.json", "reward.png", "checkpoints", "reference", "tensorboard"):
    assert name in names, name
  history = storage.read_text(storage.join(remote, "config_history.jsonl")).splitlines()
  assert json.loads(history[-1])["changed"] == {"train.steps": [3, 6]}
  assert summary["after"]["step"] == 6
  with storage.epath.Path(storage.join(remote, "reward.png")).open("rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"

  mine = read_jsonl(storage.join(remote, "metrics.jsonl"))
  theirs = read_jsonl(os.path.join(local, "metrics.jsonl"))
  assert [r["step"] for r in mine] == [1, 2, 3, 4, 5, 6]
  for a, b in zip(theirs, mine):
    for key in ("reward_mean", "loss", "kl", "grad_norm"):
      np.testing.assert_allclose(b[key], a[key], rtol=1e-6, atol=1e-9, err_msg=f"{a['step']}")
  evals = read_jsonl(storage.join(remote, "eval.jsonl"))
  assert [e["step"] for e in evals] == [0, 3, 6]
  assert evals[-1] == read_jsonl(os.path.join(local, "eval.jsonl"))[-1]

  rows = checkpoint.describe(remote, log=lambda m: None)
  assert [(r["step"], r["state"]) for r in rows] == [
    (3, "complete"),
    (4, "complete"),
    (6, "complete"),
  ]
  ckpt = checkpoint.Checkpointer(remote)
  assert ckpt.latest_step() == 6
  ckpt.close()
  result = loop.evaluate_workdir(remote, log=lambda m: None)
  assert result["accuracy"] == evals[-1]["accuracy"]


def test_a_corrupt_checkpoint_in_a_bucket_is_moved_aside(bucket):
  """The move to corrupt/ (copy, then delete: a bucket has no rename) and the resume from the
  newest readable step."""
  import jax
  import jax.numpy as jnp

  from rl_jax import checkpoint

  root = storage.join(bucket, "corrupt-case")
  ckpt = checkpoint.Checkpointer(root, async_save=False)
  state = dict(w=jnp.arange(4.0))
  key = jax.random.key(0)
  for step in (1, 2):
    ckpt.save(step, jax.tree.map(lambda x, s=step: x * s, state), key, dict(step=step))
  ckpt.wait()
  step_dir = storage.join(root, "checkpoints", "2", "state")
  for rel, full in storage._files(step_dir):
    if rel.endswith("manifest.ocdbt") or "d/" in rel:
      storage.write_bytes(full, b"garbage")
  messages = []
  restored, _, meta, step = ckpt.restore_newest(state, key, messages.append)
  assert step == 1 and meta["step"] == 1
  np.testing.assert_array_equal(np.asarray(restored["w"]), np.arange(4.0))
  assert any("moved to" in m for m in messages), messages
  assert storage.listdir(storage.join(root, "corrupt"))
  assert "2" not in storage.listdir(storage.join(root, "checkpoints"))
  ckpt.close()


def test_cli_names_the_missing_package(monkeypatch, capsys):
  from rl_jax import cli

  def import_module(name):
    raise ImportError(f"No module named {name!r}")

  monkeypatch.setattr(storage.importlib, "import_module", import_module)
  assert cli.main(["checkpoints", "--workdir=gs://b/run"]) == 2
  err = capsys.readouterr().err
  assert "gs:// paths need the gcsfs package" in err and "rl_jax[gcs]" in err, err
