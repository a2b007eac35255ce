"""REINFORCE with a moving-average baseline: a policy over discrete and mixed spaces.

The policy is factorised over the space's dimensions: a categorical distribution (logits) for
every Categorical dimension and every Int dimension with at most ``max_int_choices`` values,
and a Gaussian over the unit (log-transformed) coordinate for every Float and wide Int
dimension. Reward is ``-fitness`` (fitness is minimised); the advantage is the reward minus an
exponential moving average of past mean rewards, divided by the generation's reward spread so
that the step size does not depend on the fitness's units.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from .evolution import Candidate, _Tracked, _Tracker, clean_fitnesses, to_plain
from .space import Categorical, Int, Space


class REINFORCE(_Tracked):
    """Policy-gradient search over a :class:`Space` (ask/tell, minimising fitness)."""

    kind = "reinforce"

    def __init__(self, space: Space, popsize: int = 16, lr: float = 0.1, seed: int = 0,
                 baseline_decay: float = 0.9, init_std: float = 0.25, min_std: float = 0.02,
                 max_int_choices: int = 64) -> None:
        if not isinstance(space, Space):
            raise TypeError(f"REINFORCE needs a Space, got {type(space).__name__}")
        if popsize < 2:
            raise ValueError(f"popsize must be >= 2 (the update compares candidates), got {popsize}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0 <= baseline_decay < 1:
            raise ValueError(f"baseline_decay must be in [0, 1), got {baseline_decay}")
        if not 0 < min_std <= init_std:
            raise ValueError(f"need 0 < min_std <= init_std, got min_std={min_std}, init_std={init_std}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.space, self.popsize, self.lr, self.seed = space, int(popsize), float(lr), int(seed)
        self.baseline_decay, self.min_std = float(baseline_decay), float(min_std)
        self.max_int_choices = int(max_int_choices)
        # Per dimension: ("cat", choices) or ("gauss", None); policy parameters in one dict.
        self.heads: dict[str, str] = {}
        self.params: dict[str, torch.Tensor] = {}
        for n, d in space.dims.items():
            if isinstance(d, Categorical) or (isinstance(d, Int) and d.size <= self.max_int_choices):
                self.heads[n] = "cat"
                self.params[n + ".logits"] = torch.zeros(d.size, dtype=torch.float64, requires_grad=True)
            else:
                self.heads[n] = "gauss"
                self.params[n + ".mu"] = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
                self.params[n + ".log_std"] = torch.tensor(math.log(init_std), dtype=torch.float64,
                                                           requires_grad=True)
        self.opt = torch.optim.Adam(list(self.params.values()), lr=self.lr)
        self.baseline: float | None = None
        self.track = _Tracker()
        self._best: Candidate | None = None

    # the policy ---------------------------------------------------------------------------
    def _choices(self, n: str) -> list[Any]:
        d = self.space.dims[n]
        return list(d.choices) if isinstance(d, Categorical) else list(range(d.low, d.high + 1))

    def _std(self, n: str) -> torch.Tensor:
        return self.params[n + ".log_std"].exp().clamp_min(self.min_std)

    def _raw_samples(self) -> list[dict[str, float]]:
        """Actions as raw numbers (category index or unbounded unit coordinate); a pure
        function of (seed, generation, policy)."""
        rng = np.random.default_rng([self.seed, self.track.generation])
        out = []
        with torch.no_grad():
            probs = {n: torch.softmax(self.params[n + ".logits"], 0).numpy()
                     for n, h in self.heads.items() if h == "cat"}
            for _ in range(self.popsize):
                a: dict[str, float] = {}
                for n, h in self.heads.items():
                    if h == "cat":
                        p = probs[n] / probs[n].sum()
                        a[n] = float(rng.choice(len(p), p=p))
                    else:
                        a[n] = float(self.params[n + ".mu"]) + float(self._std(n)) * rng.standard_normal()
                out.append(a)
        return out

    def _decode(self, a: dict[str, float]) -> dict[str, Any]:
        c: dict[str, Any] = {}
        for n, h in self.heads.items():
            d = self.space.dims[n]
            c[n] = self._choices(n)[int(a[n])] if h == "cat" else d.from_unit(a[n])  # type: ignore[union-attr]
        return c

    def ask(self) -> list[Candidate]:
        """``popsize`` candidates (dicts) sampled from the policy."""
        return [self._decode(a) for a in self._raw_samples()]

    def log_prob(self, a: dict[str, float]) -> torch.Tensor:
        lp = torch.zeros((), dtype=torch.float64)
        for n, h in self.heads.items():
            if h == "cat":
                lp = lp + torch.log_softmax(self.params[n + ".logits"], 0)[int(a[n])]
            else:
                dist = torch.distributions.Normal(self.params[n + ".mu"], self._std(n))
                lp = lp + dist.log_prob(torch.tensor(a[n], dtype=torch.float64))
        return lp

    def tell(self, candidates: Sequence[Candidate], fitnesses: Sequence[float]) -> None:
        """One policy-gradient step on this generation's fitnesses."""
        if len(candidates) != self.popsize:
            raise ValueError(f"tell() got {len(candidates)} candidates; ask() gave {self.popsize}")
        f = clean_fitnesses(fitnesses, self.popsize)
        actions = self._raw_samples()
        r = -f
        b = float(r.mean()) if self.baseline is None else self.baseline
        spread = float(r.std())
        # Equal fitnesses carry no information about which choice is better: no step.
        adv = (r - b) / spread if spread > 0 else np.zeros_like(r)
        loss = -sum(float(adv[i]) * self.log_prob(a) for i, a in enumerate(actions)) / self.popsize
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            # Decoding clips to the unit box, so a mean outside it would sit on a flat plateau
            # with no signal back; keep the Gaussians inside it.
            for n, h in self.heads.items():
                if h == "gauss":
                    self.params[n + ".mu"].clamp_(0.0, 1.0)
                    self.params[n + ".log_std"].clamp_(math.log(self.min_std), 0.0)
        self.baseline = (float(r.mean()) if self.baseline is None else
                         self.baseline_decay * self.baseline + (1 - self.baseline_decay) * float(r.mean()))
        i = int(np.argmin(f))
        if f[i] < self.track.best_f:
            self._best = self._decode(actions[i])
        # The tracker stores vectors; REINFORCE keeps its own best dict, so give it a dummy one.
        self.track.update([np.zeros(1)] * self.popsize, f)

    # results ------------------------------------------------------------------------------
    @property
    def best(self) -> tuple[Candidate, float]:
        if self._best is None:
            raise RuntimeError("no fitness has been told yet; call ask() and tell() first")
        return dict(self._best), self.track.best_f

    @property
    def center(self) -> Candidate:
        """The policy's mode: the most likely choice of each categorical, the Gaussian means."""
        a: dict[str, float] = {}
        with torch.no_grad():
            for n, h in self.heads.items():
                a[n] = (float(torch.argmax(self.params[n + ".logits"])) if h == "cat"
                        else float(self.params[n + ".mu"]))
        return self._decode(a)

    def probabilities(self) -> dict[str, dict[str, float]]:
        """The policy's current choice probabilities (categorical heads), for logs."""
        with torch.no_grad():
            return {n: {str(c): float(p) for c, p in zip(self._choices(n),
                                                          torch.softmax(self.params[n + ".logits"], 0))}
                    for n, h in self.heads.items() if h == "cat"}

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "seed": self.seed, "popsize": self.popsize,
                "space": self.space.describe(),
                "params": {k: v.detach().clone() for k, v in self.params.items()},
                "opt": self.opt.state_dict(), "baseline": self.baseline,
                "best": to_plain(self._best), "track": self.track.state()}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        if s.get("kind") != self.kind:
            raise ValueError(f"state_dict is for a {s.get('kind')!r} optimizer, not {self.kind!r}")
        if s["space"] != self.space.describe() or int(s["seed"]) != self.seed \
                or int(s["popsize"]) != self.popsize:
            raise ValueError("the REINFORCE state was saved with another space, seed or popsize; "
                             "rebuild the optimizer with the settings of the saved run")
        with torch.no_grad():
            for k, v in s["params"].items():
                self.params[k].copy_(v)
        self.opt.load_state_dict(s["opt"])
        self.baseline = None if s["baseline"] is None else float(s["baseline"])
        self._best = None if s["best"] is None else dict(s["best"])
        self.track.load(s["track"])

