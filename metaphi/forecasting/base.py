"""Base forecasters: statsforecast's classical models plus Naive2, and the series features, computed
in resumable chunks on all cores (or on a Dask cluster through statsforecast's Fugue backend).

:class:`BaseForecasts` is the plan of one run: every subset, holdout and origin it needs is
added first, then :meth:`BaseForecasts.run` computes all of it in chunks of ``chunk_size``
series. Each chunk's forecasts (and features) are written to ``cache_dir`` as soon as they are
done, under a name derived from the chunk's data, so a killed run started again resumes where
it stopped, a run with one more forecaster fits only that one, and the same series under
another name (a transfer target) reuse the work. Cache files are written atomically (a temporary
name the reader never picks up, then a rename); a damaged one is discarded with a warning and
recomputed.

:func:`run_base` is the one-call form: ``{method: (n_series, h) array}`` and the fit seconds.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import SeriesSet
from .features import feature_matrix
from .metrics import naive2

# The fast pool (the default): every method costs at most a few milliseconds per series.
DEFAULT_METHODS = ["Naive", "SeasonalNaive", "Naive2", "RWD", "SES", "Holt", "Damped", "Theta",
                   "DOTM", "CES"]
# Every forecaster (``--methods all``), in the order FFORMA's published runs used; AutoETS and
# AutoARIMA are far slower than the rest, so they are opt-in.
ALL_METHODS = ["Naive", "SeasonalNaive", "Naive2", "RWD", "SES", "Holt", "Damped", "ETS", "Theta",
               "DOTM", "CES", "ARIMA"]
POOLS = {"default": DEFAULT_METHODS, "all": ALL_METHODS}

# Relative cost of one fit (milliseconds per series of length ~60 on one core), for the ETA.
COST_MS = {"Naive": 0.05, "SeasonalNaive": 0.05, "Naive2": 0.1, "RWD": 0.05, "SES": 0.05,
           "Holt": 0.9, "Damped": 2.0, "ETS": 60.0, "Theta": 0.6, "DOTM": 0.9, "CES": 4.0,
           "ARIMA": 290.0, "features": 2.1}
CHUNK_SIZE = 500


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


def resolve_methods(methods: Iterable[str]) -> list[str]:
    """Method names with the pools ``default`` and ``all`` expanded, checked and de-duplicated."""
    out: list[str] = []
    for k in methods:
        out += POOLS.get(k.lower(), [k]) if isinstance(k, str) else [k]
    return check_methods(out)


def resolve_jobs(n_jobs: int) -> int:
    """Processes for ``n_jobs`` (-1: all cores)."""
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0 or n_jobs < -1:
        raise ValueError(f"n_jobs must be >= 1 or -1 (all cores), got {n_jobs!r}")
    return (os.cpu_count() or 1) if n_jobs == -1 else n_jobs


def check_methods(methods: list[str]) -> list[str]:
    bad = [x for x in methods if x not in ALL_METHODS]
    if bad:
        raise ValueError(f"unknown base forecaster(s) {bad}; choose from {ALL_METHODS} or the "
                         f"pools {sorted(POOLS)}")
    if not methods:
        raise ValueError("give at least one base forecaster")
    return list(dict.fromkeys(methods))


# cache files ------------------------------------------------------------------------------------

def _chunk_key(ys: list[np.ndarray], h: int, m: int) -> str:
    hsh = hashlib.sha256(json.dumps([h, m, len(ys)]).encode())
    for s in ys:
        hsh.update(np.ascontiguousarray(s, dtype=np.float64).tobytes())
        hsh.update(b"|")
    return hsh.hexdigest()[:24]


def _group(methods: list[str]) -> str:
    return hashlib.sha256(json.dumps(sorted(methods)).encode()).hexdigest()[:8]


def atomic_save_npz(path: Path, **arrays) -> None:
    """Write ``path`` so that a reader sees the whole file or none: the bytes go to a hidden
    temporary file in the same folder (``.<name>.<pid>.<random>.tmp``, never matched by the
    cache's patterns), are synced, then renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _clean_stale_temps(cache_dir: Path) -> None:
    """Remove temporary files that killed runs left (their process is gone)."""
    for tmp in cache_dir.glob(".*.tmp"):
        try:
            pid = int(tmp.name.rsplit(".", 3)[-3])
            os.kill(pid, 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except (ValueError, IndexError, PermissionError, OSError):
            continue


def _load_entry(path: Path, n: int, h: int | None, want: Callable[[str], bool]
                ) -> tuple[dict[str, np.ndarray], float] | None:
    """The arrays of one cache file that ``want`` names and its seconds; None (with a warning,
    the file removed) if it is damaged or does not hold arrays of the chunk's shape."""
    try:
        with np.load(path, allow_pickle=False) as z:
            seconds = float(z["__seconds__"])
            found = {k: z[k] for k in z.files if k != "__seconds__" and want(k)}
        for k, v in found.items():
            if v.ndim != 2 or v.shape[0] != n or (h is not None and v.shape[1] != h) \
                    or not np.isfinite(v).all():
                raise ValueError(f"{k} has shape {v.shape} or non-finite values")
        return found, seconds
    except Exception as e:  # a damaged zip raises BadZipFile, EOFError, ValueError, KeyError...
        warnings.warn(f"discarding the damaged cache file {path} ({type(e).__name__}: {e}); "
                      "its forecasts are computed again", stacklevel=3)
        path.unlink(missing_ok=True)
        return None


# computing one chunk ----------------------------------------------------------------------------

def _frame(ys: list[np.ndarray]):
    import pandas as pd

    lens = [len(y) for y in ys]
    return pd.DataFrame({"unique_id": np.repeat(np.arange(len(ys)), lens),
                         "ds": np.concatenate([np.arange(L) for L in lens]),
                         "y": np.concatenate(ys)})


def _statsforecast(ys: list[np.ndarray], h: int, m: int, methods: list[str],
                   engine=None) -> dict[str, np.ndarray]:
    """statsforecast's forecasts of ``methods`` in one process, or on a Fugue ``engine`` (a
    Dask client) with float64 output, so that both give the same numbers."""
    from statsforecast import StatsForecast
    from statsforecast.models import Naive

    models = [_model(k, m) for k in methods]
    df = _frame(ys)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if engine is None:
            fc = StatsForecast(models=models, freq=1, n_jobs=1,
                               fallback_model=Naive()).forecast(df=df, h=h)
        else:
            fc = _fugue_backend()(engine=engine).forecast(
                df=df, freq=1, models=models, fallback_model=Naive(), X_df=None, h=h,
                level=None, fitted=False, prediction_intervals=None, id_col="unique_id",
                time_col="ds", target_col="y")
            fc = fc.compute() if hasattr(fc, "compute") else fc
    fc = fc.sort_values(["unique_id", "ds"])
    return {k: fc[k].to_numpy(dtype=float).reshape(len(ys), h) for k in methods}


def _fugue_backend():
    """statsforecast's Fugue backend with float64 forecasts (its schema says float32)."""
    import numpy as np
    from statsforecast.distributed.fugue import FugueBackend
    from triad import Schema

    class Float64FugueBackend(FugueBackend):
        def _get_output_schema(self, **kw):
            schema = super()._get_output_schema(**kw)
            f32 = Schema([("x", np.float32)])["x"].type
            return Schema([(f.name, np.float64 if f.type == f32 else f.type)
                           for f in schema.fields])

    return Float64FugueBackend


def compute_chunk(ys: list[np.ndarray], h: int, m: int, methods: list[str], features: bool,
                  engine=None) -> tuple[dict[str, np.ndarray], np.ndarray | None, float, float]:
    """Forecasts of ``methods`` for the histories ``ys``, their features (if asked) and the
    seconds each took. A model that fails on a series falls back to the naive forecast
    (statsforecast's ``fallback_model``), and any non-finite forecast is replaced by the naive
    one so downstream metrics stay defined."""
    t0 = time.perf_counter()
    out: dict[str, np.ndarray] = {}
    if "Naive2" in methods:
        out["Naive2"] = np.vstack([naive2(s, h, m) for s in ys])
    sf = [k for k in methods if k != "Naive2"]
    if sf:
        out.update(_statsforecast(ys, h, m, sf, engine))
    naive = np.vstack([np.full(h, s[-1]) for s in ys])
    for k in out:
        bad = ~np.isfinite(out[k]).all(axis=1)
        out[k][bad] = naive[bad]
    t1 = time.perf_counter()
    X = feature_matrix(ys, m, h) if features else None
    return out, X, t1 - t0, time.perf_counter() - t1


def _compute_job(job: tuple) -> tuple:
    return compute_chunk(*job)


# the plan of a run ------------------------------------------------------------------------------

@dataclass
class _Chunk:
    key: str
    ys: list[np.ndarray]
    h: int
    m: int
    found: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0  # fit seconds of the cached forecasts used
    X: np.ndarray | None = None
    feature_seconds: float = 0.0
    todo: list[str] = field(default_factory=list)
    need_features: bool = False

    def cost(self) -> float:
        """Estimated core-milliseconds of the work left."""
        scale = np.mean([len(y) for y in self.ys]) / 60.0
        return len(self.ys) * scale * (sum(COST_MS[k] for k in self.todo)
                                       + (COST_MS["features"] if self.need_features else 0.0))


@dataclass
class _Entry:
    series: SeriesSet
    chunks: list[_Chunk]
    features: bool


class BaseForecasts:
    """Base forecasts (and features) of every series set a run needs, computed together.

    ``add(series)`` registers a set and returns a handle; ``run()`` computes what the cache does
    not hold, chunk by chunk, in ``n_jobs`` processes (``backend="local"``; -1 = all cores) or
    on the Dask cluster at ``dask_address`` (``backend="dask"``, statsforecast's Fugue backend);
    ``get(handle)`` returns ``(forecasts, features or None, fit seconds, feature seconds)``,
    the seconds those took also when they were read from the cache.
    """

    def __init__(self, methods: list[str] | None = None, cache_dir: str | Path | None = None,
                 n_jobs: int = -1, chunk_size: int = CHUNK_SIZE, backend: str = "local",
                 dask_address: str | None = None) -> None:
        self.methods = resolve_methods(methods or DEFAULT_METHODS)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if backend not in ("local", "dask"):
            raise ValueError(f"backend must be 'local' or 'dask', got {backend!r}")
        if backend == "dask" and not dask_address:
            raise ValueError("backend 'dask' needs the scheduler's address (dask_address)")
        self.n_jobs = resolve_jobs(n_jobs)
        self.chunk_size, self.backend, self.dask_address = chunk_size, backend, dask_address
        self.entries: list[_Entry] = []
        if self.cache_dir is not None:
            if self.cache_dir.exists() and not self.cache_dir.is_dir():
                raise ValueError(f"cache folder {self.cache_dir} is a file")
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            _clean_stale_temps(self.cache_dir)

    # planning ----------------------------------------------------------------------------------
    def add(self, series: SeriesSet, features: bool = True) -> int:
        chunks = []
        for a in range(0, len(series), self.chunk_size):
            ys = series.y[a:a + self.chunk_size]
            c = _Chunk(_chunk_key(ys, series.h, series.m), ys, series.h, series.m)
            self._read_chunk(c, features)
            chunks.append(c)
        self.entries.append(_Entry(series, chunks, features))
        return len(self.entries) - 1

    def _read_chunk(self, c: _Chunk, features: bool) -> None:
        if self.cache_dir is not None:
            for f in sorted(self.cache_dir.glob(f"base-{c.key}-*.npz")):
                got = _load_entry(f, len(c.ys), c.h,
                                  lambda k: k in self.methods and k not in c.found)
                if got and got[0]:
                    c.found.update(got[0])
                    c.seconds += got[1]
            f = self.cache_dir / f"features-{c.key}.npz"
            if features and f.exists():
                got = _load_entry(f, len(c.ys), None, lambda k: k == "X")
                if got and "X" in got[0]:
                    c.X, c.feature_seconds = got[0]["X"], got[1]
        c.todo = [k for k in self.methods if k not in c.found]
        c.need_features = features and c.X is None

    def pending(self) -> list[_Chunk]:
        return [c for e in self.entries for c in e.chunks if c.todo or c.need_features]

    def _workers(self, todo: list[_Chunk]) -> int:
        """Processes :meth:`run` uses: a pool costs seconds to start (each worker imports
        statsforecast), so below a few hundred series one process is faster."""
        if self.backend == "dask" or sum(len(c.ys) for c in todo) < 200:
            return 1
        return max(1, min(self.n_jobs, len(todo)))

    def estimate(self) -> float:
        """Estimated wall milliseconds of the work :meth:`run` has left (cluster runs: as on
        one core)."""
        todo = self.pending()
        return float(sum(c.cost() for c in todo)) / (self._workers(todo) if todo else 1)

    # running -----------------------------------------------------------------------------------
    def run(self, progress: Callable[[float], None] | None = None) -> None:
        """Compute every pending chunk, writing each to the cache as it is done;
        ``progress(ms)`` is called then with its share of :meth:`estimate`."""
        todo = self.pending()
        if not todo:
            return
        workers = self._workers(todo)
        jobs = [(c.ys, c.h, c.m, c.todo, c.need_features) for c in todo]
        if self.backend == "dask":
            from distributed import Client

            with Client(self.dask_address, set_as_default=False) as client:
                for c, job in zip(todo, jobs):
                    self._done(c, compute_chunk(*job, engine=client), progress, workers)
        elif workers == 1:
            for c, job in zip(todo, jobs):
                self._done(c, compute_chunk(*job), progress, workers)
        else:
            import multiprocessing as mp
            from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                futures = {pool.submit(_compute_job, job): c for c, job in zip(todo, jobs)}
                while futures:
                    done, _ = wait(futures, return_when=FIRST_COMPLETED)
                    for f in done:
                        self._done(futures.pop(f), f.result(), progress, workers)

    def _done(self, c: _Chunk, result: tuple, progress, workers: int) -> None:
        cost = c.cost() / workers
        fc, X, sec, fsec = result
        if c.todo:
            if self.cache_dir is not None:
                atomic_save_npz(self.cache_dir / f"base-{c.key}-{_group(c.todo)}.npz",
                                __seconds__=sec, **fc)
            c.found.update(fc)
            c.seconds += sec
            c.todo = []
        if c.need_features:
            if self.cache_dir is not None:
                atomic_save_npz(self.cache_dir / f"features-{c.key}.npz", __seconds__=fsec, X=X)
            c.X, c.feature_seconds, c.need_features = X, fsec, False
        if progress is not None:
            progress(cost)

    def get(self, handle: int
            ) -> tuple[dict[str, np.ndarray], np.ndarray | None, float, float]:
        """``(forecasts, features or None, fit seconds, feature seconds)`` of an added set."""
        e = self.entries[handle]
        if any(c.todo or c.need_features for c in e.chunks):
            raise RuntimeError("call run() before get()")
        fc = {k: np.concatenate([c.found[k] for c in e.chunks]) for k in self.methods}
        X = np.vstack([c.X for c in e.chunks]) if e.features else None
        return (fc, X, sum(c.seconds for c in e.chunks),
                sum(c.feature_seconds for c in e.chunks) if e.features else 0.0)


def run_base(series: SeriesSet, methods: list[str] | None = None, n_jobs: int = -1,
             cache_dir: str | Path | None = None, chunk: int = CHUNK_SIZE,
             progress: bool = True) -> tuple[dict[str, np.ndarray], float]:
    """Forecast every series ``h`` steps ahead with each method: ``({method: (n, h)}, seconds
    the fits took)``; forecasts found in the cache are reused and count with the seconds their
    fit took, so asking for one more method fits only that one."""
    from .progress import Progress

    plan = BaseForecasts(methods, cache_dir, n_jobs, chunk)
    handle = plan.add(series, features=False)
    with Progress(progress, f"base forecasters {series.name}") as bar:
        bar.add(plan.estimate())
        plan.run(bar)
    fc, _, seconds, _ = plan.get(handle)
    return fc, seconds
