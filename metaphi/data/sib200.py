"""SIB-200 (Adelani et al., EACL 2024): 7-topic classification of the same 1004 FLORES-200
sentences in 205 languages and dialects, split 701 train / 99 dev / 204 test identically in
every language.

Data layout, in one *SIB-200 folder* (``data_dir/sib200`` or ``$METAPHI_DATA/sib200``):
either any zip holding ``.../annotated/<lang_Script>/{train,dev,test}.tsv`` (the repository's
archive, or the repacked ``sib-200-annotated.zip``), or those files extracted
(``annotated/<lang_Script>/<split>.tsv``). Each file is tab-separated with the header
``index_id, category, text``. Every file is checked against the SHA-256 of the repository's
copy at the pinned commit (``splits/sib200/manifest.tsv``), so a damaged or edited file is an
error naming it. :func:`download_sib200` fetches the files from the repository.

Task sources (registered):

- ``sib200``: cross-lingual few-shot topic classification. Meta-train, meta-val and meta-test
  languages are disjoint (``split``: the shipped ``sib200_language`` or ``sib200_script``
  split, or a folder); a task is a 7-way K-shot episode inside one language. Sentences are
  disjoint too: meta-train languages give their ``train`` sentences, meta-val languages their
  ``dev`` sentences and meta-test languages their ``test`` sentences, so a meta-test sentence
  was never seen, in any language, during meta-training. ``task.meta`` records the language
  (``domain``), its name, script, family and whether its script occurs in meta-training.
- ``sib200_dg``: domain generalisation with languages as domains (see :func:`sib200_dg_splits`).
"""
from __future__ import annotations

import csv
import io
import os
import re
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from pydantic import Field

from ..registry import register_source
from ..tasks.domains import DomainBatchSource, DomainFewShotSource
from ..tasks.sources import Splits
from ..tasks.text import TextData, TextOptions, encode_all
from .download import RemoteFile
from .textsets import (PACKAGE_SPLITS, DatasetError, dataset_dir, fetch, open_zip, read_splits,
                       source_tokenizer)

COMMIT = "593cea88519930f776c1a4a1980b6a35b39dca57"
OFFICIAL_BASE_URL = f"https://raw.githubusercontent.com/dadelani/sib-200/{COMMIT}/data/annotated"
# the repacked archive of the same files (see the data's SOURCE.md)
REPACKED = ("sib-200-annotated.zip",
            (("sha256", "0c9292824c5ab98d620ab6b78e8ccd18187799210eadfdc8c99f82c41f02b09d"),))
LABELS = ("science/technology", "travel", "politics", "sports", "health", "entertainment",
          "geography")
SENTENCES = {"train": 701, "dev": 99, "test": 204}
HEADER = ["index_id", "category", "text"]
META = PACKAGE_SPLITS / "sib200"
_FILE_RE = re.compile(r"(?:^|/)annotated/([a-z]{3}_[A-Z][a-z]{3})/(train|dev|test)\.tsv$")
_NESTED_RE = re.compile(r"(?:^|/)annotated/([a-z]{3}_[A-Z][a-z]{3})\.zip$")


def languages() -> dict[str, dict[str, str]]:
    """Every SIB-200 language code -> ``{"name", "script", "family"}`` (script from the code's
    ISO 15924 suffix; family from Glottolog's top-level families)."""
    rows = (META / "languages.tsv").read_text(encoding="utf-8").splitlines()[1:]
    out = {}
    for row in rows:
        code, name, family = row.split("\t")
        out[code] = {"name": name, "script": code.split("_")[1], "family": family}
    return out


def manifest() -> dict[str, str]:
    """``"<lang>/<split>.tsv"`` -> SHA-256 of the repository's file."""
    rows = (META / "manifest.tsv").read_text().splitlines()[1:]
    return dict(row.split("\t") for row in rows)


def sib200_dir(root: str | Path | None = None) -> Path:
    return dataset_dir("sib200", root, marker=(REPACKED[0], "annotated"))


def remote_files(base_url: str | None = None) -> list[RemoteFile]:
    """The 615 ``.tsv`` files of the pinned commit, each with its SHA-256. ``base_url``
    defaults to ``$METAPHI_SIB200_URL`` (a mirror with the same layout) or the repository."""
    base = (base_url or os.environ.get("METAPHI_SIB200_URL") or OFFICIAL_BASE_URL).rstrip("/")
    return [RemoteFile(f"annotated/{rel}", f"{base}/{rel}", (("sha256", digest),))
            for rel, digest in manifest().items()]


def download_sib200(root: str | Path | None = None, *, base_url: str | None = None,
                    languages: list[str] | None = None, timeout: float = 60.0,
                    progress: bool | None = None) -> Path:
    """Fetch the SIB-200 files (all languages, or ``languages``) into
    ``<SIB-200 folder>/annotated/`` and return the folder. Each file is verified against its
    SHA-256 before it is moved into place; files already present and verified are kept."""
    folder = sib200_dir(root)
    files = remote_files(base_url)
    if languages is not None:
        files = [f for f in files if f.name.split("/")[1] in set(languages)]
    fetch(files, folder, timeout=timeout, progress=progress)
    return folder


def _sources(folder: Path) -> Iterator[tuple[str, str, str, Callable[[], bytes]]]:
    """(lang, split, where, read bytes) for every data file in the folder's zips and files."""
    if not folder.is_dir():
        raise DatasetError(f"SIB-200 folder {folder} does not exist; download it with "
                           "metaphi.data.sib200.download_sib200() or `metaphi data sib200 "
                           "--download`, or set METAPHI_DATA to the folder holding sib200/")
    for z in sorted(folder.glob("*.zip")):
        zf = open_zip(z)
        for name in zf.namelist():
            m = _FILE_RE.search(name)
            if m:
                yield m[1], m[2], f"{z}:{name}", (lambda zf=zf, n=name: zf.read(n))
            m = _NESTED_RE.search(name)
            if m:  # one language zipped inside the archive (nqo_Nkoo in the repository)
                inner = zipfile.ZipFile(io.BytesIO(zf.read(name)))
                for n2 in inner.namelist():
                    m2 = re.search(r"(?:^|/)([a-z]{3}_[A-Z][a-z]{3})/(train|dev|test)\.tsv$", n2)
                    if m2 and "__MACOSX" not in n2:
                        yield (m2[1], m2[2], f"{z}:{name}:{n2}",
                               (lambda inner=inner, n=n2: inner.read(n)))
    for p in sorted(folder.rglob("*.tsv")):
        m = _FILE_RE.search(p.relative_to(folder).as_posix())
        if m:
            yield m[1], m[2], str(p), p.read_bytes


def read_sib200(root: str | Path | None = None, wanted: dict[str, list[str]] | None = None,
                verify: bool = True) -> dict[tuple[str, str], list[tuple[int, str, str]]]:
    """The rows ``(index_id, category, text)`` of each wanted ``(language, split)`` (``wanted``:
    split -> languages; default every file). Files are checked against their SHA-256 and
    parsed strictly: a missing, damaged or malformed file is an error naming it."""
    folder = sib200_dir(root)
    digests = manifest()
    want = ({(lang, s) for s, langs in wanted.items() for lang in langs} if wanted is not None
            else {tuple(k[:-4].split("/")) for k in digests})
    found: dict[tuple[str, str], list[tuple[int, str, str]]] = {}
    for lang, split, where, read in _sources(folder):
        if (lang, split) not in want or (lang, split) in found:
            continue
        key = (where, _stamp(where), verify)
        if key in _PARSED:  # already read, checked and parsed in this process
            found[(lang, split)] = _PARSED[key]
            continue
        data = read()
        if verify:
            import hashlib

            key = f"{lang}/{split}.tsv"
            if key not in digests:
                raise DatasetError(f"{where}: {lang} is not a SIB-200 language")
            if hashlib.sha256(data).hexdigest() != digests[key]:
                raise DatasetError(f"{where} does not match the SIB-200 file {key} of the "
                                   f"repository (SHA-256 differs): it is damaged, truncated or "
                                   "edited; download it again")
        found[(lang, split)] = _PARSED[key] = parse_tsv(data, where, split)
    missing = sorted(want - set(found))
    if missing:
        shown = ", ".join(f"{lang}/{s}.tsv" for lang, s in missing[:8])
        raise DatasetError(f"SIB-200 in {folder} lacks {len(missing)} file(s): {shown}"
                           f"{' ...' if len(missing) > 8 else ''}; expected a zip holding "
                           "annotated/<lang>/<split>.tsv or those files extracted. Download "
                           "them with `metaphi data sib200 --download`")
    return found


_PARSED: dict[tuple[str, tuple[int, int], bool], list[tuple[int, str, str]]] = {}


def _stamp(where: str) -> tuple[int, int]:
    """(mtime, size) of the file, or of the zip, that ``where`` names."""
    st = os.stat(where.split(":")[0] if ".zip:" in where else where)
    return st.st_mtime_ns, st.st_size


def parse_tsv(data: bytes, where: str, split: str | None = None) -> list[tuple[int, str, str]]:
    """One SIB-200 file's rows, validated: the header, the categories, no empty text, and the
    split's number of sentences."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{where}: not valid UTF-8 at byte {e.start}") from None
    rows = list(csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or rows[0] != HEADER:
        raise DatasetError(f"{where}: the header must be {HEADER}, got "
                           f"{rows[0] if rows else 'an empty file'}")
    out = []
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != 3 or not row[0].isdigit():
            raise DatasetError(f"{where}:{n}: expected index_id<TAB>category<TAB>text, got "
                               f"{row[:3]}")
        if row[1] not in LABELS:
            raise DatasetError(f"{where}:{n}: unknown category {row[1]!r} (one of {LABELS})")
        if not row[2].strip():
            raise DatasetError(f"{where}:{n}: empty text")
        out.append((int(row[0]), row[1], row[2]))
    if split is not None and len(out) != SENTENCES[split]:
        raise DatasetError(f"{where}: {len(out)} sentences, SIB-200's {split} split has "
                           f"{SENTENCES[split]}; the file is incomplete")
    return out


class SIB200Options(TextOptions):
    """``task:`` options of SIB-200 cross-lingual few-shot topic classification."""

    source: str = "sib200"
    n_way: int = Field(7, ge=2, le=7, description="topics per task (all 7 by default)")
    k_shot: int = Field(5, ge=1, description="support sentences per topic")
    n_query: int = Field(10, ge=1, description="query sentences per topic, meta-train tasks")
    eval_n_query: int | None = Field(10, ge=1, le=12, description="query sentences per topic, "
                                     "meta-test tasks (test split: the rarest topic has 17)")
    val_n_query: int = Field(3, ge=1, description="query sentences per topic, meta-val tasks "
                             "(dev split: the rarest topic has 8 sentences)")
    split: str = Field("sib200_language", description="language split: sib200_language "
                       "(held-out languages, some of unseen scripts), sib200_script (whole "
                       "scripts held out), or a folder with train/val/test.txt")
    max_len: int = Field(256, ge=8, description="tokens kept per sentence")


def language_meta(split: dict[str, list[str]]) -> dict[str, dict]:
    """Per language: name, script, family, and whether its script occurs in meta-training."""
    table = languages()
    unknown = sorted({lang for langs in split.values() for lang in langs} - set(table))
    if unknown:
        raise DatasetError(f"the split names languages SIB-200 does not have: {unknown[:10]}")
    seen = {table[lang]["script"] for lang in split["train"]}
    return {lang: {"language": info["name"], "script": info["script"], "family": info["family"],
                   "seen_script": info["script"] in seen} for lang, info in table.items()}


def _text_data(rows: dict, order: list[tuple[str, str]], o: TextOptions, tok) -> TextData:
    texts, labels, domains, sentence = [], [], [], []
    langs = sorted({lang for lang, _ in order})
    label_id = {c: i for i, c in enumerate(LABELS)}
    for lang, split in order:
        r = rows[(lang, split)]
        texts += [t for _, _, t in r]
        labels += [label_id[c] for _, c, _ in r]
        sentence += [i for i, _, _ in r]
        domains += [langs.index(lang)] * len(r)
    data = TextData(encode_all(tok, texts), labels, list(LABELS), o.max_len, domains=domains,
                    domain_names=langs, texts=texts)
    data.sentence = np.asarray(sentence)  # FLORES sentence ids (the same in every language)
    return data


@register_source("sib200", options=SIB200Options)
def sib200_splits(o: SIB200Options) -> Splits:
    split = read_splits(o.split)
    meta = language_meta(split)
    sentences = {"train": "train", "val": "dev", "test": "test"}
    rows = read_sib200(o.data_dir, {sentences[p]: langs for p, langs in split.items()})
    tok = source_tokenizer(o, [t for lang in split["train"] for _, _, t in rows[(lang, "train")]])
    order = [(lang, sentences[p]) for p in ("train", "val", "test") for lang in split[p]]
    data = _text_data(rows, order, o, tok)
    queries = {"train": o.n_query, "val": o.val_n_query, "test": o.eval_n_query or o.n_query}
    srcs = [DomainFewShotSource(data, split[p], (o.train_n_way or o.n_way) if p == "train"
                                else o.n_way, o.k_shot, queries[p], name=f"SIB-200 meta-{p}",
                                domain_meta=meta)
            for p in ("train", "val", "test")]
    out = Splits(*srcs, o.info())
    out.tokenizer = tok  # type: ignore[attr-defined]
    return out


class SIB200DGOptions(TextOptions):
    """``task:`` options of SIB-200 domain generalisation (languages as domains)."""

    source: str = "sib200_dg"
    n_way: int = Field(7, ge=7, le=7, description="the 7 topics (the shared label set)")
    k_shot: int = Field(16, ge=1, description="meta-train batches: examples a source language "
                        "gives to the learner's support half (MLDG/Fish use both halves)")
    n_query: int = Field(16, ge=1, description="meta-train batches: examples in the query half")
    eval_n_query: int | None = Field(32, ge=1, description="examples of one language per "
                                     "meta-val / meta-test batch")
    split: str = Field("sib200_language", description="language split (as for sib200); "
                       "meta-train and meta-val languages are the source domains, meta-test "
                       "languages the targets")
    holdout_fraction: float = Field(0.2, gt=0, lt=1, description="share of the source "
                                    "languages' sentences held out for model selection "
                                    "(DomainBed's training-domain validation)")
    holdout_seed: int = Field(0, description="seed of the held-out sentence draw")
    max_len: int = Field(256, ge=8, description="tokens kept per sentence")


@register_source("sib200_dg", options=SIB200DGOptions)
def sib200_dg_splits(o: SIB200DGOptions) -> Splits:
    """Domain generalisation on SIB-200 with languages as domains and the 7 topics shared.

    Source languages (the split's meta-train and meta-val languages) give their ``train``
    sentences; a fixed ``holdout_fraction`` of the sentence ids (the same ids in every
    language) is held out, and meta-validation batches come from those held-out sentences of
    the source languages (DomainBed's training-domain validation: model selection never sees a
    target language). Meta-train tasks are batches of one source language with the global
    labels (support + query halves); meta-test tasks are batches of one target language's
    ``test`` sentences with an empty support set: a target language gives no labelled data.
    """
    split = read_splits(o.split)
    sources = split["train"] + split["val"]
    meta = language_meta({"train": sources, "val": [], "test": split["test"]})
    rows = read_sib200(o.data_dir, {"train": sources, "test": split["test"]})
    ids = np.asarray(sorted(i for i, _, _ in rows[(sources[0], "train")]))
    held = set(np.random.default_rng(o.holdout_seed).choice(
        ids, size=round(o.holdout_fraction * len(ids)), replace=False).tolist())
    tok = source_tokenizer(o, [t for lang in sources for i, _, t in rows[(lang, "train")]
                               if i not in held])
    data = _text_data(rows, [(lang, "train") for lang in sources] +
                      [(lang, "test") for lang in split["test"]], o, tok)
    is_train_split = np.zeros(len(data), bool)
    is_train_split[:sum(len(rows[(lang, "train")]) for lang in sources)] = True
    in_held = np.isin(data.sentence, list(held))
    train_items = np.nonzero(is_train_split & ~in_held)[0]
    val_items = np.nonzero(is_train_split & in_held)[0]
    test_items = np.nonzero(~is_train_split)[0]
    q = o.eval_n_query or o.n_query
    out = Splits(DomainBatchSource(data, sources, o.k_shot, o.n_query, "SIB-200 DG meta-train",
                                   meta, train_items),
                 DomainBatchSource(data, sources, 0, q, "SIB-200 DG meta-val (held-out "
                                   "sentences of the source languages)", meta, val_items),
                 DomainBatchSource(data, split["test"], 0, q, "SIB-200 DG meta-test (target "
                                   "languages)", meta, test_items),
                 o.info())
    out.tokenizer = tok  # type: ignore[attr-defined]
    return out

