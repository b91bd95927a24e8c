"""Tests for untwine.data.download without any network access.

The one network call, ``download._urlopen``, is replaced: either by a function serving local bytes
for the real URLs, or by pointing a dataset at a ``http.server`` on 127.0.0.1 that serves a temporary
folder (so urllib's real streaming path runs). Archives are built in ``tmp_path`` from the shared
copies; nothing is written into the repository.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import shutil
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from untwine.core.paths import data_root
from untwine.data import download as D

ROOT = data_root()
ML100K_FILES = ("u.data", "u.item", "u.user", "u.genre", "u.info", "u.occupation", "README")
FRAPPE_FILES = ("frappe.validation.libfm", "frappe.test.libfm", "README.txt")


@pytest.fixture(scope="module")
def root() -> Path:
    if ROOT is None or not (ROOT / "MANIFEST.md").is_file():
        pytest.skip("shared data folder not found: set UNTWINE_DATA to the folder holding MANIFEST.md")
    return ROOT


class _Resp(io.BytesIO):
    def __init__(self, data: bytes):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


def _serve(monkeypatch, table: dict[str, bytes]) -> list[str]:
    """Make _urlopen answer the given URLs from memory; return the list of URLs requested."""
    calls: list[str] = []

    def fake(url, timeout=60.0):
        calls.append(url)
        if url not in table:
            raise D.urllib.error.URLError(f"no network in tests ({url})")
        return _Resp(table[url])

    monkeypatch.setattr(D, "_urlopen", fake)
    return calls


def _ml100k_zip(root: Path, corrupt: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ml-100k/", "")
        for name in ML100K_FILES:
            data = (root / "movielens-100k" / name).read_bytes()
            if corrupt and name == "u.data":
                data = data.replace(b"\t", b" ", 1)
            zf.writestr(f"ml-100k/{name}", data)
    return buf.getvalue()


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp" in p.name or ".extract-" in p.name)


# ------------------------------------------------------------------ registry
def test_registry_urls():
    assert {"movielens-100k", "movielens-1m", "movielens-latest-small", "criteo", "avazu", "frappe"} <= set(D.DATASETS)
    assert D.DATASETS["movielens-100k"].files[0].url == "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
    assert all(f.url.startswith("https://") for d in D.DATASETS.values() for f in d.files)
    frappe = {f.name: f for f in D.DATASETS["frappe"].files}
    assert "hexiangnan/neural_factorization_machine" in frappe["frappe.test.libfm"].url
    assert frappe["frappe.validation.libfm"].sha256 and frappe["frappe.train.libfm"].sha256 is None


def test_avazu_needs_kaggle_login(tmp_path, monkeypatch):
    calls = _serve(monkeypatch, {})
    with pytest.raises(D.DownloadUnavailable, match="(?s)Kaggle.*kaggle competitions download -c avazu-ctr-prediction"):
        D.download("avazu", tmp_path)
    assert calls == [] and not any(tmp_path.iterdir())


def test_unknown_dataset(tmp_path):
    with pytest.raises(KeyError, match="movielens-100k"):
        D.download("netflix", tmp_path)


# ------------------------------------------------------------------ zip + member checksum
def test_ml100k_zip_byte_identical(root, tmp_path, monkeypatch):
    url = D.DATASETS["movielens-100k"].files[0].url
    calls = _serve(monkeypatch, {url: _ml100k_zip(root)})
    folder = D.download("movielens-100k", tmp_path, progress=False)
    assert folder == tmp_path / "movielens-100k"
    for name in ML100K_FILES:  # top-level "ml-100k/" stripped: same layout as the shared folder
        assert (folder / name).read_bytes() == (root / "movielens-100k" / name).read_bytes(), name
    assert not (tmp_path / ".downloads").exists() and _leftovers(tmp_path) == []
    # second call: nothing fetched
    D.download("movielens-100k", tmp_path, progress=False)
    assert calls == [url]
    # force: fetched again
    D.download("movielens-100k", tmp_path, progress=False, force=True)
    assert calls == [url, url]


def test_ml100k_corrupt_member_rejected(root, tmp_path, monkeypatch):
    url = D.DATASETS["movielens-100k"].files[0].url
    _serve(monkeypatch, {url: _ml100k_zip(root, corrupt=True)})
    with pytest.raises(D.ChecksumError, match="u.data"):
        D.download("movielens-100k", tmp_path, progress=False)
    folder = tmp_path / "movielens-100k"
    assert not (folder / "u.data").exists() and not (folder / D.MARKER).exists()
    assert not (tmp_path / ".downloads").exists() and _leftovers(tmp_path) == []


# ------------------------------------------------------------------ plain files over real HTTP
@pytest.fixture
def http_root(tmp_path):
    """A http.server on 127.0.0.1 serving tmp_path/www; yields (folder, base URL)."""
    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _point_frappe_at(monkeypatch, base: str) -> None:
    ds = D.DATASETS["frappe"]
    files = tuple(dataclasses.replace(f, url=f"{base}/{f.name}") for f in ds.files)
    monkeypatch.setitem(D.DATASETS, "frappe", dataclasses.replace(ds, files=files))


def test_frappe_over_local_http_byte_identical(root, tmp_path, http_root, monkeypatch):
    www, base = http_root
    for name in FRAPPE_FILES:
        shutil.copyfile(root / "frappe-nfm-partial" / name, www / name)
    (www / "frappe.train.libfm").write_bytes(b"1 0:1 1:1\n")  # no sha256 known: accepted as served
    _point_frappe_at(monkeypatch, base)
    dest = tmp_path / "dest"
    folder = D.download("frappe", dest, progress=False)
    for name in FRAPPE_FILES:
        assert (folder / name).read_bytes() == (root / "frappe-nfm-partial" / name).read_bytes(), name
        assert _sha(folder / name) == {f.name: f.sha256 for f in D.DATASETS["frappe"].files}[name]
    assert (folder / "frappe.train.libfm").read_bytes() == b"1 0:1 1:1\n"
    record = D._read_marker(folder / D.MARKER)
    assert record["files"]["frappe.test.libfm"]["verified"] is True
    assert record["files"]["frappe.train.libfm"]["verified"] is False
    assert _leftovers(dest) == []


def test_frappe_corrupt_file_rejected(root, tmp_path, http_root, monkeypatch):
    www, base = http_root
    data = bytearray((root / "frappe-nfm-partial/frappe.validation.libfm").read_bytes())
    data[100] ^= 1
    (www / "frappe.validation.libfm").write_bytes(bytes(data))
    _point_frappe_at(monkeypatch, base)
    dest = tmp_path / "dest"
    with pytest.raises(D.ChecksumError, match="sha256"):
        D.download("frappe", dest, progress=False, files=["frappe.validation.libfm"])
    assert not (dest / "frappe-nfm" / "frappe.validation.libfm").exists()
    assert _leftovers(dest) == []


def test_network_error_is_clear(tmp_path, monkeypatch):
    _serve(monkeypatch, {})
    with pytest.raises(ConnectionError, match="frappe.test.libfm"):
        D.download("frappe", tmp_path, progress=False, files=["frappe.test.libfm"])
    assert _leftovers(tmp_path) == [] and not (tmp_path / "frappe-nfm" / "frappe.test.libfm").exists()


# ------------------------------------------------------------------ tar.gz (the Criteo archive layout)
def _criteo_tar(root: Path, corrupt: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for arc, local in (("train.txt", "train.tsv"), ("test.txt", "test.tsv"), ("readme.txt", "README.md")):
            data = (root / "criteo-kaggle-head8k" / local).read_bytes()
            info = tarfile.TarInfo(arc)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_criteo_tar_extracts(root, tmp_path, monkeypatch):
    url = D.DATASETS["criteo"].files[0].url
    _serve(monkeypatch, {url: _criteo_tar(root)})
    folder = D.download("criteo", tmp_path, progress=False)
    assert folder.name == "criteo-kaggle"
    assert (folder / "train.txt").read_bytes() == (root / "criteo-kaggle-head8k/train.tsv").read_bytes()
    assert (folder / "test.txt").read_bytes() == (root / "criteo-kaggle-head8k/test.tsv").read_bytes()
    assert _leftovers(tmp_path) == [] and not (tmp_path / ".downloads").exists()


def test_tar_member_checksum_and_prefix(root, tmp_path):
    data = (root / "movielens-100k/u.genre").read_bytes()
    arch = tmp_path / "a.tar.gz"
    with tarfile.open(arch, "w:gz") as tf:
        info = tarfile.TarInfo("top/u.genre")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    good = hashlib.sha256(data).hexdigest()
    out = D.extract(arch, "tar", tmp_path / "out", {"u.genre": good}, progress=False)
    assert out == {"u.genre": good} and (tmp_path / "out/u.genre").read_bytes() == data
    with pytest.raises(D.ChecksumError):
        D.extract(arch, "tar", tmp_path / "out2", {"u.genre": "0" * 64}, progress=False)
    assert not (tmp_path / "out2" / "u.genre").exists() and _leftovers(tmp_path) == []


def test_unsafe_member_path_rejected(tmp_path):
    arch = tmp_path / "evil.zip"
    with zipfile.ZipFile(arch, "w") as zf:
        zf.writestr("../escape.txt", "x")
    with pytest.raises(ValueError, match="unsafe"):
        D.extract(arch, "zip", tmp_path / "out", progress=False)
    assert not (tmp_path / "escape.txt").exists()
