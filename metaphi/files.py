"""Writing files safely: every file metaphi writes (run configs, checkpoints, results, plots,
caches, downloads) goes through :func:`atomic_writer`.

- Atomic: the bytes go to a temporary file in the same folder (``.NAME.XXXXXXXX.tmp``), are
  flushed to disk, then renamed over ``NAME``; readers see the old file or the new one, never
  half of one. A failed write removes its temporary file and leaves ``NAME`` as it was.
- Permissions like any other tool's: the file is created with mode ``0o666`` minus the umask
  (``tempfile.mkstemp`` would make it private, 0600).
- Nothing accumulates: a process killed between creating and renaming leaves its temporary
  file behind; the next write of the same file removes such leftovers once they are older than
  :data:`STALE_SECONDS` (a live writer touches its file far more often, so it is never one).
- Errors name the file: a full disk or a read-only folder raises :class:`WriteError`, whose
  message says which file could not be written, why, and that nothing was half-written.
"""
from __future__ import annotations

import errno
import io
import os
import re
import secrets
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator

# A temporary file untouched for this long belongs to a writer that died.
STALE_SECONDS = 15 * 60
# errnos that mean "this disk or folder cannot take the file", reported as WriteError
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                errno.EIO, errno.ENOTDIR, errno.EISDIR}
_RANDOM = r"[a-z0-9_]{8}"  # ours (hex) and tempfile.mkstemp's (earlier versions)


class WriteError(OSError):
    """A file could not be written (full disk, quota, read-only folder...); the file at that
    path is unchanged and no partial file was left."""

    def __init__(self, path: str | Path, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror, str(path))
        if cause.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            advice = "free some disk space (or quota), or write to another disk"
        elif cause.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            advice = "the folder is not writable; choose a writable one"
        else:
            advice = "check the folder and the disk"
        self.message = (f"cannot write {path}: {cause.strerror or cause}; {advice}. Nothing was "
                        "half-written: the file holds its previous content, if it had one")

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # (picklable, so that a distributed run's other ranks get it too)
        return _rebuild_write_error, (self.filename, self.errno, self.strerror)


def _rebuild_write_error(path: str, code: int, strerror: str) -> WriteError:
    return WriteError(path, OSError(code, strerror))


def as_write_error(path: str | Path, e: OSError) -> OSError:
    """``e`` as a :class:`WriteError` for ``path`` when it says the disk or folder cannot take
    the file; other errors (a network error raised by the writer's body...) unchanged."""
    if isinstance(e, WriteError) or e.errno not in WRITE_ERRNOS:
        return e
    return WriteError(path, e)


def temporary_pattern(name: str, suffix: str = ".tmp") -> re.Pattern[str]:
    """The names :func:`atomic_writer` gives the temporary files of ``name``."""
    return re.compile(rf"^\.{re.escape(name)}\.{_RANDOM}{re.escape(suffix)}$")


def clean_stale_temporaries(folder: str | Path, pattern: re.Pattern[str] | None = None,
                            max_age: float = STALE_SECONDS) -> list[Path]:
    """Remove the temporary files (and folders) of :func:`atomic_writer` in ``folder`` whose
    newest modification is older than ``max_age`` seconds: they belong to writers that were
    killed. ``pattern``: only names matching it (default: any ``.NAME.XXXXXXXX.tmp``). Returns
    what was removed; a folder that cannot be listed is left alone."""
    pattern = pattern or re.compile(rf"^\..+\.{_RANDOM}\.tmp$")
    now, removed = time.time(), []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not pattern.match(entry.name) or entry.is_symlink():
            continue
        try:
            if now - _newest_mtime(entry) < max_age:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass  # gone already (another cleaner), or not ours to remove
    return removed


def _newest_mtime(entry: os.DirEntry) -> float:
    newest = entry.stat(follow_symlinks=False).st_mtime
    if entry.is_dir(follow_symlinks=False):
        for dirpath, dirnames, filenames in os.walk(entry.path):
            for n in dirnames + filenames:
                try:
                    newest = max(newest, os.lstat(os.path.join(dirpath, n)).st_mtime)
                except OSError:
                    pass
    return newest


def _create(path: Path, suffix: str) -> tuple[int, Path]:
    """A new file beside ``path`` with a random temporary name, mode 0o666 minus the umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


@contextmanager
def atomic_writer(path: str | Path, suffix: str = ".tmp", buffering: int = -1,
                  clean: bool = True) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new content into; on leaving the block without an
    error it is flushed, synced and renamed over ``path``. On an error the temporary file is
    removed and ``path`` is untouched; a full disk or read-only folder raises
    :class:`WriteError`. ``clean``: first remove stale temporaries of ``path`` (see
    :func:`clean_stale_temporaries`). ``buffering=0`` writes every chunk through at once
    (downloads: a live writer's temporary file is then never mistaken for a stale one)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if clean:
            clean_stale_temporaries(path.parent, temporary_pattern(path.name, suffix))
        fd, tmp = _create(path, suffix)
    except OSError as e:
        raise as_write_error(path, e) from e
    try:
        with os.fdopen(fd, "wb", buffering=buffering) as f:
            yield f  # type: ignore[misc]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise as_write_error(path, e) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(path) as f:
        f.write(data)


def save_figure(fig: Any, path: str | Path, **savefig_kwargs: Any) -> Path:
    """Save a matplotlib figure as a PNG at ``path`` atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig_kwargs)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
