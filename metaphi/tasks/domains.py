"""Tasks drawn inside one domain at a time (a language, a corpus, a hospital).

Labelled data with domains has, besides ``labels`` and ``get``, an int array ``domains`` (one
domain id per item) and ``domain_names``. Two task shapes:

- :class:`DomainFewShotSource`: N-way K-shot tasks inside one domain (cross-lingual few-shot:
  a task is a handful of labelled examples of a new language);
- :class:`DomainBatchSource`: batches of one domain with the global labels (domain
  generalisation: ERM, MLDG and Fish learn one classifier over the shared label set; a target
  domain's tasks have an empty support set, since a target domain gives no labelled data).

Both record ``meta["domain"]`` (and whatever ``domain_meta[name]`` adds: script, family).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from .fewshot import ClassIndex, LabelledData
from .task import Task


class DomainDataError(ValueError):
    """Domain data that cannot give the asked tasks."""


def _domain_items(data: LabelledData, domains: Sequence[str], items: np.ndarray | None,
                  name: str) -> list[tuple[str, np.ndarray]]:
    """(domain name, its allowed item indices) for each asked domain."""
    if getattr(data, "domains", None) is None:
        raise DomainDataError(f"{name}: the data has no domains")
    names = {d: i for i, d in enumerate(data.domain_names)}
    unknown = [d for d in domains if d not in names]
    if unknown:
        raise DomainDataError(f"{name}: unknown domain(s) {unknown[:10]}; the data has "
                              f"{len(names)} domains (e.g. {list(names)[:5]})")
    allowed = np.ones(len(data.labels), bool)
    if items is not None:
        allowed[:] = False
        allowed[np.asarray(items, dtype=np.int64)] = True
    return [(d, np.nonzero((data.domains == names[d]) & allowed)[0]) for d in domains]


@dataclass
class DomainFewShotSource:
    """N-way K-shot tasks inside one domain: a task picks a domain, then ``n_way`` of its
    classes with at least ``k_shot + n_query`` examples each. Labels are 0..N-1 in a random
    order, as in :class:`~metaphi.tasks.FewShotSource`; ``items`` restricts the data (e.g. to
    one sentence split)."""

    data: LabelledData
    domains: Sequence[str]
    n_way: int
    k_shot: int
    n_query: int
    name: str = "tasks"
    domain_meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    items: np.ndarray | None = None

    def __post_init__(self) -> None:
        need = self.k_shot + self.n_query
        self._by_domain: list[tuple[str, list[np.ndarray], list[int]]] = []
        short = []
        for d, idx in _domain_items(self.data, self.domains, self.items, self.name):
            index = ClassIndex(self.data.labels[idx])
            classes = [c for c in index.classes if index.count(c) >= need]
            if len(classes) < self.n_way:
                counts = {self.data.class_names[c]: index.count(c) for c in index.classes}
                short.append(f"{d} ({len(classes)} of {len(index.classes)} classes have "
                             f">= {need}; counts {counts})")
                continue
            self._by_domain.append((d, [idx[index[c]] for c in classes], classes))
        if short:
            raise DomainDataError(
                f"{self.name}: {self.n_way}-way {self.k_shot}-shot tasks with {self.n_query} "
                f"queries per class need {self.n_way} classes with at least {need} examples in "
                f"every domain, but these domains fall short: {'; '.join(short[:5])}"
                f"{' ...' if len(short) > 5 else ''}. Lower n_way, k_shot or n_query, or leave "
                "those domains out")
        if not self._by_domain:
            raise DomainDataError(f"{self.name}: no domains to draw tasks from")

    def sample(self, rng: np.random.Generator) -> Task:
        d, groups, classes = self._by_domain[int(rng.integers(len(self._by_domain)))]
        chosen = rng.choice(len(groups), size=self.n_way, replace=False)
        k, q = self.k_shot, self.n_query
        sup, qry = [], []
        for c in chosen:
            items = groups[int(c)]
            pick = items[rng.choice(len(items), size=k + q, replace=False)]
            sup.append(pick[:k])
            qry.append(pick[k:])
        x = self.data.get(np.concatenate(sup + qry))
        n = self.n_way
        meta = {"domain": d, "classes": [self.data.class_names[classes[int(c)]] for c in chosen],
                **self.domain_meta.get(d, {})}
        return Task(x[:n * k], torch.arange(n).repeat_interleave(k), x[n * k:],
                    torch.arange(n).repeat_interleave(q), meta)


@dataclass
class DomainBatchSource:
    """Batches of one domain with the data's own labels (the label set shared by all
    domains): ``support`` examples to learn from and ``query`` examples to be judged on, drawn
    without replacement. ``support=0`` gives a target domain's tasks (nothing to adapt on)."""

    data: LabelledData
    domains: Sequence[str]
    support: int
    query: int
    name: str = "tasks"
    domain_meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    items: np.ndarray | None = None

    def __post_init__(self) -> None:
        need = self.support + self.query
        self._by_domain = _domain_items(self.data, self.domains, self.items, self.name)
        short = [f"{d} ({len(idx)})" for d, idx in self._by_domain if len(idx) < need]
        if short:
            raise DomainDataError(f"{self.name}: batches of {self.support} + {self.query} "
                                  f"examples need {need} per domain; too few in "
                                  f"{', '.join(short[:10])}")

    def sample(self, rng: np.random.Generator) -> Task:
        d, idx = self._by_domain[int(rng.integers(len(self._by_domain)))]
        pick = idx[rng.choice(len(idx), size=self.support + self.query, replace=False)]
        x = self.data.get(pick)
        y = torch.as_tensor(self.data.labels[pick])
        s = self.support
        return Task(x[:s], y[:s], x[s:], y[s:], {"domain": d, **self.domain_meta.get(d, {})})
