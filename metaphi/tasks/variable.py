"""Variable-way variable-shot episodes with Meta-Dataset's procedure (Triantafillou et al.,
ICLR 2020, Appendix: "Sampling of episodes").

For an episode over the classes ``C`` of a split:

1. **Ways**: ``N ~ U{min_ways, ..., min(max_ways, |C|)}`` (5 and 50), then ``N`` classes drawn
   uniformly without replacement.
2. **Query**: the same number of queries per class, ``q = min(max_query, min_c floor(|Im(c)| / 2))``
   (at most 10, at most half of the smallest class).
3. **Support size**: with ``beta ~ U[0, 1)``,
   ``|S| = min(max_support, sum_c floor(beta * min(max_support_per_class, |Im(c)| - q) + 1))``
   (each class contributes at most 100; at most 500 in all; at least one per class).
4. **Shots**: class-proportional with noise: ``R_c = |Im(c)| exp(a_c)``, ``a_c ~ U[log 0.5, log 2)``,
   ``K_c = min(floor(R_c / sum R * (|S| - N)) + 1, |Im(c)| - q)``.

Labels are 0..N-1 in the order the classes were drawn; ``meta`` records the classes, ``n_way``,
``shots`` and ``n_query``. Only learners that take any number of ways and shots (registered
with ``model="embedding"``: ProtoNet, Matching Networks, R2-D2) can learn from such episodes;
a run config with ``task.sampler: meta-dataset`` and another learner is refused when it is
validated.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .fewshot import ClassIndex, FewShotSource, LabelledData
from .task import Task


@dataclass
class VariableEpisodeSource:
    """Meta-Dataset episodes over ``classes`` of ``data`` (module doc); the defaults are the
    paper's."""

    data: LabelledData
    classes: Sequence[int]
    index: ClassIndex | None = None
    min_ways: int = 5
    max_ways: int = 50
    max_query: int = 10
    max_support: int = 500
    max_support_per_class: int = 100
    log_weight: tuple[float, float] = (math.log(0.5), math.log(2.0))
    name: str = "tasks"

    def __post_init__(self) -> None:
        if self.index is None:
            self.index = ClassIndex(self.data.labels)
        self.classes = np.asarray(sorted(int(c) for c in self.classes), dtype=np.int64)
        if len(self.classes) < self.min_ways:
            raise ValueError(f"{self.name}: Meta-Dataset episodes have at least {self.min_ways} "
                             f"ways, but this split has {len(self.classes)} classes")
        if self.max_support < self.max_ways:
            raise ValueError("max_support must allow one support example per class "
                             f"(max_support={self.max_support} < max_ways={self.max_ways})")
        small = [self.data.class_names[int(c)] for c in self.classes
                 if self.index.count(int(c)) < 2]
        if small:
            raise ValueError(f"{self.name}: Meta-Dataset episodes need at least 2 examples a "
                             f"class (one support, one query); {small[:5]} have fewer")
        self._counts = np.asarray([self.index.count(int(c)) for c in self.classes])

    @classmethod
    def like(cls, source: FewShotSource) -> "VariableEpisodeSource":
        """The same classes as an N-way K-shot source, in Meta-Dataset episodes."""
        return cls(source.data, source.classes, source.index, name=source.name)

    def describe(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
        """``(classes, shots per class, queries per class)`` of one episode."""
        n = int(rng.integers(self.min_ways, min(self.max_ways, len(self.classes)) + 1))
        pick = rng.choice(len(self.classes), size=n, replace=False)
        chosen, counts = self.classes[pick], self._counts[pick]
        q = int(min(self.max_query, (counts // 2).min()))
        remaining = counts - q
        beta = rng.uniform()
        size = int(min(np.floor(beta * np.minimum(self.max_support_per_class, remaining) + 1)
                       .sum(), self.max_support))
        weights = counts * np.exp(rng.uniform(*self.log_weight, size=n))
        shots = np.minimum(np.floor(weights / weights.sum() * (size - n)).astype(np.int64) + 1,
                           remaining)
        return chosen, shots, q

    def sample(self, rng: np.random.Generator) -> Task:
        chosen, shots, q = self.describe(rng)
        sup, qry = [], []
        for c, k in zip(chosen, shots):
            items = self.index[int(c)]
            pick = items[rng.choice(len(items), size=int(k) + q, replace=False)]
            sup.append(pick[:k])
            qry.append(pick[k:])
        x = self.data.get(np.concatenate(sup + qry))
        n_support = int(shots.sum())
        n = len(chosen)
        y_s = torch.arange(n).repeat_interleave(torch.as_tensor(shots))
        y_q = torch.arange(n).repeat_interleave(q)
        return Task(x[:n_support], y_s, x[n_support:], y_q,
                    {"classes": [self.data.class_names[int(c)] for c in chosen], "n_way": n,
                     "shots": shots.tolist(), "n_query": q})
