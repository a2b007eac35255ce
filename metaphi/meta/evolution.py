"""Evolution strategies as ask/tell meta-optimizers: OpenAI-ES and CMA-ES.

Every meta-optimizer here *minimises* a fitness (a meta-validation loss)::

    opt = OpenAIES(x0=np.zeros(10), sigma=0.1, lr=0.05, popsize=20, seed=0)
    for _ in range(100):
        cands = opt.ask()
        opt.tell(cands, [f(c) for c in cands])
    opt.best, opt.center

Candidates are 1-D float64 numpy vectors, or, when a :class:`~metaphi.meta.space.Space` is
given, dicts of values decoded from the space's unit encoding. ``state_dict()`` holds only
tensors, numbers, strings, lists and dicts, so it is checkpointed with
:func:`metaphi.loops.checkpoint.save_checkpoint` and restored with the safe loader; a restored
optimizer continues exactly as the uninterrupted one.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from .space import Space

Candidate = Any


# -- plain-data conversion (checkpoints hold tensors, never numpy objects) --------------------
def to_plain(x: Any) -> Any:
    """numpy arrays -> tensors, numpy scalars -> Python numbers, recursively."""
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x).copy())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, dict):
        return {k: to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_plain(v) for v in x]
    return x


def to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.float64) if isinstance(x, torch.Tensor) \
        else np.asarray(x, dtype=np.float64)


def clean_fitnesses(fitnesses: Sequence[float], n: int) -> np.ndarray:
    """Fitnesses as float64; a non-finite one (a diverged candidate) counts as the worst finite
    one in the batch, so that it ranks last without poisoning the update with inf/NaN."""
    f = np.asarray([float(v) for v in fitnesses], dtype=np.float64)
    if f.shape != (n,):
        raise ValueError(f"tell() needs one fitness per candidate: got {f.size} for {n} candidates")
    bad = ~np.isfinite(f)
    if bad.all():
        raise ValueError("every candidate's fitness is NaN or inf; check the fitness function "
                         "(e.g. lower the learning-rate range so that inner loops do not diverge)")
    if bad.any():
        f[bad] = f[~bad].max()
    return f


def centered_ranks(f: np.ndarray) -> np.ndarray:
    """Rank shaping: values in [-0.5, 0.5], lowest fitness -> -0.5; ties share their mean rank."""
    order = np.argsort(f, kind="stable")
    ranks = np.empty(len(f), dtype=np.float64)
    ranks[order] = np.arange(len(f), dtype=np.float64)
    for v in np.unique(f):  # ties: equal fitness must give equal utility
        m = f == v
        if m.sum() > 1:
            ranks[m] = ranks[m].mean()
    return ranks / max(len(f) - 1, 1) - 0.5


def spread_of(xs: Sequence[np.ndarray], center: np.ndarray) -> float:
    """Median over coordinates of the candidates' RMS distance from ``center``."""
    d = np.asarray(xs, dtype=np.float64) - center
    return float(np.median(np.sqrt((d * d).mean(0))))


class _Tracker:
    """The best candidate seen so far (lowest fitness), and the last generation's spread."""

    def __init__(self) -> None:
        self.best_x: np.ndarray | None = None
        self.best_f = math.inf
        self.generation = 0
        self.evaluations = 0
        self.spread: float | None = None

    def update(self, xs: Sequence[np.ndarray], f: np.ndarray,
               center: np.ndarray | None = None) -> None:
        i = int(np.argmin(f))
        if f[i] < self.best_f:
            self.best_f, self.best_x = float(f[i]), np.array(xs[i], dtype=np.float64)
        if center is not None:
            self.spread = spread_of(xs, center)
        self.generation += 1
        self.evaluations += len(f)

    def state(self) -> dict[str, Any]:
        return {"best_x": None if self.best_x is None else to_plain(self.best_x),
                "best_f": self.best_f, "generation": self.generation,
                "evaluations": self.evaluations, "spread": self.spread}

    def load(self, s: dict[str, Any]) -> None:
        self.best_x = None if s["best_x"] is None else to_numpy(s["best_x"])
        self.best_f = float(s["best_f"])
        self.generation = int(s["generation"])
        self.evaluations = int(s["evaluations"])
        self.spread = s["spread"]


class _Tracked:
    """Counters every ask/tell optimizer reports (its ``track`` is a :class:`_Tracker`)."""

    track: _Tracker

    @property
    def generation(self) -> int:
        return self.track.generation

    @property
    def evaluations(self) -> int:
        return self.track.evaluations

    @property
    def spread(self) -> float | None:
        """How far the last generation's candidates lay from the point they were sampled
        around: the median over coordinates of their RMS distance from it, in the search's own
        coordinates (None before the first generation, and for optimizers without a center).
        This is the search's effective step size; one that collapses toward 0 while the
        fitness is still poor means the search has stopped moving (a restart or a larger
        initial sigma is the usual remedy)."""
        return self.track.spread


class _VectorOptimizer(_Tracked):
    """Shared plumbing: a search over real vectors, optionally decoded through a Space."""

    kind = "?"

    def __init__(self, x0: Any, space: Space | None, seed: int) -> None:
        if space is not None:
            space.require_continuous(type(self).__name__)
            x0 = np.full(len(space), 0.5) if x0 is None else (
                space.to_unit(x0) if isinstance(x0, dict) else to_numpy(x0))
        elif x0 is None:
            raise ValueError(f"{type(self).__name__} needs x0 (the starting vector) or a space")
        x0 = to_numpy(x0).reshape(-1)
        if x0.size == 0 or not np.isfinite(x0).all():
            raise ValueError("x0 must be a non-empty vector of finite numbers")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.space = space
        self.seed = int(seed)
        self.x0 = x0
        self.track = _Tracker()

    @property
    def dim(self) -> int:
        return int(self.x0.size)

    def decode(self, x: np.ndarray) -> Candidate:
        return self.space.from_unit(x) if self.space is not None else np.array(x)

    @property
    def best(self) -> tuple[Candidate, float]:
        """(best candidate told so far, its fitness)."""
        if self.track.best_x is None:
            raise RuntimeError("no fitness has been told yet; call ask() and tell() first")
        return self.decode(self.track.best_x), self.track.best_f

    def _check_state(self, s: dict[str, Any]) -> None:
        if s.get("kind") != self.kind:
            raise ValueError(f"state_dict is for a {s.get('kind')!r} optimizer, not {self.kind!r}")
        if int(s["dim"]) != self.dim:
            raise ValueError(f"state_dict has dimension {s['dim']}, this optimizer {self.dim}; "
                             "build the optimizer with the same x0/space before loading")


class OpenAIES(_VectorOptimizer):
    """OpenAI-ES (Salimans et al., 2017) with antithetic sampling and centered rank shaping.

    Each generation draws ``popsize // 2`` noise vectors ε and evaluates ``x ± σε``; the
    search-gradient estimate ``g = Σ (u⁺ - u⁻) ε / (popsize σ)`` of the rank utilities ``u``
    feeds Adam (or SGD with momentum). The noise of generation ``t`` is a pure function of
    ``(seed, t)``, so a checkpoint holds only the mean and the optimizer moments.

    ``shaping="none"`` uses the raw antithetic differences ``(f⁺ - f⁻) / 2σ`` instead of ranks:
    with common random numbers they are directional derivatives, which keep the gradient's
    magnitude information that ranks throw away (useful close to an optimum).
    ``schedule="cosine"`` anneals the learning rate from ``lr`` to ``lr * lr_final`` and σ from
    ``sigma`` to ``sigma_final`` (default: constant σ) over ``horizon`` generations; a
    zeroth-order gradient in many dimensions is noisy, and a decaying step averages the noise
    out the way a decaying SGD step does.
    ``anchor`` pulls the mean toward ``x0`` by ``lr * anchor * (mean - x0)`` after each step
    (decoupled, like AdamW's weight decay but toward the start): in directions the fitness
    barely sees, the noisy steps otherwise random-walk the mean far away (a network's weights
    grow without bound) until those directions matter and the search falls off a cliff.
    """

    kind = "openai_es"

    def __init__(self, x0: Any = None, sigma: float = 0.05, lr: float = 0.01, popsize: int = 50,
                 seed: int = 0, space: Space | None = None, optimizer: str = "adam",
                 momentum: float = 0.9, betas: tuple[float, float] = (0.9, 0.999),
                 weight_decay: float = 0.0, shaping: str = "ranks", schedule: str = "constant",
                 horizon: int | None = None, lr_final: float = 0.0,
                 sigma_final: float | None = None, anchor: float = 0.0) -> None:
        super().__init__(x0, space, seed)
        if shaping not in ("ranks", "none"):
            raise ValueError(f"shaping must be 'ranks' or 'none', got {shaping!r}")
        if schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
        if schedule == "cosine" and (horizon is None or int(horizon) < 1):
            raise ValueError("schedule='cosine' needs horizon, the number of generations to anneal "
                             f"over (>= 1), got {horizon!r}")
        if not 0.0 <= lr_final <= 1.0:
            raise ValueError(f"lr_final is a fraction of lr in [0, 1], got {lr_final}")
        if sigma_final is not None and not sigma_final > 0:
            raise ValueError(f"sigma_final must be > 0, got {sigma_final}")
        if anchor < 0:
            raise ValueError(f"anchor must be >= 0, got {anchor}")
        self.anchor = float(anchor)
        self.shaping, self.schedule = shaping, schedule
        self.horizon = None if horizon is None else int(horizon)
        self.lr_final, self.sigma_final = float(lr_final), sigma_final
        if not sigma > 0 or not lr > 0:
            raise ValueError(f"sigma and lr must be > 0, got sigma={sigma}, lr={lr}")
        if popsize < 2 or popsize % 2:
            raise ValueError(f"popsize must be an even number >= 2 (antithetic pairs), got {popsize}")
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.sigma, self.lr, self.popsize = float(sigma), float(lr), int(popsize)
        self.optimizer, self.momentum, self.betas = optimizer, float(momentum), tuple(betas)
        self.weight_decay = float(weight_decay)
        self.mean = self.x0.copy()
        self.m = np.zeros_like(self.mean)
        self.v = np.zeros_like(self.mean)
        self._noise_cache: tuple[int, np.ndarray] | None = None  # (generation, its noise)

    def _anneal(self, start: float, end: float) -> float:
        """Cosine interpolation from ``start`` to ``end`` at this generation."""
        if self.schedule == "constant":
            return start
        frac = min(self.track.generation / self.horizon, 1.0)  # type: ignore[operator]
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * frac))

    @property
    def current_sigma(self) -> float:
        """σ of the next generation (annealed when ``schedule="cosine"`` and ``sigma_final``)."""
        end = self.sigma if self.sigma_final is None else float(self.sigma_final)
        return self._anneal(self.sigma, end)

    @property
    def current_lr(self) -> float:
        """The learning rate of the next update."""
        return self._anneal(self.lr, self.lr * self.lr_final)

    def _noise(self) -> np.ndarray:
        gen = self.track.generation
        if self._noise_cache is None or self._noise_cache[0] != gen:  # ask() and tell() share it
            rng = np.random.default_rng([self.seed, gen])
            self._noise_cache = (gen, rng.standard_normal((self.popsize // 2, self.dim)))
        return self._noise_cache[1]

    def _points(self) -> list[np.ndarray]:
        eps = self._noise()
        pts: list[np.ndarray] = []
        sigma = self.current_sigma
        for e in eps:  # pairs are adjacent: candidate 2i = x + σε_i, 2i+1 = x - σε_i
            pts += [self.mean + sigma * e, self.mean - sigma * e]
        return pts

    def ask(self) -> list[Candidate]:
        """This generation's ``popsize`` candidates (antithetic pairs, adjacent)."""
        return [self.decode(p) for p in self._points()]

    def tell(self, candidates: Sequence[Candidate], fitnesses: Sequence[float]) -> None:
        """Update the mean with the rank-shaped search gradient of this generation's fitnesses."""
        if len(candidates) != self.popsize:
            raise ValueError(f"tell() got {len(candidates)} candidates; ask() gave {self.popsize}")
        f = clean_fitnesses(fitnesses, self.popsize)
        pts = self._points()
        center = self.mean.copy()
        sigma, lr = self.current_sigma, self.current_lr
        eps = self._noise()
        if self.shaping == "ranks":
            u = centered_ranks(f)
            g = ((u[0::2] - u[1::2])[:, None] * eps).sum(0) / (self.popsize * sigma)
        else:  # mean of the directional-derivative estimates (f⁺ - f⁻) / 2σ · ε
            g = ((f[0::2] - f[1::2])[:, None] * eps).sum(0) / (self.popsize * sigma)
        if self.weight_decay:
            g = g + self.weight_decay * self.mean
        t = self.track.generation + 1
        if self.optimizer == "adam":
            b1, b2 = self.betas
            self.m = b1 * self.m + (1 - b1) * g
            self.v = b2 * self.v + (1 - b2) * g * g
            step = lr * (self.m / (1 - b1 ** t)) / (np.sqrt(self.v / (1 - b2 ** t)) + 1e-8)
        else:
            self.m = self.momentum * self.m + g
            step = lr * self.m
        self.mean = self.mean - step
        if self.anchor:  # decoupled pull toward x0, scaled by the step like AdamW's decay
            self.mean = self.mean - lr * self.anchor * (self.mean - self.x0)
        if self.space is not None:  # the unit encoding lives in [0, 1]
            self.mean = np.clip(self.mean, 0.0, 1.0)
        self.track.update(pts, f, center)

    @property
    def center(self) -> Candidate:
        """The current search mean (ES's estimate of the best φ)."""
        return self.decode(self.mean)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim": self.dim, "seed": self.seed, "sigma": self.sigma,
                "lr": self.lr, "popsize": self.popsize, "shaping": self.shaping,
                "schedule": self.schedule, "horizon": self.horizon, "lr_final": self.lr_final,
                "sigma_final": self.sigma_final, "anchor": self.anchor,
                "mean": to_plain(self.mean),
                "m": to_plain(self.m), "v": to_plain(self.v), "track": self.track.state()}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self._check_state(s)
        for k in ("seed", "popsize", "shaping", "schedule", "horizon", "lr_final", "sigma_final",
                  "anchor"):
            if s[k] != getattr(self, k):
                raise ValueError(f"state_dict has {k}={s[k]}, this optimizer {getattr(self, k)}; "
                                 "resume with the same settings")
        self.sigma, self.lr = float(s["sigma"]), float(s["lr"])
        self.mean, self.m, self.v = to_numpy(s["mean"]), to_numpy(s["m"]), to_numpy(s["v"])
        self.track.load(s["track"])


class CMAES(_VectorOptimizer):
    """CMA-ES through the ``cmaes`` library (``pip install metaphi[evolution]``).

    The library's optimizer is not plain data (it holds a NumPy ``RandomState``), so a
    checkpoint keeps the fitness history and a restore rebuilds the optimizer from the same
    seed and replays the generations since the last restart; no fitness is re-evaluated, and
    the result is bit-identical to an uninterrupted run. Replaying costs
    O(generations · popsize · n²), negligible for the hyperparameter-sized problems CMA-ES is
    meant for (n up to a few hundred). With a ``space``, the search is bounded to the unit box.

    ``diagonal=True`` runs sep-CMA-ES (Ros & Hansen, 2008; the library's ``SepCMA``): a
    diagonal covariance, i.e. one adapted step size per coordinate, at O(n) cost per sample
    instead of O(n^2) (so is a resume's replay). Use it when φ is a network's weights
    (thousands of coordinates), where the full covariance is too large to learn from a
    population.

    ``restarts=N`` makes it IPOP-CMA-ES (Auger & Hansen, 2005): when a search ends, a new one
    starts with the initial ``sigma`` and ``popsize_growth`` times the population, at most N
    times. A search ends when the library's own stopping tests fire (converged or degenerate),
    when its spread falls below ``min_spread``, or, with ``stall_generations=W``, when the
    median fitness of the last W/2 generations is no lower than that of the W/2 before (with
    fitness tasks resampled each generation the library's tests rarely fire, and a stalled
    search just wanders). ``restart_at="center"`` restarts at the ended search's mean, keeping
    what it learned (the meta-learning case: a larger population averages more noise away);
    ``"x0"`` restarts from the start with a new seed (the classic use: another basin).
    ``restart_log`` lists the restarts; ``best`` is the best over all searches.
    """

    kind = "cmaes"

    def __init__(self, x0: Any = None, sigma: float = 0.3, popsize: int | None = None,
                 seed: int = 0, space: Space | None = None,
                 bounds: np.ndarray | None = None, diagonal: bool = False, restarts: int = 0,
                 popsize_growth: float = 2.0, restart_at: str = "center",
                 stall_generations: int | None = None, min_spread: float | None = None) -> None:
        super().__init__(x0, space, seed)
        try:
            import cmaes  # noqa: F401
        except ImportError as e:
            raise ImportError("CMA-ES needs the `cmaes` package: pip install 'metaphi[evolution]'") from e
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        if popsize is not None and popsize < 2:
            raise ValueError(f"popsize must be >= 2, got {popsize}")
        if isinstance(restarts, bool) or not isinstance(restarts, (int, np.integer)) or restarts < 0:
            raise ValueError(f"restarts must be an integer >= 0, got {restarts!r}")
        if not popsize_growth >= 1:
            raise ValueError(f"popsize_growth must be >= 1 (IPOP doubles: 2), got {popsize_growth}")
        if restart_at not in ("center", "x0"):
            raise ValueError(f"restart_at must be 'center' or 'x0', got {restart_at!r}")
        if stall_generations is not None and (isinstance(stall_generations, bool)
                                              or int(stall_generations) != stall_generations
                                              or stall_generations < 4):
            raise ValueError("stall_generations must be an integer >= 4 (two halves of at least "
                             f"2 generations are compared), got {stall_generations!r}")
        if min_spread is not None and not min_spread > 0:
            raise ValueError(f"min_spread must be > 0, got {min_spread}")
        if space is not None and bounds is None:
            bounds = np.tile([0.0, 1.0], (self.dim, 1))
        if bounds is not None:
            bounds = to_numpy(bounds)
            if bounds.shape != (self.dim, 2) or not (bounds[:, 0] < bounds[:, 1]).all():
                raise ValueError(f"bounds must be a ({self.dim}, 2) array of [low, high] rows with "
                                 f"low < high, got shape {bounds.shape}")
            if not ((bounds[:, 0] <= self.x0) & (self.x0 <= bounds[:, 1])).all():
                raise ValueError("x0 must lie inside the bounds")
        self.sigma0, self.bounds = float(sigma), bounds
        self.diagonal = bool(diagonal)
        self.restarts, self.popsize_growth, self.restart_at = int(restarts), float(popsize_growth), restart_at
        self.stall_generations = None if stall_generations is None else int(stall_generations)
        self.min_spread = None if min_spread is None else float(min_spread)
        self.history: list[list[float]] = []  # every generation's fitnesses, over all searches
        self._medians: list[float] = []  # their medians (the stall test reads a window of them)
        self._cma = self._fresh(self.x0, popsize, self.seed)
        # one entry per search: where it started (x0, popsize, seed, first generation) and why
        self._runs: list[dict[str, Any]] = [
            {"x0": self.x0, "popsize": int(self._cma.population_size), "seed": self.seed,
             "start": 0, "reason": None}]
        self._pending: list[np.ndarray] | None = None

    @property
    def popsize(self) -> int:
        """The current search's population size (it grows at each restart)."""
        return self._runs[-1]["popsize"]

    @property
    def base_popsize(self) -> int:
        """The first search's population size (the one asked for, or the library's default)."""
        return self._runs[0]["popsize"]

    def _fresh(self, x0: np.ndarray, popsize: int | None, seed: int):
        from cmaes import CMA, SepCMA

        cls = SepCMA if self.diagonal else CMA
        return cls(mean=np.array(x0, dtype=np.float64), sigma=self.sigma0, bounds=self.bounds,
                   seed=seed, population_size=popsize)

    def ask(self) -> list[Candidate]:
        """``popsize`` candidates; asking again before tell() returns the same ones."""
        if self._pending is None:
            self._pending = [self._cma.ask() for _ in range(self.popsize)]
        return [self.decode(x) for x in self._pending]

    def tell(self, candidates: Sequence[Candidate], fitnesses: Sequence[float]) -> None:
        if self._pending is None:
            raise RuntimeError("call ask() before tell()")
        if len(candidates) != self.popsize:
            raise ValueError(f"tell() got {len(candidates)} candidates; ask() gave {self.popsize}")
        f = clean_fitnesses(fitnesses, self.popsize)
        center = np.array(self._cma.mean, dtype=np.float64)
        self._cma.tell(list(zip(self._pending, f.tolist())))
        self.track.update(self._pending, f, center)
        self.history.append(f.tolist())
        self._medians.append(float(np.median(f)))
        self._pending = None
        reason = self._ended()
        if reason is not None:
            self._restart(reason)

    def _ended(self) -> str | None:
        """Why the current search should give way to a restart (None: it goes on)."""
        if len(self._runs) > self.restarts:
            return None
        if self._cma.should_stop():
            return "stopped"
        if self.min_spread is not None and self.track.spread < self.min_spread:
            return "spread"
        w = self.stall_generations
        if w is not None and len(self._medians) - self._runs[-1]["start"] >= w:
            med = self._medians[-w:]
            if np.median(med[w // 2:]) >= np.median(med[:w // 2]):
                return "stalled"
        return None

    def _restart(self, reason: str) -> None:
        k = len(self._runs)
        x0 = np.array(self._cma.mean, dtype=np.float64) if self.restart_at == "center" else self.x0
        if self.bounds is not None:
            x0 = np.clip(x0, self.bounds[:, 0], self.bounds[:, 1])
        popsize = max(2, int(round(self.base_popsize * self.popsize_growth ** k)))
        seed = int(np.random.SeedSequence([self.seed, k]).generate_state(1)[0])
        self._cma = self._fresh(x0, popsize, seed)
        self._runs.append({"x0": x0, "popsize": popsize, "seed": seed, "start": len(self.history),
                           "reason": reason})

    @property
    def restart_log(self) -> list[dict[str, Any]]:
        """One entry per restart: the generation it began at, why the search before it ended
        ("stopped": the library's tests; "spread"; "stalled"), and the new popsize."""
        return [{"generation": r["start"], "reason": r["reason"], "popsize": r["popsize"]}
                for r in self._runs[1:]]

    @property
    def center(self) -> Candidate:
        return self.decode(np.asarray(self._cma.mean))

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim": self.dim, "seed": self.seed, "sigma0": self.sigma0,
                "popsize": self.base_popsize, "x0": to_plain(self.x0), "diagonal": self.diagonal,
                "restarts": self.restarts, "popsize_growth": self.popsize_growth,
                "restart_at": self.restart_at, "stall_generations": self.stall_generations,
                "min_spread": self.min_spread,
                "runs": [to_plain(r) for r in self._runs[1:]],
                "history": [list(h) for h in self.history], "track": self.track.state()}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self._check_state(s)
        if (int(s["seed"]) != self.seed or int(s["popsize"]) != self.base_popsize
                or float(s["sigma0"]) != self.sigma0 or bool(s.get("diagonal")) != self.diagonal
                or not np.array_equal(to_numpy(s["x0"]), self.x0)):
            raise ValueError("the CMA-ES state was saved with another seed, popsize, sigma, x0 or "
                             "diagonal setting; "
                             "rebuild the optimizer with the settings of the saved run")
        for k in ("restarts", "popsize_growth", "restart_at", "stall_generations", "min_spread"):
            v = s[k]
            if v != getattr(self, k):
                raise ValueError(f"the CMA-ES state has {k}={v!r}, this optimizer "
                                 f"{getattr(self, k)!r}; resume with the same restart settings")
        self._runs = self._runs[:1] + [
            {"x0": to_numpy(r["x0"]), "popsize": int(r["popsize"]), "seed": int(r["seed"]),
             "start": int(r["start"]), "reason": r["reason"]} for r in s["runs"]]
        self.history = [[float(v) for v in h] for h in s["history"]]
        self._medians = [float(np.median(h)) for h in self.history]
        # only the current search has state beyond its start: rebuild it and replay its part
        run = self._runs[-1]
        self._cma = self._fresh(run["x0"], run["popsize"], run["seed"])
        for fits in self.history[run["start"]:]:
            xs = [self._cma.ask() for _ in range(self.popsize)]
            self._cma.tell(list(zip(xs, fits)))
        self._pending = None
        self.track.load(s["track"])
