"""The sinusoid regression task family of Finn et al. (2017)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .task import Task


@dataclass(frozen=True)
class SinusoidFamily:
    """y = A sin(x - phase), A ~ U[0.1, 5], phase ~ U[0, pi], x ~ U[-5, 5].

    ``k_shot`` support points and ``n_query`` query points are drawn per task.
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
