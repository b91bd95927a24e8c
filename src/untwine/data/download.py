"""Download the full public datasets behind the shared benchmark copies (stdlib ``urllib`` only).

``download(name, dest_dir)`` fetches dataset ``name`` into ``dest_dir/<folder>`` and returns that
folder. Every file is streamed to a temporary file beside its target (tqdm progress bar), its sha256
is checked where we know it, archives (zip, tar.gz) are extracted with a single top-level folder
stripped (so ``ml-100k/u.data`` lands as ``<folder>/u.data``, the layout of the shared data folder),
and every output file appears atomically (renamed into place only when complete and verified). A
second call finds ``<folder>/.untwine-download.json`` and returns at once unless ``force=True``.

| name | folder | source |
|---|---|---|
| ``movielens-100k`` | ``movielens-100k`` | https://files.grouplens.org/datasets/movielens/ml-100k.zip |
| ``movielens-1m`` | ``movielens-1m`` | https://files.grouplens.org/datasets/movielens/ml-1m.zip |
| ``movielens-latest-small`` | ``movielens-latest-small`` | https://files.grouplens.org/datasets/movielens/ml-latest-small.zip |
| ``criteo`` | ``criteo-kaggle`` | Criteo AI Lab's public copy of the Kaggle Display Advertising Challenge data (dac.tar.gz, ~4.3 GB; train.txt, test.txt, readme.txt) |
| ``frappe`` | ``frappe-nfm`` | the NFM libFM split, ``hexiangnan/neural_factorization_machine`` ``data/frappe/`` at commit ca2a5d11 |
| ``avazu`` | ``avazu`` | Kaggle only (login + rules acceptance): no direct URL, :class:`DownloadUnavailable` with instructions |

Known sha256 values are those of the shared copies that are byte-identical to the originals
(``MANIFEST.md``): the frappe validation/test libFM files and README.txt, and ml-100k ``u.data``.
Other files are recorded (sha256 in ``.untwine-download.json``) but not checked.

Licences: MovieLens and Frappe forbid redistribution without permission; Criteo and Avazu are for
research/non-commercial use. Download for local benchmarking only; never commit the files.

Tests replace :func:`_urlopen` (the one place that touches the network).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Iterable

from tqdm.auto import tqdm

from untwine.core.io import atomic_path, atomic_write_json

CHUNK = 1 << 20
MARKER = ".untwine-download.json"
USER_AGENT = "untwine-download/0.1 (+https://grouplens.org/datasets/movielens/ terms respected)"
_NFM = "https://raw.githubusercontent.com/hexiangnan/neural_factorization_machine/ca2a5d11b929816aa44c6e470e795af144608507/data/frappe"


class ChecksumError(ValueError):
    """A downloaded or extracted file does not have the expected sha256."""


class DownloadUnavailable(RuntimeError):
    """The dataset has no direct public URL (e.g. Kaggle needs a login)."""


@dataclass(frozen=True)
class RemoteFile:
    url: str
    name: str  # file name of the download (the archive name for archives)
    sha256: str | None = None  # of the downloaded file itself, when known
    archive: str | None = None  # "zip" or "tar" (any compression): extract, then delete unless keep_archives
    members_sha256: dict[str, str] = field(default_factory=dict)  # extracted path -> sha256, when known


@dataclass(frozen=True)
class RemoteDataset:
    name: str
    folder: str
    files: tuple[RemoteFile, ...]
    homepage: str
    terms: str
    instructions: str | None = None  # set when there is no direct URL: how to get it by hand


DATASETS: dict[str, RemoteDataset] = {
    d.name: d for d in (
        RemoteDataset(
            name="movielens-100k", folder="movielens-100k",
            files=(RemoteFile(url="https://files.grouplens.org/datasets/movielens/ml-100k.zip", name="ml-100k.zip",
                              archive="zip",
                              members_sha256={"u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"}),),
            homepage="https://grouplens.org/datasets/movielens/100k/",
            terms="GroupLens research licence: no redistribution without permission, no commercial use"),
        RemoteDataset(
            name="movielens-1m", folder="movielens-1m",
            files=(RemoteFile(url="https://files.grouplens.org/datasets/movielens/ml-1m.zip", name="ml-1m.zip",
                              archive="zip"),),
            homepage="https://grouplens.org/datasets/movielens/1m/",
            terms="GroupLens research licence: no redistribution without permission, no commercial use"),
        RemoteDataset(
            name="movielens-latest-small", folder="movielens-latest-small",
            files=(RemoteFile(url="https://files.grouplens.org/datasets/movielens/ml-latest-small.zip",
                              name="ml-latest-small.zip", archive="zip"),),
            homepage="https://grouplens.org/datasets/movielens/latest/",
            terms="GroupLens terms (see README.txt in the archive)"),
        RemoteDataset(
            name="criteo", folder="criteo-kaggle",
            files=(RemoteFile(url="https://go.criteo.net/criteo-research-kaggle-display-advertising-challenge-dataset.tar.gz",
                              name="criteo-research-kaggle-display-advertising-challenge-dataset.tar.gz",
                              archive="tar"),),
            homepage="https://ailab.criteo.com/ressources/ (Kaggle Display Advertising Challenge dataset)",
            terms="Criteo research terms (non-commercial); cite Criteo. About 4.3 GB compressed, 11 GB extracted"),
        RemoteDataset(
            name="frappe", folder="frappe-nfm",
            files=(
                RemoteFile(url=f"{_NFM}/frappe.train.libfm", name="frappe.train.libfm"),
                RemoteFile(url=f"{_NFM}/frappe.validation.libfm", name="frappe.validation.libfm",
                           sha256="fdf4be563a7dd9b15f7a6e8b32671e90e6e7a2a2bd3af4e10bf13c5ad7e76e9e"),
                RemoteFile(url=f"{_NFM}/frappe.test.libfm", name="frappe.test.libfm",
                           sha256="a2ebaef3a9af8e55f8bb0d08bc4923965e42e43760ebd7635ac2f8c5db99e097"),
                RemoteFile(url=f"{_NFM}/README.txt", name="README.txt",
                           sha256="8ece0e428ba5c1879f2cf298aa65ab5c6c092d5c9716c8a4d5c4ee209dfdc6e7"),
            ),
            homepage="https://github.com/hexiangnan/neural_factorization_machine (Frappe: arXiv:1505.03014)",
            terms="Frappe terms: research use, no redistribution without permission, no commercial use"),
        RemoteDataset(
            name="avazu", folder="avazu", files=(),
            homepage="https://www.kaggle.com/c/avazu-ctr-prediction",
            terms="Kaggle competition rules: non-commercial/research use",
            instructions=("Avazu is only distributed by Kaggle, which requires a logged-in account that has "
                          "accepted the competition rules, so there is no direct URL to fetch. By hand: sign in "
                          "at https://www.kaggle.com/c/avazu-ctr-prediction/data, accept the rules, then either "
                          "download train.gz there or run `kaggle competitions download -c avazu-ctr-prediction` "
                          "(Kaggle API token in ~/.kaggle/kaggle.json), and unpack it into {dest}.")),
    )
}


# ------------------------------------------------------------------ network (the one patch point)
def _urlopen(url: str, timeout: float = 60.0) -> IO[bytes]:
    """Open ``url`` for reading; the response may have ``.headers`` with Content-Length."""
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - fixed https URLs


def _content_length(resp) -> int | None:
    headers = getattr(resp, "headers", None)
    try:
        n = int(headers.get("Content-Length")) if headers is not None else None
    except (TypeError, ValueError):
        n = None
    return n if n and n > 0 else None


def fetch(url: str, dest: str | Path, sha256: str | None = None, progress: bool = True) -> str:
    """Stream ``url`` to ``dest`` atomically; check ``sha256`` if given; return the file's sha256."""
    dest = Path(dest)
    h = hashlib.sha256()
    with atomic_path(dest) as tmp:
        try:
            resp = _urlopen(url)
        except (urllib.error.URLError, OSError) as e:
            raise ConnectionError(f"download of {url} failed: {e}. Check the network, or fetch the file by hand "
                                  f"into {dest}") from e
        with resp, open(tmp, "wb") as out, tqdm(total=_content_length(resp), unit="B", unit_scale=True,
                                                unit_divisor=1024, desc=dest.name, disable=not progress,
                                                leave=False) as bar:
            while True:
                block = resp.read(CHUNK)
                if not block:
                    break
                out.write(block)
                h.update(block)
                bar.update(len(block))
        digest = h.hexdigest()
        if sha256 is not None and digest != sha256.lower():
            raise ChecksumError(f"{url}: sha256 {digest} does not match the expected {sha256}; the download is "
                                "corrupt or the file changed upstream (nothing was written)")
    return digest


# ------------------------------------------------------------------ archives
def _strip_prefix(names: list[str]) -> str:
    """The single top-level folder all members share (e.g. ``ml-100k/``), else ''."""
    tops = {PurePosixPath(n).parts[0] for n in names if PurePosixPath(n).parts}
    if len(tops) == 1 and all(len(PurePosixPath(n).parts) > 1 for n in names):
        return tops.pop() + "/"
    return ""


def _safe_rel(name: str, prefix: str, archive: Path) -> str:
    """``name`` without ``prefix``; rejects absolute paths and any ``..`` (before and after stripping)."""
    for candidate in (name, name[len(prefix):] if prefix and name.startswith(prefix) else name):
        p = PurePosixPath(candidate)
        if p.is_absolute() or ".." in p.parts or not p.parts or "\\" in candidate:
            raise ValueError(f"{archive}: unsafe member path {name!r}")
    return str(p)


def _zip_members(archive: Path):
    """Yield (relative path, opener) of every regular file of a zip (opener() -> binary stream)."""
    with zipfile.ZipFile(archive) as zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        prefix = _strip_prefix([i.filename for i in infos])
        for info in infos:
            yield _safe_rel(info.filename, prefix, archive), (lambda info=info: zf.open(info))


def _copy_hashed(src: IO[bytes], dst: Path) -> str:
    h = hashlib.sha256()
    with open(dst, "wb") as out:
        while True:
            block = src.read(CHUNK)
            if not block:
                break
            out.write(block)
            h.update(block)
    return h.hexdigest()


def extract(archive: str | Path, kind: str, folder: str | Path, members_sha256: dict[str, str] | None = None,
            progress: bool = True) -> dict[str, str]:
    """Extract ``archive`` into ``folder`` (a single top-level folder stripped); return {path: sha256}.

    ``kind`` is ``"zip"`` or ``"tar"`` (any compression tarfile reads). Members with a known sha256 are
    verified before any of them is moved into ``folder``; a mismatch raises :class:`ChecksumError` and
    leaves ``folder`` as it was. Each output file appears atomically.
    """
    archive, folder = Path(archive), Path(folder)
    expected = dict(members_sha256 or {})
    if kind == "zip":
        return _extract_zip(archive, folder, expected, progress)
    if kind == "tar":
        return _extract_tar(archive, folder, expected, progress)
    raise ValueError(f"unknown archive kind {kind!r}")


def _extract_zip(archive: Path, folder: Path, expected: dict[str, str], progress: bool) -> dict[str, str]:
    if expected:  # verify first (zip has random access), so a corrupt archive writes nothing at all
        seen = {}
        for rel, opener in _zip_members(archive):
            if rel in expected:
                h = hashlib.sha256()
                with opener() as fh:
                    for block in iter(lambda: fh.read(CHUNK), b""):
                        h.update(block)
                seen[rel] = h.hexdigest()
        _check_members(archive, expected, seen)
    written: dict[str, str] = {}
    bar = tqdm(desc=f"extract {archive.name}", unit="file", disable=not progress, leave=False)
    with bar:
        for rel, opener in _zip_members(archive):
            with atomic_path(folder / rel) as tmp, opener() as src:
                digest = _copy_hashed(src, tmp)
                if rel in expected and digest != expected[rel]:
                    raise ChecksumError(f"{archive}: member {rel} has sha256 {digest}, expected {expected[rel]}")
            written[rel] = digest
            bar.update(1)
    return written


def _extract_tar(archive: Path, folder: Path, expected: dict[str, str], progress: bool) -> dict[str, str]:
    """Stream the tar once into a staging folder, verify, then rename the files into place."""
    staging = folder / f".extract-{archive.name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        digests: dict[str, str] = {}
        with tarfile.open(archive, "r|*") as tf, tqdm(desc=f"extract {archive.name}", unit="file",
                                                       disable=not progress, leave=False) as bar:
            for info in tf:
                if not info.isfile():
                    continue
                rel = _safe_rel(info.name, "", archive)
                dst = staging / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(info)
                digests[rel] = _copy_hashed(src, dst)
                bar.update(1)
        prefix = _strip_prefix(list(digests))
        final = {_safe_rel(rel, prefix, archive): d for rel, d in digests.items()}
        _check_members(archive, expected, final)
        for rel in digests:
            out = folder / _safe_rel(rel, prefix, archive)
            out.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, out)
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_members(archive: Path, expected: dict[str, str], seen: dict[str, str]) -> None:
    missing = sorted(set(expected) - set(seen))
    if missing:
        raise ChecksumError(f"{archive}: expected member(s) {missing} are missing")
    bad = {k: v for k, v in seen.items() if k in expected and v != expected[k]}
    if bad:
        rel, digest = next(iter(bad.items()))
        raise ChecksumError(f"{archive}: member {rel} has sha256 {digest}, expected {expected[rel]} (the archive is "
                            "corrupt or changed upstream)")


# ------------------------------------------------------------------ entry point
def download(name: str, dest_dir: str | Path, *, force: bool = False, progress: bool = True,
             files: Iterable[str] | None = None, keep_archives: bool = False) -> Path:
    """Download dataset ``name`` into ``dest_dir/<folder>`` and return that folder.

    ``files`` limits the download to some of the dataset's remote files (by their ``name``, e.g.
    ``["frappe.test.libfm"]``). Raises :class:`DownloadUnavailable` for datasets without a direct URL
    (Avazu), :class:`ChecksumError` for a corrupt file (nothing of that file is left behind) and
    ``ConnectionError`` for network failures.
    """
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; downloadable: {sorted(DATASETS)}")
    ds = DATASETS[name]
    folder = Path(dest_dir) / ds.folder
    if ds.instructions is not None:
        raise DownloadUnavailable(f"{name}: " + ds.instructions.format(dest=folder))
    wanted = list(ds.files)
    if files is not None:
        names = set(files)
        unknown = names - {f.name for f in ds.files}
        if unknown:
            raise KeyError(f"{name}: no remote file(s) {sorted(unknown)}; it has {[f.name for f in ds.files]}")
        wanted = [f for f in ds.files if f.name in names]
    marker = folder / MARKER
    if not force and _complete(marker, wanted):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    record = _read_marker(marker)
    for rf in wanted:
        if rf.archive is None:
            digest = fetch(rf.url, folder / rf.name, rf.sha256, progress)
            record["files"][rf.name] = {"url": rf.url, "sha256": digest, "verified": rf.sha256 is not None}
            continue
        staging = Path(dest_dir) / ".downloads"
        arch = staging / rf.name
        try:
            digest = fetch(rf.url, arch, rf.sha256, progress)
            members = extract(arch, rf.archive, folder, rf.members_sha256, progress)
        finally:
            if not keep_archives:
                arch.unlink(missing_ok=True)
                if staging.exists() and not any(staging.iterdir()):
                    shutil.rmtree(staging, ignore_errors=True)
        record["files"][rf.name] = {"url": rf.url, "sha256": digest, "verified": rf.sha256 is not None,
                                    "members": {m: {"sha256": d, "verified": m in rf.members_sha256}
                                                for m, d in sorted(members.items())}}
    record.update(name=name, homepage=ds.homepage, terms=ds.terms)
    atomic_write_json(marker, record)
    return folder


def _read_marker(marker: Path) -> dict:
    try:
        rec = json.loads(marker.read_text())
        if isinstance(rec.get("files"), dict):
            return rec
    except (OSError, ValueError, AttributeError):
        pass
    return {"files": {}}


def _complete(marker: Path, wanted: list[RemoteFile]) -> bool:
    """True when the marker lists every wanted file and all their outputs still exist."""
    if not marker.exists():
        return False
    files = _read_marker(marker)["files"]
    folder = marker.parent
    for rf in wanted:
        entry = files.get(rf.name)
        if entry is None:
            return False
        outputs = list(entry.get("members", {})) if rf.archive else [rf.name]
        if not outputs or not all((folder / o).is_file() for o in outputs):
            return False
    return True
