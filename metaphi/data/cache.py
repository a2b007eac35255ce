"""A small array cache: ``.npz`` files written atomically and tagged with a key.

The key names everything the cached arrays depend on (format version, image size, a fingerprint
of the source files). A cache whose key differs, or that cannot be read, is treated as missing, so
a stale or half-written cache is never used.
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np

from ..files import atomic_writer

KEY_FIELD = "__cache_key__"


def default_cache_dir() -> Path:
    """``$METAPHI_CACHE``, else ``$XDG_CACHE_HOME/metaphi``, else ``~/.cache/metaphi``."""
    if os.environ.get("METAPHI_CACHE"):
        return Path(os.environ["METAPHI_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "metaphi"


def is_writable_dir(path: Path) -> bool:
    """Whether files can be created in ``path`` (created if missing)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
        return True
    except OSError:
        return False


def save_arrays(path: str | Path, key: str, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``arrays`` and ``key`` to ``path`` (.npz) atomically: readers see the old file or
    the complete new one, never a partial write."""
    path = Path(path)
    if KEY_FIELD in arrays:
        raise ValueError(f"{KEY_FIELD!r} is reserved for the cache key")
    with atomic_writer(path) as f:
        np.savez(f, **{KEY_FIELD: np.asarray(key)}, **arrays)
    return path


def load_arrays(path: str | Path, key: str) -> dict[str, np.ndarray] | None:
    """The arrays cached at ``path`` under ``key``; None when missing, stale or unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if KEY_FIELD not in z.files or str(z[KEY_FIELD]) != key:
                return None
            return {k: z[k] for k in z.files if k != KEY_FIELD}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None
