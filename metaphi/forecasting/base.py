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
# Slower (AutoARIMA about 0.7 s per monthly M3 series on one core): opt-in, used by the benchmark.
ALL_METHODS = DEFAULT_METHODS + ["CES", "ARIMA"]


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
        "CES": lambda: sm.AutoCES(season_length=m, alias="CES"),
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


def _data_key(series: SeriesSet) -> str:
    hsh = hashlib.sha256()
    hsh.update(json.dumps([series.name, series.h, series.m]).encode())
    for s in series.y:
        hsh.update(np.ascontiguousarray(s, dtype=np.float64).tobytes())
        hsh.update(b"|")
    return hsh.hexdigest()[:20]


def _read_cache(files: list[Path], methods: list[str]) -> tuple[dict[str, np.ndarray], float]:
    """Forecasts of ``methods`` found in the cache files, and the seconds those files took.

    Each file holds one group of methods fitted together, with the seconds that fit took; the
    seconds of every file used are summed, so a cached total is the real cost of the fits.
    """
    found: dict[str, np.ndarray] = {}
    seconds = 0.0
    for f in sorted(files):
        with np.load(f) as z:
            new = [k for k in z.files if k in methods and k not in found]
            if new:
                found.update({k: z[k] for k in new})
                seconds += float(z["__seconds__"])
    return found, seconds


def run_base(series: SeriesSet, methods: list[str] | None = None, n_jobs: int = -1,
             cache_dir: str | Path | None = None, chunk: int = 400,
             progress: bool = True) -> tuple[dict[str, np.ndarray], float]:
    """Forecast every series ``h`` steps ahead with each method.

    Returns ``({method: (n, h) forecasts}, seconds spent fitting)``; forecasts found in the
    cache are reused and count with the seconds their fit took, so asking for one more method
    fits only that one. A model that fails on a series falls back to the naive forecast for it
    (statsforecast's ``fallback_model``), and any non-finite forecast is replaced by the naive
    one so downstream metrics stay defined.
    """
    methods = check_methods(list(methods or DEFAULT_METHODS))
    cached: dict[str, np.ndarray] = {}
    cached_sec = 0.0
    stem = None
    if cache_dir is not None:
        stem = f"base_{series.name}_{_data_key(series)}"
        cached, cached_sec = _read_cache(list(Path(cache_dir).glob(f"{stem}_*.npz")), methods)
    todo = [k for k in methods if k not in cached]
    if not todo:
        return {k: cached[k] for k in methods}, cached_sec
    out, seconds = _fit(series, todo, n_jobs, chunk, progress)
    if stem is not None:
        group = hashlib.sha256(json.dumps(sorted(todo)).encode()).hexdigest()[:8]
        path = Path(cache_dir) / f"{stem}_{group}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, __seconds__=seconds, **out)
        os.replace(tmp, path)
    out.update(cached)
    return {k: out[k] for k in methods}, seconds + cached_sec


def _fit(series: SeriesSet, methods: list[str], n_jobs: int, chunk: int,
         progress: bool) -> tuple[dict[str, np.ndarray], float]:
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
    return out, time.perf_counter() - t0
