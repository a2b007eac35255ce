"""End-to-end evaluation: base forecasters, both meta-learners, metrics per subset and averaged.

:func:`evaluate_forecasters` forecasts every series of the target subsets with each base
forecaster, the FFORMA combination (meta-trained on the target's own temporal holdouts, or
zero-shot on another dataset's), and the neural forecaster (meta-trained on the target's
histories, or zero-shot on another dataset's), then scores everything with the competition
metrics. (:func:`metaphi.loops.evaluate.evaluate` is the meta-test of learners on tasks, a
different thing.)
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .base import CHUNK_SIZE, DEFAULT_METHODS, BaseForecasts, resolve_jobs, resolve_methods
from .config import FALLBACKS, META_CHOICES
from .data import SeriesSet
from .fforma import (ERRORS, MIN_SERIES, STATS_ENSEMBLE, WeightLearner, holdout_best,
                     mean_combination, relative_errors)
from .metrics import score_subset, weighted_average
from .neural import NeuralConfig, fit_forecast
from .progress import Progress, fforma_ms, neural_ms


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


@dataclass
class _Planned:
    """A set's entries in a :class:`BaseForecasts` plan: its own future (``test``) and its
    temporal holdouts, one per origin."""

    s: SeriesSet
    test: int | None
    holds: list[tuple[SeriesSet, int]]


def plan_sets(plan: BaseForecasts, sets: list[SeriesSet], origins: int = 1, test: bool = True,
              holdouts: bool = True) -> list[_Planned]:
    """Add each set's future (``test``) and its temporal holdouts at ``origins`` origins
    (``holdouts``) to ``plan``, base forecasts and features of each."""
    out = []
    for s in sets:
        t = plan.add(s) if test else None
        hs = [(hj, plan.add(hj)) for hj in s.holdouts(origins)] if holdouts else []
        out.append(_Planned(s, t, hs))
    return out


def collect(plan: BaseForecasts, planned: list[_Planned], timings: dict[str, float],
            tag: str = "", error_methods: list[str] | None = None,
            error: str = "owa") -> list[_Prepared]:
    """The computed plan as :class:`_Prepared` sets: base forecasts, features and the holdout
    errors of ``error_methods`` (default: the plan's), measured by ``error`` (see
    relative_errors); ``timings`` gets the seconds of each part."""
    error_methods = error_methods or plan.methods
    out = []
    for q in planned:
        s = q.s
        bt = X_t = hold = bh = E_h = X_m = E_m = None
        if q.test is not None:
            bt, X_t, sec, fsec = plan.get(q.test)
            timings[f"base forecasters {tag}{s.name} (test)"] = sec
            timings[f"features {tag}{s.name}"] = fsec
        if q.holds:
            bases, Xs, Es = [], [], []
            t_feat = 0.0
            for j, (hj, handle) in enumerate(q.holds, start=1):
                bj, Xj, sec, fsec = plan.get(handle)
                timings[f"base forecasters {tag}{s.name} (holdout{f' {j}' if j > 1 else ''})"] = sec
                t0 = time.perf_counter()
                bases.append(bj)
                Xs.append(Xj)
                # columns follow `error_methods`
                Es.append(relative_errors(hj.test, bj, hj.y, s.m, error_methods, error=error))
                t_feat += fsec + time.perf_counter() - t0
            timings[f"features {tag}{s.name} (holdouts)"] = t_feat
            hold, bh, E_h = q.holds[0][0], bases[0], Es[0]
            X_m, E_m = np.vstack(Xs), np.vstack(Es)
        out.append(_Prepared(s, hold, bt, bh, X_t, E_h, X_m, E_m))
    return out


def fforma_rows(sets: list[SeriesSet], origins: int = 1) -> int:
    """FFORMA's meta-training rows from ``sets``: one per series and holdout origin."""
    return sum(len(hj) for s in sets for hj in s.holdouts(origins))


def check_fforma_rows(sets: list[SeriesSet], origins: int, what: str) -> None:
    """The too-few-series error, raised before anything is fitted."""
    n = fforma_rows(sets, origins)
    if n < MIN_SERIES:
        names = ", ".join(s.name for s in sets)
        raise ValueError(f"FFORMA needs at least {MIN_SERIES} series to meta-train on; {what} "
                         f"({names}) has {n}. Add series, forecast with the base forecasters "
                         "only (--meta none), or use their mean instead of FFORMA "
                         "(--fallback mean)")


def _fit_fforma(prep: list[_Prepared], methods: list[str], seed: int, n_models: int = 5,
                n_jobs: int = 1, bar: Progress | None = None) -> WeightLearner:
    X = np.vstack([p.X_meta for p in prep])
    E = np.vstack([p.E_meta for p in prep])
    return WeightLearner(methods, seed=seed, n_models=n_models).fit(
        X, E, n_jobs=n_jobs, progress=None if bar is None else
        (lambda trees: bar(fforma_ms(len(X), 1, 1, trees, min(n_jobs, n_models)))))


def _fforma_estimate(rows: int, methods: list[str], n_jobs: int, n_models: int = 5) -> float:
    return fforma_ms(rows, len(methods), n_models, 400, min(n_jobs, n_models))


def _neural_ms(cfg: NeuralConfig, n_series: int) -> float:
    return neural_ms(len(cfg.members()), cfg.pretrain_steps, cfg.meta_steps, cfg.batch_size,
                     n_series, cfg.workers)


def _matching(sources: list[SeriesSet], target: SeriesSet) -> list[np.ndarray]:
    """Histories of the source subsets with the target's season length (all if none match)."""
    same = [s for s in sources if s.m == target.m]
    return [y for s in (same or sources) for y in s.y]


def _neural_cfg(neural_config: NeuralConfig | Mapping[str, NeuralConfig] | None, subset: str,
                seed: int) -> NeuralConfig:
    """The neural config of ``subset`` with its seed."""
    cfg = (neural_config[subset] if isinstance(neural_config, Mapping)
           else neural_config or NeuralConfig())
    return cfg.updated(seed=seed)


def evaluate_forecasters(
        sets: list[SeriesSet], methods: list[str] | None = None,
        meta: tuple[str, ...] = META_CHOICES, sources: dict[str, list[SeriesSet]] | None = None,
        neural_config: NeuralConfig | Mapping[str, NeuralConfig] | None = None,
        cache_dir: str | Path | None = None, seed: int = 0, progress: bool = True,
        stack_neural: bool = False, truth: bool = True, zero_shot: tuple[str, ...] | None = None,
        holdout_origins: int = 1, fforma_error: str = "owa", fallback: str = "error",
        n_jobs: int = -1, chunk_size: int = CHUNK_SIZE, backend: str = "local",
        dask_address: str | None = None) -> Evaluation:
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
    ``"smape"`` / ``"mape"`` for data scored by that metric alone. Too few series for FFORMA
    are an error before anything is fitted, or with ``fallback="mean"`` FFORMA is left out (the
    ``Mean`` combination stays; ``logs["fallback"]`` says so).

    ``neural_config`` is one :class:`NeuralConfig` for every subset, or a mapping from subset
    name (``"tourism-monthly"``) to its own config (e.g. :meth:`NeuralConfig.nbeats_g`).

    The base forecasts and features of every subset, holdout and source are computed together
    by a :class:`BaseForecasts` plan (``n_jobs`` processes, or ``backend="dask"`` on the cluster
    at ``dask_address``), in chunks of ``chunk_size`` series cached in ``cache_dir``; one
    progress bar covers the whole run.
    """
    methods = resolve_methods(list(methods or DEFAULT_METHODS))
    zero_shot = meta if zero_shot is None else zero_shot
    bad = [m for m in (*meta, *zero_shot) if m not in META_CHOICES]
    if bad:
        raise ValueError(f"unknown meta-learner(s) {bad}; choose from {META_CHOICES}")
    if fforma_error not in ERRORS:
        raise ValueError(f"fforma_error must be one of {ERRORS}, got {fforma_error!r}")
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
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
    meta = tuple(meta)
    # too few series: an error, or the fallback the user chose, before anything is fitted
    if "fforma" in meta and fforma_rows(sets, holdout_origins) < MIN_SERIES:
        if fallback == "error":
            check_fforma_rows(sets, holdout_origins, "the data")
        meta = tuple(m for m in meta if m != "fforma")
        ev.logs["fallback"] = (f"FFORMA left out: fewer than {MIN_SERIES} series; Mean is the "
                               "plain mean of the base forecasters")
    zs_fforma = "fforma" in zero_shot
    for src_name, src_sets in (sources or {}).items():
        if zs_fforma:
            check_fforma_rows(src_sets, holdout_origins, f"source {src_name}")
    t_all = time.perf_counter()
    n_cores = resolve_jobs(n_jobs)
    # Naive2 is always forecast: OWA is defined relative to it.
    run_methods = methods if "Naive2" in methods else methods + ["Naive2"]
    plan = BaseForecasts(run_methods, cache_dir, n_jobs, chunk_size, backend, dask_address)
    planned = plan_sets(plan, sets, holdout_origins, holdouts="fforma" in meta)
    src_planned = {name: plan_sets(plan, src, holdout_origins, test=False)
                   for name, src in (sources or {}).items() if zs_fforma}
    with Progress(progress) as bar:
        bar.add(plan.estimate())
        fforma_fits = ("fforma" in meta) + len(src_planned) + (
            stack_neural and "fforma" in meta and "neural" in meta)
        bar.add(fforma_fits * _fforma_estimate(
            sum(len(s) for s in sets) * holdout_origins, methods, n_cores))
        n_neural = (("neural" in meta) + (stack_neural and "fforma" in meta and "neural" in meta)
                    + ("neural" in zero_shot) * len(sources or {}))
        for s in sets if n_neural else []:
            bar.add(n_neural * _neural_ms(_neural_cfg(neural_config, s.name, seed), len(s)))
        bar.stage("base forecasters and features")
        plan.run(bar)
        prep = collect(plan, planned, ev.timings, error_methods=methods, error=fforma_error)
        fc: dict[str, dict[str, np.ndarray]] = {p.s.name: dict(p.base_test) for p in prep}
        for p in prep:
            fc[p.s.name]["Mean"] = mean_combination(p.base_test, methods)
            if p.E_hold is not None:
                fc[p.s.name]["HoldoutBest"] = holdout_best(p.base_test, p.E_hold, methods)
            if set(STATS_ENSEMBLE) <= set(methods):
                fc[p.s.name]["StatsEnsemble"] = mean_combination(p.base_test, list(STATS_ENSEMBLE))
        if "fforma" in meta:
            bar.stage("FFORMA")
            t0 = time.perf_counter()
            model = _fit_fforma(prep, methods, seed, n_jobs=n_cores, bar=bar)
            ev.logs["fforma_best_iterations"] = model.best_iterations
            ev.logs["fforma_mean_weights"] = {}
            for p in prep:
                fc[p.s.name]["FFORMA"] = model.combine(p.base_test, p.X_test)
                fc[p.s.name]["FFORMA-select"] = model.select(p.base_test, p.X_test)
                ev.logs["fforma_mean_weights"][p.s.name] = dict(
                    zip(methods, np.round(model.weights(p.X_test).mean(axis=0), 4).tolist()))
            ev.timings["FFORMA meta-train + forecast"] = time.perf_counter() - t0
        if "neural" in meta:
            bar.stage("neural forecaster")
            t0 = time.perf_counter()
            for i, p in enumerate(prep):
                cfg = _neural_cfg(neural_config, p.s.name, seed + i)
                out, log = fit_forecast(p.s, p.s, cfg, progress=False)
                bar(_neural_ms(cfg, len(p.s)))
                fc[p.s.name].update(out)
                ev.logs[f"neural {p.s.name}"] = log
            ev.timings["neural meta-train + forecast"] = time.perf_counter() - t0
        if "fforma" in meta and "neural" in meta:
            _mean_of_meta(prep, fc)
        if "fforma" in meta and "neural" in meta and stack_neural:
            # FFORMA over the base forecasters plus the neural one: the neural model is refitted
            # on the histories without their last h values so that it, too, gets holdout errors.
            bar.stage("FFORMA+NBeats")
            t0 = time.perf_counter()
            ext = methods + ["NBeats-MAML"]
            for i, p in enumerate(prep):
                cfg = _neural_cfg(neural_config, p.s.name, seed + 50 + i)
                out, _ = fit_forecast(p.hold, p.hold, cfg, progress=False)
                bar(_neural_ms(cfg, len(p.s)))
                p.base_hold = {**p.base_hold, "NBeats-MAML": out["NBeats-MAML"]}
                p.base_test = {**p.base_test, "NBeats-MAML": fc[p.s.name]["NBeats-MAML"]}
                p.E_hold = p.E_meta = np.column_stack([p.E_hold, relative_errors(
                    p.hold.test, p.base_hold, p.hold.y, p.s.m, ["NBeats-MAML"],
                    error=fforma_error)])
            model = _fit_fforma(prep, ext, seed, n_jobs=n_cores, bar=bar)
            for p in prep:
                fc[p.s.name]["FFORMA+NBeats"] = model.combine(p.base_test, p.X_test)
                ev.logs.setdefault("fforma+nbeats_mean_weights", {})[p.s.name] = dict(
                    zip(ext, np.round(model.weights(p.X_test).mean(axis=0), 4).tolist()))
                p.E_hold = p.E_meta = p.E_hold[:, :len(methods)]
            ev.timings["FFORMA+NBeats (neural refit on holdout + meta-train)"] = (
                time.perf_counter() - t0)
        for src_name, src_sets in (sources or {}).items():
            if zs_fforma:
                bar.stage(f"FFORMA from {src_name}")
                src_prep = collect(plan, src_planned[src_name], ev.timings, tag="source ",
                                   error_methods=methods, error=fforma_error)
                t0 = time.perf_counter()
                model = _fit_fforma(src_prep, methods, seed, n_jobs=n_cores, bar=bar)
                for p in prep:
                    fc[p.s.name][f"FFORMA zero-shot ({src_name})"] = model.combine(p.base_test,
                                                                                   p.X_test)
                ev.timings[f"FFORMA zero-shot from {src_name}"] = time.perf_counter() - t0
            if "neural" in zero_shot:
                bar.stage(f"neural forecaster from {src_name}")
                t0 = time.perf_counter()
                for i, p in enumerate(prep):
                    train = SeriesSet(f"{src_name}->{p.s.name}", [], _matching(src_sets, p.s),
                                      p.s.h, p.s.m)
                    cfg = _neural_cfg(neural_config, p.s.name, seed + 100 + i)
                    out, log = fit_forecast(train, p.s, cfg, progress=False)
                    bar(_neural_ms(cfg, len(p.s)))
                    for k, v in out.items():
                        fc[p.s.name][f"{k} zero-shot ({src_name})"] = v
                    ev.logs[f"neural zero-shot {src_name}->{p.s.name}"] = log
                ev.timings[f"neural zero-shot from {src_name}"] = time.perf_counter() - t0
            if zs_fforma and "neural" in zero_shot:
                _mean_of_meta(prep, fc, f" zero-shot ({src_name})")
        bar.stage("scoring")
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
