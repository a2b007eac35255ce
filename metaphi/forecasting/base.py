"""Base forecasters: statsforecast's classical models plus Naive2, run in parallel on all cores.

:func:`run_base` returns a ``{method: (n_series, h) array}`` dict for one :class:`SeriesSet`, and
caches it on disk (``cache_dir``) keyed by the data and the method list, so the meta-learners and
reruns of a benchmark reuse the forecasts instead of refitting thousands of models.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

from .data import SeriesSet
from .metrics import naive2

DEFAULT_METHODS = ["Naive", "SeasonalNaive", "Naive2", "RWD", "SES", "Holt", "Damped", "ETS",
                   "Theta", "DOTM"]
ALL_METHODS = DEFAULT_METHODS + ["ARIMA"]


def _model(name: str, m: int):
    from statsforecast import models as sm

    makers = {
        "Naive": lambda: sm.Naive(alias="Naive"),
        "SeasonalNaive": lambda: sm.SeasonalNaive(season_length=m, alias="SeasonalNaive"),
        "RWD": lambda: sm.RandomWalkWithDrift(alias="RWD"),
        "SES": lambda: sm.SimpleExponentialSmoothingOptimized(alias="SES"),
        "Holt": lambda: sm.AutoETS(season_length=m, model="AAN", damped=False, alias="Holt"),
        "Damped": lambda: sm.AutoETS(season_length=m, model="AAN", damped=True, alias="Damped"),
        "ETS": lambda: sm.AutoETS(season_length=m, alias="ETS"),
        "Theta": lambda: sm.Theta(season_length=m, alias="Theta"),
        "DOTM": lambda: sm.DynamicOptimizedTheta(season_length=m, alias="DOTM"),
        "ARIMA": lambda: sm.AutoARIMA(season_length=m, alias="ARIMA"),
    }
    if name not in makers:
        raise ValueError(f"unknown base forecaster {name!r}; choose from {ALL_METHODS}")
    return makers[name]()


def check_methods(methods: list[str]) -> list[str]:
    bad = [x for x in methods if x not in ALL_METHODS]
    if bad:
        raise ValueError(f"unknown base forecaster(s) {bad}; choose from {ALL_METHODS}")
    if not methods:
        raise ValueError("give at least one base forecaster")
    return list(dict.fromkeys(methods))


def _cache_key(series: SeriesSet, methods: list[str]) -> str:
    hsh = hashlib.sha256()
    hsh.update(json.dumps([series.name, series.h, series.m, sorted(methods)]).encode())
    for s in series.y:
        hsh.update(np.ascontiguousarray(s, dtype=np.float64).tobytes())
        hsh.update(b"|")
    return hsh.hexdigest()[:20]


def run_base(series: SeriesSet, methods: list[str] | None = None, n_jobs: int = -1,
             cache_dir: str | Path | None = None, chunk: int = 400,
             progress: bool = True) -> tuple[dict[str, np.ndarray], float]:
    """Forecast every series ``h`` steps ahead with each method.

    Returns ``({method: (n, h) forecasts}, seconds spent fitting)``; with a cache hit the seconds
    are those of the run that filled the cache. A model that fails on a series falls back to the
    naive forecast for it (statsforecast's ``fallback_model``), and any non-finite forecast is
    replaced by the naive one so downstream metrics stay defined.
    """
    methods = check_methods(list(methods or DEFAULT_METHODS))
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"base_{series.name}_{_cache_key(series, methods)}.npz"
        if path.exists():
            z = np.load(path)
            return {k: z[k] for k in methods}, float(z["__seconds__"])
    t0 = time.perf_counter()
    n, h = len(series), series.h
    out = {k: np.empty((n, h)) for k in methods}
    naive = np.vstack([np.full(h, s[-1]) for s in series.y])
    if "Naive2" in methods:
        out["Naive2"] = np.vstack([naive2(s, h, series.m) for s in series.y])
    sf_methods = [k for k in methods if k != "Naive2"]
    if sf_methods:
        import pandas as pd
        from statsforecast import StatsForecast
        from statsforecast.models import Naive
        from tqdm.auto import tqdm

        # A process pool costs seconds to start (each worker imports statsforecast); below a
        # few hundred series one process is faster.
        jobs = 1 if n < 200 else n_jobs
        starts = range(0, n, chunk)
        bar = tqdm(starts, desc=f"base forecasters {series.name}", disable=not progress,
                   unit="chunk")
        for a in bar:
            b = min(n, a + chunk)
            lens = [len(series.y[i]) for i in range(a, b)]
            df = pd.DataFrame({
                "unique_id": np.repeat(np.arange(a, b), lens),
                "ds": np.concatenate([np.arange(L) for L in lens]),
                "y": np.concatenate([series.y[i] for i in range(a, b)])})
            sf = StatsForecast(models=[_model(k, series.m) for k in sf_methods], freq=1,
                               n_jobs=jobs, fallback_model=Naive())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fc = sf.forecast(df=df, h=h)
            fc = fc.sort_values(["unique_id", "ds"])
            for k in sf_methods:
                out[k][a:b] = fc[k].to_numpy(dtype=float).reshape(b - a, h)
    for k in methods:
        bad = ~np.isfinite(out[k]).all(axis=1)
        out[k][bad] = naive[bad]
    seconds = time.perf_counter() - t0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, __seconds__=seconds, **out)
        os.replace(tmp, path)
    return out, seconds
