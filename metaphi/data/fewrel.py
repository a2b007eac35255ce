"""FewRel's public labelled sets (Han et al. 2018; Gao et al. 2019, FewRel 2.0) in four domains:
Wikipedia (``wiki``, 16 relations), New York Times (``nyt``, 25), SemEval-2010 task 8
(``semeval``, 17) and biomedical abstracts (``pubmed``, 10).

Data: ``val_<domain>.json`` (and ``pid2name.json``) of the repository thunlp/FewRel at a pinned
commit, each checked against its SHA-256, in the FewRel folder (``data_dir/fewrel`` or
``$METAPHI_DATA/fewrel``); :func:`download_fewrel` fetches them.

An instance is a tokenised sentence with a head and a tail entity. Its text is the tokens
joined by spaces with entity markers around the two mentions:
``... [E1] mhc [/E1] ii [E2] antigen presentation [/E2] ...``; the markers are special tokens
of every tokenizer, so an encoder sees which words are the entities.

Splits (``splits/fewrel_domains``, names ``domain/relation``): the cross-domain setting of
FewRel 2.0, meta-training on wiki, nyt and semeval relations and meta-testing on all pubmed
relations. A quarter of each source domain's relations is held out for meta-validation.
Meta-train and meta-test tasks are drawn inside one domain; meta-val tasks draw from the
held-out relations of the three source domains together (no source domain keeps five of them).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from pydantic import Field

from ..registry import register_source
from ..tasks.domains import DomainFewShotSource
from ..tasks.fewshot import FewShotSource
from ..tasks.sources import Splits
from ..tasks.text import TextData, TextOptions, encode_all
from .download import RemoteFile
from .textsets import (DatasetError, dataset_dir, fetch, read_splits, source_tokenizer,
                       verify_present)

COMMIT = "278a2315d2138810a379cd8d5718914dc56e2582"
OFFICIAL_BASE_URL = f"https://raw.githubusercontent.com/thunlp/FewRel/{COMMIT}/data"
DOMAINS = ("wiki", "nyt", "semeval", "pubmed")
CHECKSUMS = {
    "val_wiki.json": "76bb44c2485b6faed358a3ce040eadafcc8a8835245cd7e6afc1bef672d4a0bf",
    "val_nyt.json": "b519adc61a2bab0f05178e33a3cd8f284338b635629493e9e09616ba81bb428e",
    "val_semeval.json": "fd79cf35481f6596c23b92cd3ded3265481f3027a4b78d99921104f8fe632eb5",
    "val_pubmed.json": "fc0f13b534f6664fe0d8aec231d7590313bc6510d00dbc1b6746147f6a2b46e6",
}


def fewrel_dir(root: str | Path | None = None) -> Path:
    return dataset_dir("fewrel", root, marker=tuple(CHECKSUMS))


def remote_files(base_url: str | None = None) -> list[RemoteFile]:
    base = (base_url or os.environ.get("METAPHI_FEWREL_URL") or OFFICIAL_BASE_URL).rstrip("/")
    return [RemoteFile(name, f"{base}/{name}", (("sha256", digest),))
            for name, digest in CHECKSUMS.items()]


def download_fewrel(root: str | Path | None = None, *, base_url: str | None = None,
                    timeout: float = 60.0, progress: bool | None = None) -> Path:
    """Fetch the four labelled FewRel files (each verified against its SHA-256) into the
    FewRel folder; return the folder."""
    folder = fewrel_dir(root)
    fetch(remote_files(base_url), folder, timeout=timeout, progress=progress)
    return folder


def mark_entities(tokens: list[str], head: list, tail: list) -> str:
    """The sentence with ``[E1] ... [/E1]`` around the head's first mention and ``[E2] ...
    [/E2]`` around the tail's."""
    h, t = head[2][0], tail[2][0]
    before = {h[0]: "[E1] ", t[0]: "[E2] "}
    after = {h[-1]: " [/E1]", t[-1]: " [/E2]"}
    out = []
    for i, tok in enumerate(tokens):
        out.append(before.get(i, "") + tok + after.get(i, ""))
    return " ".join(out)


def read_fewrel(root: str | Path | None = None, domains: tuple[str, ...] = DOMAINS,
                verify: bool = True) -> dict[str, dict[str, list[str]]]:
    """Domain -> relation -> marked sentences; every file checked and parsed strictly."""
    folder = fewrel_dir(root)
    out = {}
    for d in domains:
        path = folder / f"val_{d}.json"
        if not path.is_file():
            raise DatasetError(f"FewRel file {path} is missing; download it with "
                               "`metaphi data fewrel --download`")
        if verify:
            verify_present(path, (("sha256", CHECKSUMS[path.name]),))
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DatasetError(f"{path} is not valid UTF-8 JSON ({e})") from None
        rels: dict[str, list[str]] = {}
        for rel, items in raw.items():
            texts = []
            for i, inst in enumerate(items):
                try:
                    texts.append(mark_entities(inst["tokens"], inst["h"], inst["t"]))
                except (KeyError, IndexError, TypeError) as e:
                    raise DatasetError(f"{path}: relation {rel}, instance {i} is not "
                                       f"{{tokens, h, t}} with entity positions ({e!r})") from None
            rels[rel] = texts
        out[d] = rels
    return out


class FewRelOptions(TextOptions):
    """``task:`` options of cross-domain few-shot relation classification (FewRel 2.0)."""

    source: str = "fewrel"
    n_way: int = Field(5, ge=2, description="relations per task")
    k_shot: int = Field(1, ge=1, description="support sentences per relation")
    n_query: int = Field(5, ge=1, description="query sentences per relation, meta-train")
    eval_n_query: int | None = Field(10, ge=1, description="query sentences per relation, "
                                     "meta-val/meta-test")
    split: str = Field("fewrel_domains", description="relation split: fewrel_domains "
                       "(meta-train wiki+nyt+semeval, meta-test pubmed) or a folder with "
                       "train/val/test.txt (domain/relation, one a line)")


@register_source("fewrel", options=FewRelOptions)
def fewrel_splits(o: FewRelOptions) -> Splits:
    split = read_splits(o.split)
    for p, names in split.items():
        bad = [n for n in names if n.split("/")[0] not in DOMAINS or "/" not in n]
        if bad:
            raise DatasetError(f"split {o.split!r} {p}: {bad[:5]} are not domain/relation "
                               f"names (domains {DOMAINS})")
    used = tuple(d for d in DOMAINS if any(n.startswith(d + "/") for v in split.values()
                                           for n in v))
    raw = read_fewrel(o.data_dir, used)
    classes = [n for p in ("train", "val", "test") for n in split[p]]
    texts, labels, domains = [], [], []
    for c, name in enumerate(classes):
        d, rel = name.split("/", 1)
        if rel not in raw[d]:
            raise DatasetError(f"split {o.split!r} names {name}, which FewRel's {d} set lacks")
        texts += raw[d][rel]
        labels += [c] * len(raw[d][rel])
        domains += [used.index(d)] * len(raw[d][rel])
    n_train = len(split["train"])
    tok = source_tokenizer(o, [t for t, y in zip(texts, labels) if y < n_train])
    data = TextData(encode_all(tok, texts), labels, classes, o.max_len, domains=domains,
                    domain_names=list(used), texts=texts)
    part = {p: np.isin(data.labels, [classes.index(n) for n in split[p]])
            for p in ("train", "val", "test")}
    doms = {p: sorted({n.split("/")[0] for n in split[p]}) for p in split}
    q = o.eval_n_query or o.n_query
    train = DomainFewShotSource(data, doms["train"], o.train_n_way or o.n_way, o.k_shot,
                                o.n_query, "FewRel meta-train", items=np.nonzero(part["train"])[0])
    val = FewShotSource(data, [classes.index(n) for n in split["val"]], o.n_way, o.k_shot, q,
                        name="FewRel meta-val")
    test = DomainFewShotSource(data, doms["test"], o.n_way, o.k_shot, q, "FewRel meta-test",
                               items=np.nonzero(part["test"])[0])
    out = Splits(train, val, test, o.info())
    out.tokenizer = tok  # type: ignore[attr-defined]
    return out
