"""The sinusoid regression task source of Finn et al. (2017)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field, field_validator

from ..registry import Options, register_source
from .sources import Splits, TaskInfo
from .task import Task


@dataclass(frozen=True)
class SinusoidSource:
    """y = A sin(x - phase), A ~ U[0.1, 5], phase ~ U[0, pi], x ~ U[-5, 5].

    Args:
        k_shot: support points per task.
        n_query: query points per task.
        amplitude: range of A.
        phase: range of the phase.
        x_range: range of the inputs.
    """

    k_shot: int = 10
    n_query: int = 10
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    def __post_init__(self) -> None:
        if self.k_shot < 1 or self.n_query < 1:
            raise ValueError(f"sinusoid needs k_shot >= 1 and n_query >= 1, got "
                             f"k_shot={self.k_shot}, n_query={self.n_query}")
        for name in ("amplitude", "phase", "x_range"):
            lo, hi = getattr(self, name)
            if not lo < hi:
                raise ValueError(f"sinusoid {name} must be (low, high) with low < high, got {(lo, hi)}")

    def sample(self, rng: np.random.Generator) -> Task:
        amp = rng.uniform(*self.amplitude)
        phase = rng.uniform(*self.phase)
        x = rng.uniform(*self.x_range, size=(self.k_shot + self.n_query, 1))
        y = amp * np.sin(x - phase)
        x_t = torch.from_numpy(x).float()
        y_t = torch.from_numpy(y).float()
        k = self.k_shot
        return Task(x_t[:k], y_t[:k], x_t[k:], y_t[k:], {"amplitude": amp, "phase": phase})

    def curve(self, amplitude: float, phase: float, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
        x = np.linspace(*self.x_range, n)
        return x, amplitude * np.sin(x - phase)


class SinusoidOptions(Options):
    """``task:`` options of the sinusoid source (no download)."""

    source: str = "sinusoid"
    k_shot: int = Field(10, ge=1, description="support points per task")
    n_query: int = Field(10, ge=1, description="query points per meta-train task")
    eval_n_query: int | None = Field(None, ge=1, description="query points per meta-val/test "
                                     "task (default n_query)")
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    @field_validator("amplitude", "phase", "x_range")
    @classmethod
    def _low_high(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[0] < v[1]:
            raise ValueError(f"must be [low, high] with low < high, got {list(v)}")
        return v

    def info(self) -> TaskInfo:
        return TaskInfo("regression", "vector", (1,), out_dim=1, default_model="mlp")


@register_source("sinusoid", options=SinusoidOptions)
def sinusoid_splits(o: SinusoidOptions) -> Splits:
    """A parametric family has no classes to share: the three streams differ by seed."""
    ranges = dict(amplitude=tuple(o.amplitude), phase=tuple(o.phase), x_range=tuple(o.x_range))
    eval_q = o.eval_n_query or o.n_query
    return Splits(SinusoidSource(o.k_shot, o.n_query, **ranges),
                  SinusoidSource(o.k_shot, eval_q, **ranges),
                  SinusoidSource(o.k_shot, eval_q, **ranges), o.info())
