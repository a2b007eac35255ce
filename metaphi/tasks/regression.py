"""Parametric regression task families, for cross-problem training.

A task is one function drawn from a family, ``x ~ U[-5, 5]``, ``k_shot`` support points and
``n_query`` query points of ``y = f(x)`` (no noise). The families and their parameter ranges
(every parameter uniform on its range, drawn independently):

=============  ===============================================  ==========================================
family         function                                         parameters
=============  ===============================================  ==========================================
``sine``       ``A sin(x - phase)``                             A in [0.1, 5], phase in [0, pi] (Finn et al. 2017)
``line``       ``a x + b``                                      a in [-1, 1], b in [-2, 2]
``quadratic``  ``a (x - c)^2 + b``                              a in [-0.15, 0.15], c in [-2, 2], b in [-2, 2]
``cubic``      ``a (x - c)^3 + b (x - c) + d``                  a in [-0.04, 0.04], c in [-1, 1], b in [-0.5, 0.5], d in [-2, 2]
``square``     ``A sign(sin(2 pi (x - phase) / T))``            A in [0.1, 5], T in [2, 6], phase in [0, T]
``sawtooth``   ``A (2 frac((x - phase) / T) - 1)``              A in [0.1, 5], T in [2, 6], phase in [0, T]
``bumps``      ``sum_j h_j exp(-(x - m_j)^2 / (2 s_j^2))``      1 to 3 bumps (uniform), h_j in [-4, 4], m_j in [-4, 4], s_j in [0.4, 1.5]
=============  ===============================================  ==========================================

The ranges keep every family's values within about [-10, 10] on [-5, 5]. The ``regression``
source meta-trains on a mixture of ``families`` and meta-tests on ``test_families`` (default
the same); a family left out of ``families`` and named in ``test_families`` is never seen in
meta-training (leave-one-family-out)::

    task: {source: regression, families: [sine, line, quadratic, cubic, square, sawtooth],
           test_families: [bumps], k_shot: 10}

Meta-validation tasks come from the meta-train families (a held-out family cannot choose φ).
Each task's family is its ``meta["domain"]``, so meta-test results are reported per family.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from ..registry import Options, register_source
from .combinators import MixtureSource
from .sources import Splits, TaskInfo
from .task import Task

Params = dict[str, float | np.ndarray]


def _sine(rng: np.random.Generator) -> Params:
    return {"amplitude": rng.uniform(0.1, 5.0), "phase": rng.uniform(0.0, math.pi)}


def _line(rng: np.random.Generator) -> Params:
    return {"a": rng.uniform(-1.0, 1.0), "b": rng.uniform(-2.0, 2.0)}


def _quadratic(rng: np.random.Generator) -> Params:
    return {"a": rng.uniform(-0.15, 0.15), "c": rng.uniform(-2.0, 2.0),
            "b": rng.uniform(-2.0, 2.0)}


def _cubic(rng: np.random.Generator) -> Params:
    return {"a": rng.uniform(-0.04, 0.04), "c": rng.uniform(-1.0, 1.0),
            "b": rng.uniform(-0.5, 0.5), "d": rng.uniform(-2.0, 2.0)}


def _wave(rng: np.random.Generator) -> Params:
    period = rng.uniform(2.0, 6.0)
    return {"amplitude": rng.uniform(0.1, 5.0), "period": period,
            "phase": rng.uniform(0.0, period)}


def _bumps(rng: np.random.Generator) -> Params:
    m = int(rng.integers(1, 4))
    return {"height": rng.uniform(-4.0, 4.0, m), "center": rng.uniform(-4.0, 4.0, m),
            "width": rng.uniform(0.4, 1.5, m)}


def _sawtooth(x: np.ndarray, p: Params) -> np.ndarray:
    t = (x - p["phase"]) / p["period"]
    return p["amplitude"] * (2.0 * (t - np.floor(t)) - 1.0)


def _bumps_f(x: np.ndarray, p: Params) -> np.ndarray:
    h, m, s = (np.asarray(p[k])[None] for k in ("height", "center", "width"))
    return (h * np.exp(-((x[..., None] - m) ** 2) / (2 * s ** 2))).sum(-1)


# name -> (draw parameters, f(x, parameters))
FAMILIES: dict[str, tuple[Callable[[np.random.Generator], Params],
                          Callable[[np.ndarray, Params], np.ndarray]]] = {
    "sine": (_sine, lambda x, p: p["amplitude"] * np.sin(x - p["phase"])),
    "line": (_line, lambda x, p: p["a"] * x + p["b"]),
    "quadratic": (_quadratic, lambda x, p: p["a"] * (x - p["c"]) ** 2 + p["b"]),
    "cubic": (_cubic, lambda x, p: p["a"] * (x - p["c"]) ** 3 + p["b"] * (x - p["c"]) + p["d"]),
    "square": (_wave, lambda x, p: p["amplitude"] * np.sign(
        np.sin(2 * math.pi * (x - p["phase"]) / p["period"]))),
    "sawtooth": (_wave, _sawtooth),
    "bumps": (_bumps, _bumps_f),
}


@dataclass(frozen=True)
class FunctionSource:
    """Tasks of one family of :data:`FAMILIES` (module doc): ``k_shot`` support and
    ``n_query`` query points with ``x ~ U[x_range]``; ``meta`` holds the family and its
    parameters."""

    family: str
    k_shot: int = 10
    n_query: int = 10
    x_range: tuple[float, float] = (-5.0, 5.0)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown regression family {self.family!r}; one of "
                             f"{', '.join(FAMILIES)}")
        if self.k_shot < 1 or self.n_query < 1:
            raise ValueError("k_shot and n_query must be >= 1")

    def sample(self, rng: np.random.Generator) -> Task:
        draw, f = FAMILIES[self.family]
        params = draw(rng)
        x = rng.uniform(*self.x_range, size=(self.k_shot + self.n_query, 1))
        y = f(x[:, 0], params)[:, None]
        x_t = torch.from_numpy(x).float()
        y_t = torch.from_numpy(np.asarray(y, dtype=np.float64)).float()
        k = self.k_shot
        meta = {"family": self.family,
                **{n: (v.tolist() if isinstance(v, np.ndarray) else float(v))
                   for n, v in params.items()}}
        return Task(x_t[:k], y_t[:k], x_t[k:], y_t[k:], meta)

    def curve(self, meta: dict, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
        """The function of a task (its ``meta``) on a grid over ``x_range``."""
        x = np.linspace(*self.x_range, n)
        params = {k: np.asarray(v) if isinstance(v, list) else v for k, v in meta.items()
                  if k != "family"}
        return x, FAMILIES[self.family][1](x, params)


def family_mixture(families: list[str], k_shot: int, n_query: int,
                   x_range: tuple[float, float] = (-5.0, 5.0),
                   weights: list[float] | None = None) -> MixtureSource:
    """Tasks from several families (each task's family in ``meta["domain"]``)."""
    return MixtureSource([FunctionSource(f, k_shot, n_query, x_range) for f in families],
                         weights, families)


class RegressionOptions(Options):
    """``task:`` options of the regression families (no download)."""

    source: str = "regression"
    families: list[str] = Field(default_factory=lambda: list(FAMILIES),
                                description="meta-train (and meta-val) families: "
                                + ", ".join(FAMILIES))
    test_families: list[str] | None = Field(None, description="meta-test families (default: "
                                            "`families`); others than `families` are held out")
    weights: list[float] | None = Field(None, description="probability of each meta-train "
                                        "family (default equal)")
    k_shot: int = Field(10, ge=1, description="support points per task")
    n_query: int = Field(10, ge=1, description="query points per meta-train task")
    eval_n_query: int | None = Field(None, ge=1, description="query points per meta-val/test "
                                     "task (default n_query)")
    x_range: tuple[float, float] = (-5.0, 5.0)

    @field_validator("families", "test_families")
    @classmethod
    def _known(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        bad = [f for f in v if f not in FAMILIES]
        if bad or not v or len(set(v)) != len(v):
            raise ValueError(f"distinct names of {', '.join(FAMILIES)}; got {v}")
        return v

    @model_validator(mode="after")
    def _weights(self) -> "RegressionOptions":
        if self.weights is not None and len(self.weights) != len(self.families):
            raise ValueError(f"weights: one per family ({len(self.families)}), got "
                             f"{len(self.weights)}")
        if not self.x_range[0] < self.x_range[1]:
            raise ValueError("x_range: (low, high) with low < high")
        return self

    def info(self) -> TaskInfo:
        return TaskInfo("regression", "vector", (1,), out_dim=1, default_model="mlp")


@register_source("regression", options=RegressionOptions)
def regression_splits(o: RegressionOptions) -> Splits:
    """Meta-train and meta-val on ``families``, meta-test on ``test_families``; a parametric
    family has no classes to share, so the three streams differ by seed."""
    eval_q = o.eval_n_query or o.n_query
    xr = tuple(o.x_range)
    return Splits(family_mixture(o.families, o.k_shot, o.n_query, xr, o.weights),
                  family_mixture(o.families, o.k_shot, eval_q, xr, o.weights),
                  family_mixture(o.test_families or o.families, o.k_shot, eval_q, xr),
                  o.info())
