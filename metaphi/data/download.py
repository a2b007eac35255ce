"""Downloading data files with checksum verification, and safe zip extraction.

A :class:`RemoteFile` names a file, where to fetch it and the checksums it may have. A download
streams into a temporary file next to the destination, hashes while writing, and only renames it
into place when one of the accepted checksums matches, so an interrupted or corrupt download never
leaves a file that looks complete.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

from ..files import atomic_writer

CHUNK = 1 << 16


class ChecksumError(ValueError):
    """A file's checksum matches none of the accepted ones."""


class DownloadError(OSError):
    """A file could not be fetched."""


class UnsafeArchiveError(ValueError):
    """An archive holds an entry that would be written outside the target folder."""


@dataclass(frozen=True)
class RemoteFile:
    """A file to download.

    ``checksums`` lists accepted ``(algorithm, hexdigest)`` pairs (any ``hashlib`` algorithm,
    e.g. ``"sha256"`` or ``"md5"``); the file is good when any one of them matches. An empty
    tuple disables verification: only use it when the content is validated another way.
    """

    name: str
    url: str
    checksums: tuple[tuple[str, str], ...] = ()
    size: int | None = None


def file_digests(path: str | Path, algorithms: Sequence[str]) -> dict[str, str]:
    """Hex digests of a file for each algorithm, in one pass over the file."""
    hashers = {a: hashlib.new(a) for a in set(algorithms)}
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK * 16):
            for h in hashers.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashers.items()}


def _matches(digests: dict[str, str], accepted: Sequence[tuple[str, str]]) -> bool:
    return any(digests.get(a) == d.lower() for a, d in accepted)


def verify_file(path: str | Path, checksums: Sequence[tuple[str, str]]) -> None:
    """Raise :class:`ChecksumError` unless ``path`` matches one of ``checksums``."""
    if not checksums:
        return
    digests = file_digests(path, [a for a, _ in checksums])
    if not _matches(digests, checksums):
        raise ChecksumError(_mismatch_message(Path(path), digests, checksums))


def _mismatch_message(path: Path, digests: dict[str, str],
                      checksums: Sequence[tuple[str, str]]) -> str:
    got = ", ".join(f"{a}={d}" for a, d in sorted(digests.items()))
    want = " or ".join(f"{a}={d}" for a, d in checksums)
    return (f"checksum mismatch for {path.name}: got {got}, expected {want}. The file is "
            "corrupt, truncated or not the expected version; delete it and download it again")


def download(file: RemoteFile, dest_dir: str | Path, *, timeout: float = 60.0,
             max_seconds: float | None = 1800.0, progress: bool | None = None,
             overwrite: bool = False) -> Path:
    """Fetch ``file`` into ``dest_dir/file.name`` and verify it; return the path.

    An existing file that verifies is kept (no network access). ``timeout``: the longest wait
    for any data; ``max_seconds``: the whole download's deadline (a connection that trickles
    forever fails after it, within one more ``timeout``). ``progress`` shows a bar of bytes
    received (default: only when stderr is a terminal). The file is created with the user's
    umask; a failed or refused download leaves nothing behind.
    """
    dest_dir = Path(dest_dir)
    dest = dest_dir / file.name
    if dest.exists() and not overwrite:
        try:
            verify_file(dest, file.checksums)
            return dest
        except ChecksumError:
            pass  # a stale or partial copy: fetch it again
    if progress is None:
        progress = os.isatty(2)
    hashers = {a: hashlib.new(a) for a in sorted({a for a, _ in file.checksums})}
    by_hand = f"fetch the file by hand and put it at {dest}"
    # unbuffered: the temporary file changes with every chunk, so no cleaner takes it for stale
    with atomic_writer(dest, suffix=".part", buffering=0) as out:
        start, received = time.monotonic(), 0
        try:
            response = urllib.request.urlopen(file.url, timeout=timeout)
        except (urllib.error.URLError, OSError) as e:
            raise DownloadError(f"cannot download {file.url}: {e}. Check the network "
                                f"connection, or {by_hand}") from e
        from tqdm.auto import tqdm

        with response, tqdm(total=_length(response, file), unit="B", unit_scale=True,
                            desc=file.name, disable=not progress) as bar:
            while True:
                try:  # read1: whatever has arrived, so the deadline is checked while it trickles
                    chunk = response.read1(CHUNK)
                except (urllib.error.URLError, OSError) as e:
                    raise DownloadError(f"cannot download {file.url}: {e} after {received} "
                                        f"bytes. Check the network connection, or {by_hand}"
                                        ) from e
                if not chunk:
                    break
                out.write(chunk)
                for h in hashers.values():
                    h.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
                if max_seconds is not None and time.monotonic() - start > max_seconds:
                    raise DownloadError(
                        f"cannot download {file.url}: not finished after {max_seconds:g} s "
                        f"({received} bytes received), the connection is too slow or stalled. "
                        f"Try again later, or {by_hand}")
        digests = {a: h.hexdigest() for a, h in hashers.items()}
        if file.checksums and not _matches(digests, file.checksums):
            raise ChecksumError(_mismatch_message(dest, digests, file.checksums) +
                                f" (downloaded from {file.url})")
    return dest


def _length(response, file: RemoteFile) -> int | None:
    total = response.headers.get("Content-Length")
    return int(total) if total and total.isdigit() else file.size


def _unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    """Why an entry must not be extracted, or None when it is safe."""
    name = info.filename
    if "\\" in name:
        return "contains a backslash (a Windows path separator)"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    if any(part == ".." for part in PurePosixPath(name).parts):
        return "contains '..'"
    # Unix zips keep st_mode in the high 16 bits; many writers set only permission bits (no
    # file type), which means a regular file. We never create links or devices, only refuse them.
    file_type = stat.S_IFMT(info.external_attr >> 16)
    if file_type == stat.S_IFLNK:
        return "is a symbolic link"
    if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "is not a regular file or folder"
    return None


def check_archive(zip_path: str | Path, max_bytes: int | None = 2 << 30) -> list[zipfile.ZipInfo]:
    """The entries of a zip file, after checking that every one is safe to extract.

    Rejects absolute paths, ``..`` components, backslashes, symbolic links and special files, and
    archives that unpack to more than ``max_bytes`` (a guard against zip bombs).
    """
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = zf.infolist()
    except zipfile.BadZipFile as e:
        raise ValueError(f"{zip_path} is not a valid zip file ({e}); delete it and download "
                         "it again") from e
    for info in infos:
        reason = _unsafe_reason(info)
        if reason is not None:
            raise UnsafeArchiveError(
                f"refusing to extract {zip_path}: entry {info.filename!r} {reason}, so it could "
                "write outside the target folder. The archive is not trustworthy; delete it")
    total = sum(i.file_size for i in infos)
    if max_bytes is not None and total > max_bytes:
        raise UnsafeArchiveError(f"refusing to extract {zip_path}: it unpacks to {total} bytes, "
                                 f"more than the limit of {max_bytes} (a zip bomb?). The archive "
                                 "is not the expected one; delete it")
    return infos


def safe_extract(zip_path: str | Path, target: str | Path,
                 max_bytes: int | None = 2 << 30) -> list[Path]:
    """Extract a zip file into ``target`` without letting any entry escape it.

    Every entry is checked before anything is written (:func:`check_archive`); each written path
    is also checked to resolve inside ``target``. Returns the extracted file paths.
    """
    infos = check_archive(zip_path, max_bytes)
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    written = []
    with zipfile.ZipFile(zip_path) as zf:
        for info in infos:
            out = (root / info.filename).resolve()
            # Belt and braces: a symlink already inside target could still redirect a write.
            if out != root and root not in out.parents:
                raise UnsafeArchiveError(f"refusing to extract {info.filename!r} from {zip_path}: "
                                         f"it resolves to {out}, outside {root}")
            if info.is_dir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
            written.append(out)
    return written
