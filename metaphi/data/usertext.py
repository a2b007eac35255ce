"""A user's own labelled text as a task source (``task: {source: text, data_dir: ...}``).

Two layouts, both UTF-8:

- a CSV file with a header and the columns ``text`` and ``label`` (and optionally ``domain``:
  a language, a corpus, a customer...), one example a row;
- a folder with one entry per class: a sub-folder ``<class>/`` of ``.txt`` files (each file
  one example), or a file ``<class>.txt`` (each non-empty line one example).

``split: classes`` (default) gives meta-train, meta-val and meta-test disjoint classes (random
fractions of the classes, drawn with ``split_seed``): tasks learn new label sets. ``split:
domains`` (CSV with a ``domain`` column) gives them disjoint domains with the label set
shared: tasks learn the same labels in a new domain, each task inside one domain. ``split:
dg`` is domain generalisation: the meta-train and meta-val domains are the sources, the
meta-test domains the targets; meta-train tasks are batches of one source domain with the global labels (``k_shot`` + ``n_query`` examples), meta-val batches
come from a held-out ``holdout_fraction`` of the source domains' examples (training-domain
validation), meta-test batches from the target domains with an empty support set (for the
``erm``, ``mldg`` and ``fish`` learners).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from ..registry import register_source
from ..tasks.fewshot import fewshot_splits, split_classes
from ..tasks.sources import Splits
from ..tasks.domains import DomainBatchSource, DomainFewShotSource
from ..tasks.text import TextData, TextDataError, TextOptions, check_texts, encode_all, read_utf8
from .textsets import source_tokenizer


class LabelledTexts:
    """Texts with their labels (and domains), and where each came from (for error messages)."""

    def __init__(self, texts: list[str], labels: list[str], where: list[str],
                 domains: list[str] | None = None, origin: str = "") -> None:
        self.texts, self.labels, self.where, self.domains = texts, labels, where, domains
        self.origin = origin


def read_text_csv(path: str | Path, need_label: bool = True) -> LabelledTexts:
    """A CSV file with ``text`` and ``label`` columns (``label`` optional when not
    ``need_label``; ``domain`` optional). Empty texts or labels are errors naming the row."""
    path = Path(path)
    raw = read_utf8(path)
    reader = csv.DictReader(io.StringIO(raw, newline=""))
    cols = [c.strip() for c in (reader.fieldnames or [])]
    reader.fieldnames = cols
    need = ["text", "label"] if need_label else ["text"]
    missing = [c for c in need if c not in cols]
    if missing:
        raise TextDataError(f"{path}: the header must name the columns {', '.join(need)} (and "
                            f"optionally domain); found {cols or 'no header'}, missing "
                            f"{', '.join(missing)}")
    texts, labels, where, domains = [], [], [], []
    has_domain = "domain" in cols
    for n, row in enumerate(reader, start=2):
        text = row.get("text")
        if text is None:
            raise TextDataError(f"{path}:{n}: the row has fewer fields than the header")
        texts.append(text)
        where.append(f"{path}:{n}")
        label = (row.get("label") or "").strip()
        if need_label and not label:
            raise TextDataError(f"{path}:{n}: empty label; give every row a label")
        labels.append(label)
        if has_domain:
            domains.append((row.get("domain") or "").strip())
    if not texts:
        raise TextDataError(f"{path}: no rows below the header")
    check_texts(texts, where)
    if has_domain and any(not d for d in domains):
        bad = [w for w, d in zip(where, domains) if not d][:5]
        raise TextDataError(f"empty domain at {', '.join(bad)}; fill the domain column in "
                            "every row or drop the column")
    return LabelledTexts(texts, labels, where, domains if has_domain else None, str(path))


def read_text_folder(root: str | Path) -> LabelledTexts:
    """``root/<class>/*.txt`` (a file per example) or ``root/<class>.txt`` (a line per
    example)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"text folder {root} does not exist; expected "
                                f"{root}/<class>/<example>.txt or {root}/<class>.txt")
    texts, labels, where = [], [], []
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    for p in entries:
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() == ".txt")
            if not files:
                raise TextDataError(f"class folder {p} holds no .txt files")
            for f in files:
                texts.append(read_utf8(f).strip())
                labels.append(p.name)
                where.append(str(f))
        elif p.suffix.lower() == ".txt":
            lines = [(i, line.strip()) for i, line in enumerate(read_utf8(p).splitlines(), 1)]
            lines = [(i, line) for i, line in lines if line]
            if not lines:
                raise TextDataError(f"{p} is empty: a class file needs one example a line")
            for i, line in lines:
                texts.append(line)
                labels.append(p.stem)
                where.append(f"{p}:{i}")
    if not texts:
        raise TextDataError(f"{root} has no class folders of .txt files and no <class>.txt "
                            "files")
    check_texts(texts, where)
    return LabelledTexts(texts, labels, where, None, str(root))


def read_texts(path: str | Path, need_label: bool = True) -> LabelledTexts:
    """A CSV file or a folder, by what ``path`` is."""
    path = Path(path)
    if path.is_file():
        return read_text_csv(path, need_label)
    if path.is_dir():
        return read_text_folder(path)
    raise FileNotFoundError(f"{path} does not exist: give a CSV file (columns text,label) or a "
                            "folder of <class>/ sub-folders or <class>.txt files")


class TextSourceOptions(TextOptions):
    """``task:`` options of a user's own text (CSV file or folder)."""

    source: str = "text"
    data_dir: str = Field(description="the CSV file (text,label[,domain]) or the folder of "
                          "classes")
    split: Literal["classes", "domains", "dg"] = Field(
        "classes", description="classes: meta-train/val/test get disjoint classes; domains: "
        "disjoint domains (CSV domain column), the label set shared; dg: domain "
        "generalisation over that domain split (no support set in a target domain)")
    holdout_fraction: float = Field(0.2, gt=0, lt=1, description="split dg: share of the "
                                    "source domains' examples held out for meta-validation")
    split_fractions: tuple[float, float, float] = Field(
        (0.6, 0.2, 0.2), description="fractions of the classes (or domains) for meta-train, "
        "meta-val, meta-test")
    split_seed: int = Field(0, description="seed of the random split")


@register_source("text", options=TextSourceOptions)
def text_splits(o: TextSourceOptions) -> Splits:
    lt = read_texts(o.data_dir)
    names = sorted(set(lt.labels))
    y = np.asarray([names.index(label) for label in lt.labels])
    if o.split == "classes":
        parts = split_classes(len(names), o.split_fractions, o.split_seed)
        train_items = np.isin(y, parts[0])
    else:
        if lt.domains is None:
            raise TextDataError(f"{lt.origin}: split {o.split!r} needs a domain column")
        dnames = sorted(set(lt.domains))
        parts = split_classes(len(dnames), o.split_fractions, o.split_seed)
        empty = [w for w, p in zip(("meta-train", "meta-val", "meta-test"), parts) if len(p) == 0]
        if empty:
            raise TextDataError(f"{lt.origin}: {len(dnames)} domains are too few to give "
                                f"{', '.join(empty)} a domain; add domains or change "
                                "split_fractions")
        d = np.asarray([dnames.index(x) for x in lt.domains])
        train_items = np.isin(d, parts[0])
    tok = source_tokenizer(o, [t for t, keep in zip(lt.texts, train_items) if keep])
    ids = encode_all(tok, lt.texts)
    kw = {}
    if lt.domains is not None:
        dnames = sorted(set(lt.domains))
        kw = {"domains": [dnames.index(x) for x in lt.domains], "domain_names": dnames}
    data = TextData(ids, y, names, o.max_len, texts=lt.texts, **kw)
    where = f"{lt.origin}: "
    if o.split == "dg":
        return _dg_splits(o, data, [[dnames[i] for i in p] for p in parts], tok, where)
    try:
        if o.split == "classes":
            srcs: tuple = fewshot_splits(data, o.n_way, o.k_shot, o.n_query, splits=parts,
                                         eval_n_query=o.eval_n_query, train_n_way=o.train_n_way,
                                         names=[where + n for n in ("meta-train", "meta-val",
                                                                    "meta-test")])
        else:
            srcs = tuple(DomainFewShotSource(
                data, [dnames[i] for i in p], (o.train_n_way or o.n_way) if s == 0 else o.n_way,
                o.k_shot, o.n_query if s == 0 else (o.eval_n_query or o.n_query),
                name=where + ("meta-train", "meta-val", "meta-test")[s])
                for s, p in enumerate(parts))
    except ValueError as e:
        raise TextDataError(str(e)) from None
    splits = Splits(*srcs, o.info())
    splits.tokenizer = tok  # type: ignore[attr-defined]
    return splits


def _dg_splits(o: TextSourceOptions, data: TextData, parts: list[list[str]], tok,
               where: str) -> Splits:
    if len(data.class_names) != o.n_way:
        raise TextDataError(f"{where}split dg: the data has {len(data.class_names)} labels; set "
                            f"task.n_way={len(data.class_names)} (the classifier's outputs)")
    rng = np.random.default_rng(o.split_seed)
    sources = parts[0] + parts[1]  # the meta-val domains are sources too: validation is in-domain
    in_source = np.isin(data.domains, [data.domain_names.index(d) for d in sources])
    held = rng.random(len(data)) < o.holdout_fraction
    q = o.eval_n_query or o.n_query
    try:
        srcs = (DomainBatchSource(data, sources, o.k_shot, o.n_query, where + "meta-train",
                                  items=np.nonzero(in_source & ~held)[0]),
                DomainBatchSource(data, sources, 0, q, where + "meta-val (held-out examples "
                                  "of the source domains)", items=np.nonzero(in_source & held)[0]),
                DomainBatchSource(data, parts[2], 0, q, where + "meta-test (target domains)"))
    except ValueError as e:
        raise TextDataError(str(e)) from None
    splits = Splits(*srcs, o.info())
    splits.tokenizer = tok  # type: ignore[attr-defined]
    return splits
