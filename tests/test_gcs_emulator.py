"""What ftjax's `gs://` workdirs can rely on, checked against a local GCS emulator.

Each test is one thing the workdir code will need: epath file operations (a), appending (b),
Orbax checkpoints (c) and the TensorStore calls under them (d). Where the emulator (a stub that
says so) differs from real GCS, the test asserts the emulator's exact behaviour and says how
real GCS differs, so a change on either side shows up here.
"""

from __future__ import annotations

import json
import logging
import os
import types
import urllib.error
import urllib.parse
import urllib.request

import gcsfs.retry
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorstore as ts
from etils import epath

from ftjax.checkpoint import _manager
from gcs_emulator import gcs_bucket  # noqa: F401  (the fixture)


@pytest.fixture
def root(gcs_bucket, request):  # noqa: F811
  """A fresh prefix per test in the session's bucket."""
  return epath.Path(f"{gcs_bucket}/{request.node.name}")


def _http(method: str, path: str, data: bytes | None = None):
  """A raw JSON-API request to the emulator (what real GCS answers differently)."""
  request = urllib.request.Request(os.environ["STORAGE_EMULATOR_HOST"] + path, data=data,
                                   method=method)
  try:
    with urllib.request.urlopen(request, timeout=10) as r:
      return r.status, dict(r.headers), r.read()
  except urllib.error.HTTPError as e:
    return e.code, dict(e.headers), e.read()


# (a) epath on gs:// -----------------------------------------------------------------------------

def test_epath_file_operations(root):
  f = root / "run" / "config.json"
  f.write_text('{"seed": 0}')  # no mkdir needed: object stores have no directories
  assert f.read_text() == '{"seed": 0}' and f.exists() and not f.is_dir()
  assert (root / "run").exists() and (root / "run").is_dir()  # implied by the object below it
  assert f.stat().length == len('{"seed": 0}')
  (root / "run" / "metrics.jsonl").write_bytes(b"{}\n")
  assert sorted(p.name for p in (root / "run").iterdir()) == ["config.json", "metrics.jsonl"]
  assert [p.name for p in root.glob("run/*.json")] == ["config.json"]
  with pytest.raises(NotImplementedError, match="Recursive `\\*\\*` pattern not supported"):
    list(root.glob("**/*.json"))  # epath refuses `**` on gs://
  with pytest.raises(FileNotFoundError):
    (root / "missing.txt").read_text()
  with pytest.raises(FileNotFoundError):
    list((root / "missing").iterdir())
  # mkdir succeeds but leaves nothing behind: an empty directory does not exist on GCS.
  (root / "empty").mkdir(parents=True, exist_ok=True)
  assert not (root / "empty").exists()
  (root / "empty").mkdir()  # nor does a second mkdir see the first
  # A written file appears only when closed: a crash mid-write leaves the old object or none.
  with (root / "run" / "summary.json").open("w") as out:
    out.write("{")
    out.flush()
    assert not (root / "run" / "summary.json").exists()
    out.write("}")
  assert (root / "run" / "summary.json").read_text() == "{}"
  f.unlink()
  assert not f.exists()
  (root / "run").rmtree()
  assert not (root / "run").exists() and not root.exists()  # nothing left under the prefix


def test_epath_rename_falls_back_to_copy_and_delete(root, monkeypatch, caplog):
  # gcsfs renames with the JSON API's `moveTo`, which the emulator answers 501 (real GCS has it);
  # gcsfs retries 6 times with ~31 s of backoff, then copies and deletes. The backoff is cut to
  # zero here; the outcome is the same.
  sleep = types.SimpleNamespace(sleep=lambda seconds: _no_wait())
  monkeypatch.setattr(gcsfs.retry, "asyncio", sleep)
  src, dst = root / "tmp.json", root / "final.json"
  src.write_text("1")
  with caplog.at_level(logging.WARNING, logger="gcsfs"):
    src.rename(dst)
  assert dst.read_text() == "1" and not src.exists()
  assert "Failed to move file using moveTo API: , 501. Falling back to copy/delete." in caplog.text
  (root / "other.json").write_text("2")
  with pytest.raises(FileExistsError):  # epath's rename never overwrites...
    (root / "other.json").rename(dst)
  (root / "other.json").replace(dst)  # ...replace does
  assert dst.read_text() == "2" and not (root / "other.json").exists()


async def _no_wait():
  return None


# (b) appending ---------------------------------------------------------------------------------

def test_append_mode_silently_overwrites(root):
  # GCS objects cannot be appended to: gcsfs opens mode "a" as "w" with only a warning, so a
  # `metrics.jsonl` written with open("a") keeps only the last flush.
  log = root / "metrics.jsonl"
  log.write_text('{"step": 1}\n')
  with pytest.warns(UserWarning, match="Append mode 'a' is not supported in GCS. Using overwrite"):
    with log.open("a") as out:
      out.write('{"step": 2}\n')
  assert log.read_text() == '{"step": 2}\n'


def test_append_alternatives_rewrite_and_object_per_flush(root):
  # What works instead: rewrite the whole object on each flush, or one object per flush read
  # back in name order.
  log = root / "metrics.jsonl"
  for step in (1, 2, 3):
    previous = log.read_text() if log.exists() else ""
    log.write_text(previous + json.dumps({"step": step}) + "\n")
  assert [json.loads(l)["step"] for l in log.read_text().splitlines()] == [1, 2, 3]
  for step in (1, 2, 3):
    (root / "metrics" / f"{step:08d}.jsonl").write_text(json.dumps({"step": step}) + "\n")
  parts = sorted(root.glob("metrics/*.jsonl"))
  assert [json.loads(p.read_text())["step"] for p in parts] == [1, 2, 3]


# (c) Orbax -------------------------------------------------------------------------------------

def _tree(step: int) -> dict:
  return {"params": {"w": jnp.arange(8.0) * step, "b": jnp.full((2, 3), step, jnp.int32)},
          "step": jnp.asarray(step)}


def _abstract(tree: dict) -> dict:
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), tree)


def test_orbax_checkpoint_manager_saves_restores_and_prunes(root):
  # ftjax's own manager options: async saving, OCDBT arrays (TensorStore), a JSON item, max_to_keep.
  directory = root / "checkpoints"
  manager = _manager(directory, ("state", "data"), "test", max_to_keep=2)
  for step in (1, 2, 3):
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_tree(step)),
                                               data=ocp.args.JsonSave({"next_batch": step * 8})))
  manager.wait_until_finished()
  assert manager.all_steps() == [2, 3] and manager.latest_step() == 3
  assert sorted(p.name for p in directory.iterdir()) == ["2", "3"]  # step 1 deleted
  assert (directory / "3" / "commit_success.txt").exists()  # GCS commits by marker, not rename
  manager.close()
  # A new manager (a resumed run) sees the same steps and restores step 3 exactly.
  again = _manager(directory, ("state", "data"), "test", max_to_keep=2)
  assert again.all_steps() == [2, 3] and again.latest_step() == 3
  # The saved tree's metadata (ftjax reads it to convert layer layouts) comes back too.
  saved = again.item_metadata(3)["state"]
  assert jax.tree.map(lambda m: tuple(m.shape), saved.tree) == {
      "params": {"w": (8,), "b": (2, 3)}, "step": ()}
  restored = again.restore(3, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(_abstract(_tree(3))), data=ocp.args.JsonRestore()))
  jax.tree.map(np.testing.assert_array_equal, restored["state"], _tree(3))
  assert restored["data"] == {"next_batch": 24}
  again.close()


def test_orbax_ignores_and_cleans_a_save_killed_midway(root):
  # On gs:// Orbax marks a finished step with commit_success.txt (no rename); a process killed
  # mid-save leaves the step's objects without it. The next manager ignores and deletes them,
  # so a resumed run restores the previous step and can save that step again.
  directory = root / "checkpoints"
  manager = _manager(directory, ("state", "data"), "test", max_to_keep=2)
  manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(_tree(1)),
                                          data=ocp.args.JsonSave({})))
  manager.close()
  (directory / "2" / "_CHECKPOINT_METADATA").write_text("{}")
  (directory / "2" / "state" / "_METADATA").write_text("{}")
  resumed = _manager(directory, ("state", "data"), "test", max_to_keep=2)
  assert resumed.all_steps() == [1] and [p.name for p in directory.iterdir()] == ["1"]
  resumed.save(2, args=ocp.args.Composite(state=ocp.args.StandardSave(_tree(2)),
                                          data=ocp.args.JsonSave({})))
  resumed.wait_until_finished()
  assert resumed.all_steps() == [1, 2] and (directory / "2" / "commit_success.txt").exists()
  resumed.close()


def test_orbax_restore_without_shardings_works(root):
  # Restoring without target shardings (a plain `PyTreeCheckpointer().restore(path)`) makes
  # Orbax read the saved `_sharding` file through TensorStore, which re-reads it conditionally on
  # the generation of its first read: it needs the generation headers (see (d)).
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(root / "one", _tree(1))
  checkpointer.wait_until_finished()
  restored = ocp.PyTreeCheckpointer().restore(root / "one")
  jax.tree.map(np.testing.assert_array_equal, restored, jax.tree.map(np.asarray, _tree(1)))


# (d) TensorStore and the emulator's JSON API ---------------------------------------------------

def _object_path(path: epath.Path) -> tuple[str, str]:
  bucket, _, name = str(path).removeprefix("gs://").partition("/")
  return bucket, urllib.parse.quote(name, safe="")


def test_downloads_carry_the_generation_header(root):
  # Real GCS sends `x-goog-generation` with every object download; TensorStore takes an object's
  # generation from it. The emulator itself sends it only in the JSON metadata; the fixture's
  # launcher (`gcs_emulator.__main__`) adds the headers.
  (root / "a.bin").write_bytes(b"abc")
  bucket, name = _object_path(root / "a.bin")
  status, headers, body = _http("GET", f"/download/storage/v1/b/{bucket}/o/{name}?alt=media")
  assert status == 200 and body == b"abc"
  _, _, metadata = _http("GET", f"/storage/v1/b/{bucket}/o/{name}")
  generation = json.loads(metadata)["generation"]
  assert int(generation) > 0
  assert {k.lower(): v for k, v in headers.items()}["x-goog-generation"] == generation


def test_emulator_ignores_generation_preconditions(root):
  # `ifGenerationMatch=0` means "only if absent": real GCS answers 412 for an existing object.
  # The emulator writes anyway, so create-once and compare-and-swap are not tested by it.
  (root / "lock").write_bytes(b"first")
  bucket, name = _object_path(root / "lock")
  status, _, _ = _http("POST", f"/upload/storage/v1/b/{bucket}/o?uploadType=media&name={name}"
                       "&ifGenerationMatch=0", data=b"second")
  assert status == 200 and (root / "lock").read_bytes() == b"second"


def test_tensorstore_plain_reads_and_writes_work(root):
  array = ts.open({"driver": "zarr3", "kvstore": str(root / "array")}, create=True,
                  dtype=ts.float32, shape=[4, 4]).result()
  array.write(np.arange(16, dtype=np.float32).reshape(4, 4)).result()
  reopened = ts.open({"driver": "zarr3", "kvstore": str(root / "array")}).result()
  np.testing.assert_array_equal(reopened.read().result(), np.arange(16).reshape(4, 4))


def test_tensorstore_conditional_operations_work(root):
  # TensorStore records the generation it read and sends it as the condition of the next read or
  # write; with generation 0 (no header) each of these failed with `Malformed StorageGeneration`.
  kv = ts.KvStore.open(str(root / "kv") + "/").result()
  kv.write("key", b"v1").result()
  read = kv.read("key").result()
  assert read.value == b"v1" and read.stamp.generation != b"\x00" * 9
  # The emulator ignores the condition (see below) and sends the value; real GCS answers 304.
  assert kv.read("key", if_not_equal=read.stamp.generation).result().value == b"v1"
  kv.write("key", b"v2", if_equal=read.stamp.generation).result()
  assert kv.read("key").result().value == b"v2"
  # OCDBT (Orbax's array format) updates its manifest conditionally, several times per save of a
  # tree with many arrays: a second write to one database must work.
  db = ts.KvStore.open({"driver": "ocdbt", "base": str(root / "ocdbt") + "/"}).result()
  db.write("a", b"1").result()
  db.write("b", b"2").result()
  assert db.read("a").result().value == b"1" and db.read("b").result().value == b"2"
