"""End-to-end evaluation: base forecasters, both meta-learners, metrics per subset and averaged.

:func:`evaluate` forecasts every series of the target subsets with each base forecaster, the
FFORMA combination (meta-trained on the target's own temporal holdouts, or zero-shot on another
dataset's), and the neural forecaster (meta-trained on the target's histories, or zero-shot on
another dataset's), then scores everything with the competition metrics.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .base import DEFAULT_METHODS, check_methods, run_base
from .data import SeriesSet
from .features import feature_matrix
from .fforma import (ERRORS, STATS_ENSEMBLE, FFORMA, holdout_best, mean_combination,
                     relative_errors)
from .metrics import score_subset, weighted_average
from .neural import NeuralConfig, fit_forecast

META_CHOICES = ("fforma", "neural")


@dataclass
class Evaluation:
    """Forecasts ``{subset: {method: (n, h)}}``, metrics ``{method: {subset|"Average": {...}}}``,
    timings in seconds, and extra logs (FFORMA weights, neural training losses)."""

    sets: list[SeriesSet]
    forecasts: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    logs: dict[str, object] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return list(self.metrics) or list(dict.fromkeys(k for f in self.forecasts.values()
                                                        for k in f))


@dataclass
class _Prepared:
    """A subset with its base forecasts, features and temporal-holdout errors.

    ``hold``/``base_hold``/``E_hold`` are the first holdout (one row per series);
    ``X_meta``/``E_meta`` stack the holdouts of every origin, FFORMA's meta-training rows.
    ``base_test``/``X_test`` are None for a zero-shot source (only its holdouts are used), and
    the holdout fields are None for a target that no meta-learner trains on."""

    s: SeriesSet
    hold: SeriesSet | None
    base_test: dict[str, np.ndarray] | None
    base_hold: dict[str, np.ndarray] | None
    X_test: np.ndarray | None
    E_hold: np.ndarray | None
    X_meta: np.ndarray | None = None
    E_meta: np.ndarray | None = None


def prepare(sets: list[SeriesSet], methods: list[str], cache_dir: str | Path | None,
            progress: bool, timings: dict[str, float], tag: str = "",
            error_methods: list[str] | None = None, origins: int = 1, test: bool = True,
            holdouts: bool = True, error: str = "owa") -> list[_Prepared]:
    """Base forecasts of ``methods`` on each set's future (``test``) and on its temporal holdouts
    at ``origins`` origins (``holdouts``), the features of both and the holdout errors of
    ``error_methods`` (default: ``methods``), measured by ``error`` (see relative_errors)."""
    error_methods = error_methods or methods
    out = []
    for s in sets:
        bt = X_t = hold = bh = E_h = X_m = E_m = None
        if test:
            bt, sec = run_base(s, methods, cache_dir=cache_dir, progress=progress)
            timings[f"base forecasters {tag}{s.name} (test)"] = sec
            t0 = time.perf_counter()
            X_t = feature_matrix(s.y, s.m, s.h)
            timings[f"features {tag}{s.name}"] = time.perf_counter() - t0
        if holdouts:
            holds, bases, Xs, Es = s.holdouts(origins), [], [], []
            t_feat = 0.0
            for j, hj in enumerate(holds, start=1):
                bj, sec = run_base(hj, methods, cache_dir=cache_dir, progress=progress)
                timings[f"base forecasters {tag}{s.name} (holdout{f' {j}' if j > 1 else ''})"] = sec
                t0 = time.perf_counter()
                bases.append(bj)
                Xs.append(feature_matrix(hj.y, hj.m, hj.h))
                # columns follow `error_methods`
                Es.append(relative_errors(hj.test, bj, hj.y, s.m, error_methods, error=error))
                t_feat += time.perf_counter() - t0
            timings[f"features {tag}{s.name} (holdouts)"] = t_feat
            hold, bh, E_h = holds[0], bases[0], Es[0]
            X_m, E_m = np.vstack(Xs), np.vstack(Es)
        out.append(_Prepared(s, hold, bt, bh, X_t, E_h, X_m, E_m))
    return out


def _fit_fforma(prep: list[_Prepared], methods: list[str], seed: int,
                n_models: int = 5) -> FFORMA:
    X = np.vstack([p.X_meta for p in prep])
    E = np.vstack([p.E_meta for p in prep])
    return FFORMA(methods, seed=seed, n_models=n_models).fit(X, E)


def _matching(sources: list[SeriesSet], target: SeriesSet) -> list[np.ndarray]:
    """Histories of the source subsets with the target's season length (all if none match)."""
    same = [s for s in sources if s.m == target.m]
    return [y for s in (same or sources) for y in s.y]


def _neural_cfg(neural_config: NeuralConfig | Mapping[str, NeuralConfig] | None, subset: str,
                seed: int) -> NeuralConfig:
    """The neural config of ``subset`` with its seed."""
    cfg = (neural_config[subset] if isinstance(neural_config, Mapping)
           else neural_config or NeuralConfig())
    return replace(cfg, seed=seed)


def evaluate(sets: list[SeriesSet], methods: list[str] | None = None,
             meta: tuple[str, ...] = META_CHOICES, sources: dict[str, list[SeriesSet]] | None = None,
             neural_config: NeuralConfig | Mapping[str, NeuralConfig] | None = None,
             cache_dir: str | Path | None = None, seed: int = 0, progress: bool = True,
             stack_neural: bool = False, truth: bool = True, zero_shot: tuple[str, ...] | None = None,
             holdout_origins: int = 1, fforma_error: str = "owa") -> Evaluation:
    """Forecast and score ``sets`` (subsets that carry ``test`` values).

    With ``truth=False`` the next ``h`` values after each series' end are forecast and nothing
    is scored (``metrics`` stays empty): the meta-learners still train on the series' own
    temporal holdouts.

    ``sources`` maps a name to other datasets' subsets for zero-shot transfer: the meta-learners
    named in ``zero_shot`` (default: those in ``meta``) are then also meta-trained on each source
    alone and applied to ``sets``; with both, their equal-weight mean is one more forecast.
    ``stack_neural`` adds ``FFORMA+NBeats``: FFORMA with the neural forecaster as one more
    base forecaster (costs one more neural fit per subset).

    ``holdout_origins`` > 1 is task augmentation for FFORMA (in-dataset and zero-shot): each
    training series gives a temporal holdout at that many origins, ``h`` apart (see
    :meth:`SeriesSet.holdouts`), at the cost of one more round of base-forecaster fits per
    origin. The targets' holdouts (FFORMA's training rows, and ``HoldoutBest``) are fitted only
    when ``meta`` has ``"fforma"``.

    ``fforma_error`` is the holdout error FFORMA minimises: ``"owa"`` (the paper's), or
    ``"smape"`` / ``"mape"`` for data scored by that metric alone.

    ``neural_config`` is one :class:`NeuralConfig` for every subset, or a mapping from subset
    name (``"tourism-monthly"``) to its own config (e.g. :meth:`NeuralConfig.nbeats_g`).
    """
    methods = check_methods(list(methods or DEFAULT_METHODS))
    zero_shot = meta if zero_shot is None else zero_shot
    bad = [m for m in (*meta, *zero_shot) if m not in META_CHOICES]
    if bad:
        raise ValueError(f"unknown meta-learner(s) {bad}; choose from {META_CHOICES}")
    if fforma_error not in ERRORS:
        raise ValueError(f"fforma_error must be one of {ERRORS}, got {fforma_error!r}")
    if not isinstance(holdout_origins, int) or holdout_origins < 1:
        raise ValueError(f"holdout_origins must be an integer >= 1, got {holdout_origins!r}")
    if stack_neural and holdout_origins > 1:
        raise ValueError("stack_neural refits the neural forecaster on the first holdout only; "
                         "use holdout_origins=1 with it")
    if isinstance(neural_config, Mapping) and ("neural" in meta or "neural" in zero_shot):
        missing = [s.name for s in sets if s.name not in neural_config]
        if missing:
            raise ValueError(f"neural_config has no config for subset(s) {missing}; give one "
                             f"for each of {[s.name for s in sets]}")
    for s in sets:
        if truth and s.test is None:
            raise ValueError(f"{s.name} has no held-out truth to score forecasts on")
    ev = Evaluation(sets)
    t_all = time.perf_counter()
    # Naive2 is always forecast: OWA is defined relative to it.
    run_methods = methods if "Naive2" in methods else methods + ["Naive2"]
    prep = prepare(sets, run_methods, cache_dir, progress, ev.timings, error_methods=methods,
                   origins=holdout_origins, holdouts="fforma" in meta, error=fforma_error)
    fc: dict[str, dict[str, np.ndarray]] = {p.s.name: dict(p.base_test) for p in prep}
    for p in prep:
        fc[p.s.name]["Mean"] = mean_combination(p.base_test, methods)
        if p.E_hold is not None:
            fc[p.s.name]["HoldoutBest"] = holdout_best(p.base_test, p.E_hold, methods)
        if set(STATS_ENSEMBLE) <= set(methods):
            fc[p.s.name]["StatsEnsemble"] = mean_combination(p.base_test, list(STATS_ENSEMBLE))
    if "fforma" in meta:
        t0 = time.perf_counter()
        model = _fit_fforma(prep, methods, seed)
        ev.logs["fforma_best_iterations"] = model.best_iterations
        ev.logs["fforma_mean_weights"] = {}
        for p in prep:
            fc[p.s.name]["FFORMA"] = model.combine(p.base_test, p.X_test)
            fc[p.s.name]["FFORMA-select"] = model.select(p.base_test, p.X_test)
            ev.logs["fforma_mean_weights"][p.s.name] = dict(
                zip(methods, np.round(model.weights(p.X_test).mean(axis=0), 4).tolist()))
        ev.timings["FFORMA meta-train + forecast"] = time.perf_counter() - t0
    if "neural" in meta:
        t0 = time.perf_counter()
        for i, p in enumerate(prep):
            out, log = fit_forecast(p.s, p.s, _neural_cfg(neural_config, p.s.name, seed + i),
                                    progress=progress)
            fc[p.s.name].update(out)
            ev.logs[f"neural {p.s.name}"] = log
        ev.timings["neural meta-train + forecast"] = time.perf_counter() - t0
    if "fforma" in meta and "neural" in meta:
        _mean_of_meta(prep, fc)
    if "fforma" in meta and "neural" in meta and stack_neural:
        # FFORMA over the base forecasters plus the neural one: the neural model is refitted on
        # the histories without their last h values so that it, too, gets holdout errors.
        t0 = time.perf_counter()
        ext = methods + ["NBeats-MAML"]
        for i, p in enumerate(prep):
            out, _ = fit_forecast(p.hold, p.hold, _neural_cfg(neural_config, p.s.name,
                                                              seed + 50 + i), progress=progress)
            p.base_hold = {**p.base_hold, "NBeats-MAML": out["NBeats-MAML"]}
            p.base_test = {**p.base_test, "NBeats-MAML": fc[p.s.name]["NBeats-MAML"]}
            p.E_hold = p.E_meta = np.column_stack([p.E_hold, relative_errors(
                p.hold.test, p.base_hold, p.hold.y, p.s.m, ["NBeats-MAML"], error=fforma_error)])
        model = _fit_fforma(prep, ext, seed)
        for p in prep:
            fc[p.s.name]["FFORMA+NBeats"] = model.combine(p.base_test, p.X_test)
            ev.logs.setdefault("fforma+nbeats_mean_weights", {})[p.s.name] = dict(
                zip(ext, np.round(model.weights(p.X_test).mean(axis=0), 4).tolist()))
            p.E_hold = p.E_meta = p.E_hold[:, :len(methods)]
        ev.timings["FFORMA+NBeats (neural refit on holdout + meta-train)"] = time.perf_counter() - t0
    for src_name, src_sets in (sources or {}).items():
        if "fforma" in zero_shot:
            src_prep = prepare(src_sets, run_methods, cache_dir, progress, ev.timings,
                               tag="source ", error_methods=methods, origins=holdout_origins,
                               test=False, error=fforma_error)
            t0 = time.perf_counter()
            model = _fit_fforma(src_prep, methods, seed)
            for p in prep:
                fc[p.s.name][f"FFORMA zero-shot ({src_name})"] = model.combine(p.base_test, p.X_test)
            ev.timings[f"FFORMA zero-shot from {src_name}"] = time.perf_counter() - t0
        if "neural" in zero_shot:
            t0 = time.perf_counter()
            for i, p in enumerate(prep):
                train = SeriesSet(f"{src_name}->{p.s.name}", [], _matching(src_sets, p.s), p.s.h,
                                  p.s.m)
                out, log = fit_forecast(train, p.s, _neural_cfg(neural_config, p.s.name,
                                                                seed + 100 + i), progress=progress)
                for k, v in out.items():
                    fc[p.s.name][f"{k} zero-shot ({src_name})"] = v
                ev.logs[f"neural zero-shot {src_name}->{p.s.name}"] = log
            ev.timings[f"neural zero-shot from {src_name}"] = time.perf_counter() - t0
        if "fforma" in zero_shot and "neural" in zero_shot:
            _mean_of_meta(prep, fc, f" zero-shot ({src_name})")
    ev.forecasts = fc
    ev.metrics = score(prep, fc) if truth else {}
    ev.timings["total"] = time.perf_counter() - t_all
    return ev


def _mean_of_meta(prep: list[_Prepared], fc: dict[str, dict[str, np.ndarray]],
                  suffix: str = "") -> None:
    """The simplest statistical + neural combination: equal weights, fixed in advance (so that
    no choice is fitted on the scored values)."""
    for p in prep:
        f = fc[p.s.name]
        f[f"FFORMA & NBeats-MAML mean{suffix}"] = 0.5 * (f[f"FFORMA{suffix}"]
                                                         + f[f"NBeats-MAML{suffix}"])


def score(prep: list[_Prepared], fc: dict[str, dict[str, np.ndarray]]) -> dict[str, dict]:
    methods = list(dict.fromkeys(k for p in prep for k in fc[p.s.name]))
    weights = {p.s.name: len(p.s) * p.s.h for p in prep}
    metrics: dict[str, dict] = {}
    for k in methods:
        per = {}
        for p in prep:
            n2 = fc[p.s.name].get("Naive2")
            per[p.s.name] = score_subset(p.s.test, fc[p.s.name][k], p.s.y, p.s.m, n2)
        per["Average"] = weighted_average(per, weights)
        for v in per.values():
            v.pop("_naive2", None)
        metrics[k] = per
    return metrics
