"""The Universal Declaration of Human Rights in 388 languages (NLTK's ``udhr2`` package) as
few-shot language identification: every language variety is a class, every line of its text
with at least ``min_chars`` characters an example (a "text Omniglot").

Data: ``udhr2.zip`` (NLTK's file, checked against its SHA-256) or its extracted folder
``udhr2/<code>.txt``, in the UDHR folder (``data_dir/udhr2`` or ``$METAPHI_DATA/udhr2``).
:func:`download_udhr` fetches the zip from NLTK's data repository.

Splits (``splits/udhr_language``) are by language: the varieties of one ISO 639-3 code (the
file name before ``_``: ``deu`` and ``deu_1901``, ``srp_cyrl`` and ``srp_latn``) always fall in
the same split, so a meta-test language is never seen in meta-training in any variety. Files
with fewer than 40 usable lines are left out of the shipped split.
"""
from __future__ import annotations

import collections
import os
import unicodedata
from pathlib import Path

import numpy as np
from pydantic import Field

from ..registry import register_source
from ..tasks.fewshot import fewshot_splits
from ..tasks.sources import Splits
from ..tasks.text import TextData, TextOptions, encode_all
from .download import RemoteFile
from .textsets import (DatasetError, dataset_dir, fetch, open_zip, read_splits, source_tokenizer,
                       verify_present)

OFFICIAL_URL = ("https://raw.githubusercontent.com/nltk/nltk_data/gh-pages/packages/corpora/"
                "udhr2.zip")
CHECKSUMS = (("sha256", "0796c314b09a930c989c6f9d93d226af9af13feccd88496e196c743dd266c7f3"),)
ZIP = "udhr2.zip"


def udhr_dir(root: str | Path | None = None) -> Path:
    return dataset_dir("udhr2", root, marker=(ZIP,))


def download_udhr(root: str | Path | None = None, *, url: str | None = None,
                  checksums: tuple[tuple[str, str], ...] = CHECKSUMS, timeout: float = 60.0,
                  progress: bool | None = None) -> Path:
    """Fetch ``udhr2.zip`` (verified against ``checksums``) into the UDHR folder; return the
    folder. ``url`` defaults to ``$METAPHI_UDHR_URL`` (a mirror) or NLTK's repository."""
    folder = udhr_dir(root)
    url = url or os.environ.get("METAPHI_UDHR_URL") or OFFICIAL_URL
    fetch([RemoteFile(ZIP, url, checksums)], folder, timeout=timeout, progress=progress)
    return folder


def read_udhr(root: str | Path | None = None, codes: list[str] | None = None,
              verify: bool = True) -> dict[str, str]:
    """Code -> text of every language (or of ``codes``), from ``udhr2.zip`` or ``udhr2/``."""
    folder = udhr_dir(root)
    zpath, dpath = folder / ZIP, folder / "udhr2"
    files: dict[str, tuple[str, object]] = {}
    if zpath.is_file():
        if verify:
            verify_present(zpath, CHECKSUMS)
        zf = open_zip(zpath)
        for n in zf.namelist():
            if n.startswith("udhr2/") and n.endswith(".txt"):
                files[n[6:-4]] = (f"{zpath}:{n}", lambda n=n: zf.read(n))
    elif dpath.is_dir():
        for p in sorted(dpath.glob("*.txt")):
            files[p.stem] = (str(p), p.read_bytes)
    else:
        raise DatasetError(f"UDHR data not found in {folder}: expected {ZIP} or the folder "
                           "udhr2/<code>.txt; download it with `metaphi data udhr --download`")
    want = sorted(files) if codes is None else codes
    missing = [c for c in want if c not in files]
    if missing:
        raise DatasetError(f"UDHR in {folder} lacks {len(missing)} language file(s): "
                           f"{', '.join(f'udhr2/{c}.txt' for c in missing[:10])}")
    out = {}
    for c in want:
        where, read = files[c]
        data = read()  # type: ignore[operator]
        try:
            out[c] = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DatasetError(f"{where}: not valid UTF-8 at byte {e.start}; the file is "
                               "damaged, download the data again") from None
    return out


def example_lines(text: str, min_chars: int) -> list[str]:
    """The lines of a text that are examples: stripped, at least ``min_chars`` characters."""
    return [line.strip() for line in text.splitlines() if len(line.strip()) >= min_chars]


def dominant_script(text: str, sample: int = 4000) -> str:
    """The Unicode script of most letters in the first ``sample`` characters of ``text``
    (from the characters' names)."""
    counts: collections.Counter = collections.Counter(c for c in text[:sample] if c.isalpha())
    scripts: collections.Counter = collections.Counter()
    for ch, n in counts.items():
        try:
            scripts[unicodedata.name(ch).split()[0]] += n
        except ValueError:
            pass
    return scripts.most_common(1)[0][0].title() if scripts else "Unknown"


class UDHROptions(TextOptions):
    """``task:`` options of few-shot language identification on the UDHR."""

    source: str = "udhr"
    n_way: int = Field(20, ge=2, description="languages per task")
    k_shot: int = Field(1, ge=1, description="support lines per language")
    n_query: int = Field(5, ge=1, description="query lines per language, meta-train tasks")
    eval_n_query: int | None = Field(10, ge=1, description="query lines per language, "
                                     "meta-val/meta-test tasks")
    split: str = Field("udhr_language", description="language split: udhr_language, or a "
                       "folder with train/val/test.txt (file codes, one a line)")
    min_chars: int = Field(20, ge=1, description="lines shorter than this are not examples "
                           "(titles, article numbers)")
    max_len: int = Field(128, ge=8, description="tokens kept per line")


@register_source("udhr", options=UDHROptions)
def udhr_splits(o: UDHROptions) -> Splits:
    split = read_splits(o.split)
    bases = {p: {c.split("_")[0] for c in codes} for p, codes in split.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = bases[a] & bases[b]
        if shared:
            raise DatasetError(f"split {o.split!r}: varieties of {sorted(shared)[:5]} are in "
                               f"both {a} and {b}; keep a language's varieties in one split")
    codes = [c for p in ("train", "val", "test") for c in split[p]]
    texts_by = read_udhr(o.data_dir, codes)
    texts, labels = [], []
    for i, c in enumerate(codes):
        lines = example_lines(texts_by[c], o.min_chars)
        texts += lines
        labels += [i] * len(lines)
    train_texts = [t for t, y in zip(texts, labels) if y < len(split["train"])]
    tok = source_tokenizer(o, train_texts)
    data = TextData(encode_all(tok, texts), labels, codes, o.max_len, texts=texts)
    data.scripts = [dominant_script(texts_by[c]) for c in codes]  # type: ignore[attr-defined]
    ids, start = [], 0
    for p in ("train", "val", "test"):
        ids.append(np.arange(start, start + len(split[p])))
        start += len(split[p])
    srcs = fewshot_splits(data, o.n_way, o.k_shot, o.n_query, splits=ids,
                          eval_n_query=o.eval_n_query, train_n_way=o.train_n_way,
                          names=["UDHR meta-train", "UDHR meta-val", "UDHR meta-test"])
    out = Splits(*srcs, o.info())
    out.tokenizer = tok  # type: ignore[attr-defined]
    return out
