"""Downloads with checksums and safe extraction, against a local HTTP server on 127.0.0.1."""
from __future__ import annotations

import hashlib
import http.server
import stat
import threading
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from metaphi.data import (ChecksumError, DownloadError, RemoteFile, UnsafeArchiveError,
                          download, download_omniglot, load_omniglot, verify_file)
from metaphi.data.download import safe_extract
from metaphi.data.omniglot import OMNIGLOT_CHECKSUMS, OFFICIAL_BASE_URL, omniglot_remote_files

from omniglot_fixture import make_omniglot_fixture


class Server:
    """Serves ``root`` over HTTP on 127.0.0.1 and counts the GET requests."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                outer.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):  # keep test output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # 127.0.0.1 must be reached directly
    root = tmp_path / "served"
    root.mkdir()
    s = Server(root)
    yield s
    s.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_verifies_and_does_not_refetch(server, tmp_path):
    payload = np.random.default_rng(0).bytes(300_000)
    (server.root / "blob.bin").write_bytes(payload)
    good = hashlib.sha256(payload).hexdigest()
    f = RemoteFile("blob.bin", f"{server.url}/blob.bin", (("sha256", good),))
    out = download(f, tmp_path / "dl", progress=False)
    assert out.read_bytes() == payload
    assert server.requests == ["/blob.bin"]
    assert download(f, tmp_path / "dl", progress=False) == out  # verified copy kept
    assert server.requests == ["/blob.bin"]
    # Any one accepted checksum suffices (e.g. a documented md5 next to an unknown sha256).
    md5 = hashlib.md5(payload).hexdigest()
    g = RemoteFile("blob2.bin", f"{server.url}/blob.bin", (("sha256", "0" * 64), ("md5", md5)))
    assert download(g, tmp_path / "dl", progress=False).read_bytes() == payload


def test_checksum_mismatch_leaves_nothing_behind(server, tmp_path):
    (server.root / "blob.bin").write_bytes(b"tampered content")
    f = RemoteFile("blob.bin", f"{server.url}/blob.bin", (("sha256", "ab" * 32),))
    with pytest.raises(ChecksumError, match=r"checksum mismatch for blob.bin: got sha256=\w{64}, "
                                            r"expected sha256=(ab){32}.*downloaded from http://"):
        download(f, tmp_path / "dl", progress=False)
    assert list((tmp_path / "dl").iterdir()) == []  # no partial or unverified file
    # A corrupt local copy is replaced by a fresh download.
    good = RemoteFile("blob.bin", f.url, (("sha256", sha256(server.root / "blob.bin")),))
    (tmp_path / "dl" / "blob.bin").write_bytes(b"stale")
    assert download(good, tmp_path / "dl", progress=False).read_bytes() == b"tampered content"
    with pytest.raises(ChecksumError):
        verify_file(tmp_path / "dl" / "blob.bin", f.checksums)


def test_http_error_is_clear(server, tmp_path):
    f = RemoteFile("nothere.zip", f"{server.url}/nothere.zip")
    with pytest.raises(DownloadError, match=r"cannot download http://127.0.0.1:\d+/nothere.zip.*"
                                            r"put it at .*nothere.zip"):
        download(f, tmp_path / "dl", progress=False)
    assert list((tmp_path / "dl").iterdir()) == []


def malicious_zip(path: Path, kind: str) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("images_background/Latin/character01/0001_01.png", b"fine")
        if kind == "dotdot":
            zf.writestr("images_background/../../evil.txt", b"escaped")
        elif kind == "absolute":
            zf.writestr("/tmp/metaphi_evil_absolute.txt", b"escaped")
        elif kind == "symlink":
            info = zipfile.ZipInfo("images_background/link")
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "../../..")
    return path


@pytest.mark.parametrize("kind,reason", [("dotdot", "contains '..'"),
                                         ("absolute", "is an absolute path"),
                                         ("symlink", "is a symbolic link")])
def test_safe_extract_rejects_escaping_entries(tmp_path, kind, reason):
    z = malicious_zip(tmp_path / "bad.zip", kind)
    target = tmp_path / "a" / "b" / "target"
    with pytest.raises(UnsafeArchiveError, match=reason):
        safe_extract(z, target)
    assert not (tmp_path / "a" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/metaphi_evil_absolute.txt").exists()
    assert not target.exists() or not any(target.rglob("*"))  # checked before writing anything


def test_safe_extract_extracts_good_archive(tmp_path):
    folder = make_omniglot_fixture(tmp_path / "src", {"images_background": {"Latin": 1}})
    out = safe_extract(folder / "images_background.zip", tmp_path / "out")
    assert len(out) == 20
    assert (tmp_path / "out/images_background/Latin/character01/0001_20.png").is_file()


def test_download_omniglot_from_local_server(server, tmp_path):
    make_omniglot_fixture(server.root)
    table = {f"{p}.zip": (("sha256", sha256(server.root / f"{p}.zip")),)
             for p in ("images_background", "images_evaluation")}
    folder = download_omniglot(tmp_path / "data", base_url=server.url, checksums=table,
                               extract=True, progress=False)
    assert folder == tmp_path / "data" / "omniglot"
    assert sorted(server.requests) == ["/images_background.zip", "/images_evaluation.zip"]
    assert (folder / "images_background.zip").read_bytes() == (
        server.root / "images_background.zip").read_bytes()
    assert (folder / "images_evaluation/Angelic/character03/0008_20.png").is_file()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp folders left
    zipped = load_omniglot(folder, cache_dir=tmp_path / "c1", strict=False)
    (folder / "images_background.zip").unlink()
    (folder / "images_evaluation.zip").unlink()
    extracted = load_omniglot(folder, cache_dir=tmp_path / "c2", strict=False)
    np.testing.assert_array_equal(zipped.images, extracted.images)


def test_load_omniglot_download_flag_fetches_missing_archives(server, tmp_path, monkeypatch):
    import metaphi.data.omniglot as og

    make_omniglot_fixture(server.root)
    table = {f"{p}.zip": (("sha256", sha256(server.root / f"{p}.zip")),)
             for p in ("images_background", "images_evaluation")}
    monkeypatch.setenv("METAPHI_OMNIGLOT_URL", server.url)  # a mirror
    monkeypatch.setattr(og, "OMNIGLOT_CHECKSUMS", table)  # whose files are our fixture
    im = load_omniglot(tmp_path / "omniglot", download=True, strict=False,
                       cache_dir=tmp_path / "cache")
    assert im.n_characters == 8 and len(server.requests) == 2
    assert load_omniglot(tmp_path / "omniglot", download=True, strict=False,
                         cache_dir=tmp_path / "cache").from_cache
    assert len(server.requests) == 2  # present archives are not fetched again


def test_download_omniglot_rejects_bad_checksum_and_unsafe_zip(server, tmp_path):
    make_omniglot_fixture(server.root)
    wrong = {"images_background.zip": (("sha256", "0" * 64),),
             "images_evaluation.zip": (("sha256", "0" * 64),)}
    with pytest.raises(ChecksumError, match="images_background.zip"):
        download_omniglot(tmp_path / "d1", base_url=server.url, checksums=wrong, progress=False)
    assert not (tmp_path / "d1" / "omniglot" / "images_background.zip").exists()

    evil = malicious_zip(server.root / "images_background.zip", "dotdot")
    table = {"images_background.zip": (("sha256", sha256(evil)),),
             "images_evaluation.zip": (("sha256", sha256(server.root / "images_evaluation.zip")),)}
    with pytest.raises(UnsafeArchiveError, match=r"'images_background/\.\./\.\./evil.txt' "
                                                 r"contains '\.\.'"):
        download_omniglot(tmp_path / "d2", base_url=server.url, checksums=table, extract=True,
                          progress=False)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "d2" / "evil.txt").exists()
    assert not (tmp_path / "d2" / "omniglot" / "images_background").exists()


def test_official_table():
    files = omniglot_remote_files()
    assert [f.url for f in files] == [f"{OFFICIAL_BASE_URL}/images_background.zip",
                                      f"{OFFICIAL_BASE_URL}/images_evaluation.zip"]
    assert OFFICIAL_BASE_URL == "https://github.com/brendenlake/omniglot/raw/master/python"
    for f in files:
        algos = dict(f.checksums)
        assert set(algos) == {"md5", "sha256"} and f.checksums == OMNIGLOT_CHECKSUMS[f.name]
        assert len(algos["md5"]) == 32 and len(algos["sha256"]) == 64
