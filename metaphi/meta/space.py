"""Typed search spaces for meta-parameters φ that gradients cannot reach.

A :class:`Space` maps names to dimensions: :class:`Float` (linear or log scale), :class:`Int`
and :class:`Categorical`. Population meta-optimizers work in a *unit* encoding: each Float/Int
dimension becomes one real coordinate in [0, 1] (after the log transform for log-scale
dimensions), so one step size fits all of them::

    space = Space({"inner_lr": Float(1e-3, 0.5, log=True),
                   "inner_steps": Categorical([1, 2, 3, 5]),
                   "width": Int(20, 80)})
    phi = space.sample(np.random.default_rng(0))   # {"inner_lr": ..., ...}
    space.validate(phi)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

import numpy as np


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


@dataclass(frozen=True)
class Float:
    """A real number in ``[low, high]``; ``log=True`` searches ``log(value)`` uniformly."""

    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        if not (_is_number(self.low) and _is_number(self.high)):
            raise TypeError(f"Float bounds must be numbers, got low={self.low!r}, high={self.high!r}")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"Float bounds must be finite, got low={self.low}, high={self.high}")
        if not self.low < self.high:
            raise ValueError(f"Float needs low < high, got low={self.low}, high={self.high}; "
                             "for a fixed value, leave it out of the space")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale Float needs low > 0, got low={self.low}; use a positive "
                             "lower bound (e.g. 1e-5) or log=False")

    def _t(self, v: float) -> float:
        return math.log(v) if self.log else float(v)

    def to_unit(self, v: Any) -> float:
        lo, hi = self._t(self.low), self._t(self.high)
        return (self._t(float(v)) - lo) / (hi - lo)

    def from_unit(self, u: float) -> float:
        u = min(max(float(u), 0.0), 1.0)
        lo, hi = self._t(self.low), self._t(self.high)
        t = lo + u * (hi - lo)
        v = math.exp(t) if self.log else t
        return min(max(v, float(self.low)), float(self.high))  # exp/log round-off at the ends

    def check(self, name: str, v: Any) -> float:
        if not _is_number(v) or not math.isfinite(float(v)):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
        if not self.low <= float(v) <= self.high:
            raise ValueError(f"{name}={v} is outside its range [{self.low}, {self.high}]")
        return float(v)

    def sample(self, rng: np.random.Generator) -> float:
        return self.from_unit(rng.uniform())


@dataclass(frozen=True)
class Int:
    """An integer in ``[low, high]`` (both included); ``log=True`` for a log-uniform search."""

    low: int
    high: int
    log: bool = False

    def __post_init__(self) -> None:
        for b in (self.low, self.high):
            if isinstance(b, bool) or not isinstance(b, (int, np.integer)):
                raise TypeError(f"Int bounds must be integers, got low={self.low!r}, high={self.high!r}")
        if not self.low < self.high:
            raise ValueError(f"Int needs low < high, got low={self.low}, high={self.high}; "
                             "for a fixed value, leave it out of the space")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale Int needs low >= 1, got low={self.low}")

    @property
    def size(self) -> int:
        return int(self.high - self.low + 1)

    def _float(self) -> Float:
        # Widen by half a step so that every integer owns an equal share of the unit interval.
        if self.log:
            return Float(self.low - 0.5 if self.low > 0.5 else self.low * 0.5, self.high + 0.5, True)
        return Float(self.low - 0.5, self.high + 0.5)

    def to_unit(self, v: Any) -> float:
        return self._float().to_unit(v)

    def from_unit(self, u: float) -> int:
        return int(min(max(round(self._float().from_unit(u)), self.low), self.high))

    def check(self, name: str, v: Any) -> int:
        if isinstance(v, bool) or not (isinstance(v, (int, np.integer))
                                       or (isinstance(v, (float, np.floating)) and float(v).is_integer())):
            raise ValueError(f"{name} must be an integer, got {v!r}")
        if not self.low <= int(v) <= self.high:
            raise ValueError(f"{name}={v} is outside its range [{self.low}, {self.high}]")
        return int(v)

    def sample(self, rng: np.random.Generator) -> int:
        return self.from_unit(rng.uniform())


@dataclass(frozen=True)
class Categorical:
    """One of a list of choices (numbers, strings, booleans, or lists of them such as layer
    widths), unordered."""

    choices: tuple

    def __init__(self, choices: Sequence[Any]) -> None:
        if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence):
            raise TypeError(f"Categorical choices must be a list, got {choices!r}")
        choices = tuple(choices)
        if not choices:
            raise ValueError("Categorical needs at least one choice, got an empty list")
        if len(set(map(repr, choices))) != len(choices):
            raise ValueError(f"Categorical choices must be distinct, got {list(choices)}")
        choices = tuple(list(c) if isinstance(c, (list, tuple)) else c for c in choices)
        for c in choices:
            if not all(isinstance(v, (int, float, str, bool))
                       for v in (c if isinstance(c, list) else [c])):
                raise TypeError(f"Categorical choices must be numbers, strings, booleans or lists "
                                f"of them so that they can be checkpointed; got {c!r}")
        object.__setattr__(self, "choices", choices)

    @property
    def size(self) -> int:
        return len(self.choices)

    def index(self, name: str, v: Any) -> int:
        for i, c in enumerate(self.choices):
            v = list(v) if isinstance(v, tuple) else v
            if type(c) is type(v) and c == v or (_is_number(c) and _is_number(v) and c == v):
                return i
        raise ValueError(f"{name}={v!r} is not one of its choices {list(self.choices)}")

    def check(self, name: str, v: Any) -> Any:
        return self.choices[self.index(name, v)]

    def sample(self, rng: np.random.Generator) -> Any:
        return self.choices[int(rng.integers(len(self.choices)))]


Dim = Union[Float, Int, Categorical]


class Space:
    """Named dimensions of φ. Iteration order is the order given."""

    def __init__(self, dims: Mapping[str, Dim]) -> None:
        if not isinstance(dims, Mapping) or not dims:
            raise ValueError("a Space needs at least one dimension, e.g. "
                             "Space({'inner_lr': Float(1e-3, 0.5, log=True)})")
        for name, d in dims.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"dimension names must be non-empty strings, got {name!r}")
            if not isinstance(d, (Float, Int, Categorical)):
                raise TypeError(f"dimension {name!r} must be Float, Int or Categorical, got "
                                f"{type(d).__name__}")
        self.dims: dict[str, Dim] = dict(dims)

    @property
    def names(self) -> list[str]:
        return list(self.dims)

    def __len__(self) -> int:
        return len(self.dims)

    def __repr__(self) -> str:
        return f"Space({self.dims!r})"

    def validate(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` checked against the space (a clear error on a missing, unknown or
        out-of-range entry); returns them normalised to Python types."""
        if not isinstance(values, Mapping):
            raise TypeError(f"φ must be a dict of {self.names}, got {type(values).__name__}")
        missing = [n for n in self.dims if n not in values]
        unknown = [n for n in values if n not in self.dims]
        if missing or unknown:
            raise ValueError(f"φ does not match the space: missing {missing}, unknown {unknown}; "
                             f"the space has {self.names}")
        return {n: d.check(n, values[n]) for n, d in self.dims.items()}

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        return {n: d.sample(rng) for n, d in self.dims.items()}

    def require_continuous(self, who: str) -> None:
        cats = [n for n, d in self.dims.items() if isinstance(d, Categorical)]
        if cats:
            raise ValueError(f"{who} searches real coordinates, but {cats} are Categorical; use "
                             "REINFORCE for categorical choices, or declare an ordered choice as Int")

    def to_unit(self, values: Mapping[str, Any]) -> np.ndarray:
        """The unit encoding (one coordinate per Float/Int dimension)."""
        self.require_continuous("the unit encoding")
        v = self.validate(values)
        return np.array([d.to_unit(v[n]) for n, d in self.dims.items()], dtype=np.float64)

    def from_unit(self, u: np.ndarray | Sequence[float]) -> dict[str, Any]:
        """Decode unit coordinates (clipped to [0, 1], integers rounded) to values."""
        self.require_continuous("the unit encoding")
        u = np.asarray(u, dtype=np.float64).reshape(-1)
        if len(u) != len(self.dims):
            raise ValueError(f"expected {len(self.dims)} unit coordinates, got {len(u)}")
        return {n: d.from_unit(x) for (n, d), x in zip(self.dims.items(), u)}

    def center(self) -> dict[str, Any]:
        """The middle of every dimension (the first choice for a Categorical)."""
        return {n: (d.choices[0] if isinstance(d, Categorical) else d.from_unit(0.5))
                for n, d in self.dims.items()}

    def describe(self) -> dict[str, Any]:
        """Plain-data description, for configs, logs and checkpoints."""
        out: dict[str, Any] = {}
        for n, d in self.dims.items():
            if isinstance(d, Categorical):
                out[n] = {"type": "categorical", "choices": list(d.choices)}
            else:
                out[n] = {"type": type(d).__name__.lower(), "low": d.low, "high": d.high, "log": d.log}
        return out

    @classmethod
    def from_config(cls, cfg: Mapping[str, Mapping[str, Any]]) -> "Space":
        """The inverse of :meth:`describe`: ``{"lr": {"type": "float", "low": 1e-3, "high": 1,
        "log": true}, "steps": {"type": "categorical", "choices": [1, 2, 5]}}``."""
        dims: dict[str, Dim] = {}
        for n, d in cfg.items():
            if not isinstance(d, Mapping) or "type" not in d:
                raise ValueError(f"space entry {n!r} must be a dict with a 'type' "
                                 "(float, int or categorical), got {d!r}")
            kind = str(d["type"]).lower()
            rest = {k: v for k, v in d.items() if k != "type"}
            try:
                if kind == "float":
                    dims[n] = Float(**rest)
                elif kind == "int":
                    dims[n] = Int(**rest)
                elif kind == "categorical":
                    dims[n] = Categorical(**rest)
                else:
                    raise ValueError(f"space entry {n!r} has unknown type {d['type']!r}; use "
                                     "float, int or categorical")
            except TypeError as e:
                raise ValueError(f"space entry {n!r}: {e}") from e
        return cls(dims)
