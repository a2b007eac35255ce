"""What the text datasets (SIB-200, UDHR, FewRel) share: finding their folder, fetching and
verifying their files, and the tokenizer learned on meta-train text."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Sequence

from ..tasks.text import TextDataError, TextOptions, Tokenizer, learn_tokenizer
from .cache import default_cache_dir
from .download import RemoteFile, download, verify_file

PACKAGE_SPLITS = Path(__file__).parent / "splits"


class DatasetError(TextDataError):
    """A text dataset is missing, incomplete or corrupt."""


def dataset_dir(name: str, root: str | Path | None, marker: Sequence[str] = ()) -> Path:
    """The folder of dataset ``name``: ``root`` itself when it is named ``name`` or holds one
    of the ``marker`` files, else ``root/name``; without ``root``, ``$METAPHI_DATA/name``."""
    if root is None:
        env = os.environ.get("METAPHI_DATA")
        if not env:
            raise DatasetError(f"no {name} location given: pass data_dir (the folder holding "
                               f"{name}/, or the {name} folder itself), or set METAPHI_DATA to "
                               f"a data folder holding {name}/")
        root = Path(env).expanduser()
    root = Path(root).expanduser()
    if root.name == name or any((root / m).exists() for m in marker):
        return root
    return root / name


def fetch(files: Sequence[RemoteFile], folder: Path, *, timeout: float = 60.0,
          progress: bool | None = None) -> list[Path]:
    """Download (or keep, when present and verified) each file into ``folder``; a file's
    ``name`` may hold sub-folders."""
    out = []
    for f in files:
        sub = Path(f.name)
        target = RemoteFile(sub.name, f.url, f.checksums, f.size)
        out.append(download(target, folder / sub.parent, timeout=timeout, progress=progress))
    return out


def verify_present(path: Path, checksums: tuple[tuple[str, str], ...]) -> None:
    """A local file that must match its published checksum: a clear error naming it."""
    from .download import ChecksumError

    try:
        verify_file(path, checksums)
    except ChecksumError as e:
        raise DatasetError(str(e)) from None


def open_zip(path: Path) -> zipfile.ZipFile:
    """The zip file at ``path``, or a :class:`DatasetError` that says how to repair it."""
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise DatasetError(f"{path} is not a valid zip file ({e}); delete it and download "
                           "it again") from None


def split_names(folder: str | Path, which: str) -> list[str]:
    """The names listed in ``<folder>/<which>.txt`` (a shipped split name or a folder path),
    one a line; ``#`` starts a comment."""
    path = Path(folder)
    if not path.is_dir():
        path = PACKAGE_SPLITS / str(folder)
    if not path.is_dir():
        shipped = sorted(p.name for p in PACKAGE_SPLITS.iterdir() if p.is_dir())
        raise DatasetError(f"unknown split {folder!r}: not a folder, and not one of the shipped "
                           f"splits {shipped}")
    file = path / f"{which}.txt"
    if not file.is_file():
        raise DatasetError(f"split file {file} does not exist")
    names = [line.split("#")[0].strip() for line in file.read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n]
    if len(set(names)) != len(names):
        raise DatasetError(f"{file} lists some names more than once")
    return names


def read_splits(folder: str | Path, parts: Sequence[str] = ("train", "val", "test")
                ) -> dict[str, list[str]]:
    """Every part of a split, checked to be disjoint."""
    out = {p: split_names(folder, p) for p in parts}
    seen: dict[str, str] = {}
    for p, names in out.items():
        for n in names:
            if n in seen:
                raise DatasetError(f"split {folder!r}: {n!r} is in both {seen[n]} and {p}; "
                                   "meta-train, meta-val and meta-test must be disjoint")
            seen[n] = p
    return out


def source_tokenizer(o: TextOptions, train_texts: Sequence[str]) -> Tokenizer:
    """The tokenizer of a text source, learned (tokenizer=bpe) on meta-train text only."""
    return learn_tokenizer(o.tokenizer, train_texts, o.bpe_vocab, default_cache_dir() / "text")
