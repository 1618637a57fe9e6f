"""A local GCS emulator for tests: `gs://` paths without a cloud account or a network.

`gcs_bucket` starts `gcp-storage-emulator` (in-memory) as a subprocess on 127.0.0.1, with one
bucket, and points every client ftjax uses at it through the environment, so subprocesses
(`python -m ftjax.main`) inherit the same setup:

  gcsfs (etils.epath's `gs://` backend without TensorFlow), google-cloud-storage:
    STORAGE_EMULATOR_HOST, and `token="anon"` (FSSPEC_GCS_TOKEN) so google-auth never looks
    for credentials;
  TensorStore (Orbax's arrays): TENSORSTORE_GCS_HTTP_URL and GOOGLE_AUTH_TOKEN_FOR_TESTING;
  GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false: gcsfs's default filesystem asks a gRPC Storage
    Control API for the bucket's layout first; the emulator has none, and each lookup then
    spends ~60 s retrying before falling back to the plain filesystem this selects.

The emulator runs through this file's `__main__`, which adds what real GCS sends with every media
download and the emulator leaves out: the object's generation headers. Without them TensorStore
records generation 0 for what it read and fails its next conditional write of that object
(`Malformed StorageGeneration`), e.g. a second commit to one OCDBT manifest within a checkpoint.

Nothing may reach a real endpoint: credentials files are hidden, and the GCE metadata server
(google-auth's last resort) is pointed at a closed loopback port.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request

import fsspec
import gcsfs.core
import pytest
from etils.epath import backend as epath_backend

BUCKET = "ftjax-test"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log_path, timeout: float = 30.0) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      raise RuntimeError(f"GCS emulator exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}")
    with contextlib.suppress(OSError):
      with urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}", timeout=1) as r:
        if r.status == 200:
          return
    time.sleep(0.1)
  raise RuntimeError(f"GCS emulator not up after {timeout}s:\n{log_path.read_text()[-2000:]}")


def emulator_env(url: str, home) -> dict[str, str]:
  """The variables that send gcsfs, google-cloud-storage and TensorStore to `url`, and only there."""
  return {
      "STORAGE_EMULATOR_HOST": url,
      "FSSPEC_GCS_TOKEN": "anon",
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
      "TENSORSTORE_GCS_HTTP_URL": url,
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
      # google-auth's fallbacks: no gcloud config, no metadata server.
      "CLOUDSDK_CONFIG": str(home),
      "NO_GCE_CHECK": "true",
      "GCE_METADATA_HOST": "127.0.0.1:1",
      "GCE_METADATA_IP": "127.0.0.1:1",
      "EPATH_USE_TF": "false",
  }


def _point_this_process_at(mp: pytest.MonkeyPatch, url: str, home) -> None:
  for key, value in emulator_env(url, home).items():
    mp.setenv(key, value)
  mp.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
  # fsspec and gcsfs read their variables at import time, so this process gets the same
  # settings directly; epath and fsspec drop any filesystem made before.
  mp.setitem(fsspec.config.conf, "gcs", {"token": "anon"})
  for protocol in ("gs", "gcs"):
    fsspec.register_implementation(protocol, gcsfs.core.GCSFileSystem, clobber=True)
  gcsfs.core.GCSFileSystem.clear_instance_cache()
  epath_backend.fsspec_backend._get_filesystem.cache_clear()


@pytest.fixture(scope="session")
def gcs_bucket(tmp_path_factory):
  """`gs://ftjax-test` on a fresh in-memory emulator, for the whole session; yields the URL."""
  root = tmp_path_factory.mktemp("gcs_emulator")
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  log_path = root / "emulator.log"
  with open(log_path, "w") as log:
    proc = subprocess.Popen(
        [sys.executable, __file__, "start", "--host=127.0.0.1", f"--port={port}",
         "--in-memory", f"--default-bucket={BUCKET}", "--quiet"],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
  try:
    _wait_healthy(url, proc, log_path)
    with pytest.MonkeyPatch.context() as mp:
      _point_this_process_at(mp, url, root)
      yield f"gs://{BUCKET}"
  finally:
    proc.terminate()
    try:
      proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()


def _add_generation_headers() -> None:
  """Media downloads answer `x-goog-generation`/`x-goog-metageneration`, as real GCS does."""
  from gcp_storage_emulator.handlers import objects  # pylint: disable=g-import-not-at-top
  download = objects.download

  def download_with_generation(request, response, storage, *args, **kwargs):
    download(request, response, storage, *args, **kwargs)
    with contextlib.suppress(Exception):  # a 404 stays a 404
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj["metageneration"])

  objects.download = download_with_generation  # before `server` binds its routes


if __name__ == "__main__":
  _add_generation_headers()
  from gcp_storage_emulator.__main__ import main  # pylint: disable=g-import-not-at-top
  main(sys.argv[1:])
