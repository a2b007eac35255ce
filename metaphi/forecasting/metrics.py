"""Competition metrics (M3/M4/Tourism definitions) and the Naive2 benchmark.

All per-series metrics take arrays of shape ``(h,)`` or ``(n, h)`` and return one value per
series (the mean over the horizon). A subset's score is the mean over its series; a dataset's
average weights each subset by ``series x horizon`` (every forecast point counts once).
"""
from __future__ import annotations

import numpy as np


def smape(y: np.ndarray, f: np.ndarray) -> np.ndarray:
    """sMAPE (%) = mean over the horizon of ``200 |y - f| / (|y| + |f|)`` (0 where both are 0)."""
    y, f = np.atleast_2d(y).astype(float), np.atleast_2d(f).astype(float)
    den = np.abs(y) + np.abs(f)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(den == 0, 0.0, 200.0 * np.abs(y - f) / den)
    return r.mean(axis=1)


def mape(y: np.ndarray, f: np.ndarray) -> np.ndarray:
    """MAPE (%) = mean of ``100 |y - f| / |y|`` (inf where a true value is 0)."""
    y, f = np.atleast_2d(y).astype(float), np.atleast_2d(f).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (100.0 * np.abs(y - f) / np.abs(y)).mean(axis=1)


def mape_nonzero(y: np.ndarray, f: np.ndarray) -> np.ndarray:
    """MAPE (%) over the true values that are not zero, per series (APE is undefined there; a
    temporal holdout can have zeros where the official test period has none)."""
    y, f = np.atleast_2d(y).astype(float), np.atleast_2d(f).astype(float)
    ok = y != 0
    ape = np.where(ok, 100.0 * np.abs(y - f) / np.where(ok, np.abs(y), 1.0), 0.0)
    return ape.sum(axis=1) / ok.sum(axis=1).clip(1)


def mase_scale(history: np.ndarray, m: int) -> float:
    """In-sample MAE of the seasonal naive forecast with lag ``m`` (lag 1 if the history is too
    short for lag ``m``). The M4 convention, used for M3 and Tourism too."""
    x = np.asarray(history, dtype=float)
    lag = m if len(x) > m else 1
    if len(x) <= lag:
        return np.nan
    return float(np.mean(np.abs(x[lag:] - x[:-lag])))


def mase(y: np.ndarray, f: np.ndarray, histories: list[np.ndarray], m: int) -> np.ndarray:
    """MASE: forecast MAE divided by :func:`mase_scale` of each series' history."""
    y, f = np.atleast_2d(y).astype(float), np.atleast_2d(f).astype(float)
    scale = np.array([mase_scale(x, m) for x in histories])
    mae = np.abs(y - f).mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(scale > 0, mae / scale, np.where(mae == 0, 0.0, np.inf))


def owa(smape_value: float, mase_value: float, smape_naive2: float, mase_naive2: float) -> float:
    """OWA = mean of sMAPE / sMAPE(Naive2) and MASE / MASE(Naive2) (over the same series); NaN
    where Naive2 is perfect (a zero reference)."""
    if smape_naive2 == 0 or mase_naive2 == 0:
        return float("nan")
    return 0.5 * (smape_value / smape_naive2 + mase_value / mase_naive2)


# Naive2 -----------------------------------------------------------------------------------------

def _acf(x: np.ndarray, nlags: int) -> np.ndarray:
    x = x - x.mean()
    den = float(np.dot(x, x))
    if den == 0:
        return np.zeros(nlags + 1)
    return np.array([1.0] + [float(np.dot(x[k:], x[:-k])) / den for k in range(1, nlags + 1)])


def seasonality_test(x: np.ndarray, m: int) -> bool:
    """The M4 90% test: seasonal if ``|acf_m| > 1.645 sqrt((1 + 2 sum_{k<m} acf_k^2) / n)``."""
    x = np.asarray(x, dtype=float)
    if m <= 1 or len(x) < 3 * m:
        return False
    r = _acf(x, m)
    limit = 1.645 * np.sqrt((1 + 2 * np.sum(r[1:m] ** 2)) / len(x))
    return bool(abs(r[m]) > limit)


def seasonal_indices(x: np.ndarray, m: int) -> np.ndarray:
    """Classical multiplicative decomposition: seasonal index of each position (mean 1).

    Position ``j`` is the index of time ``t`` with ``t % m == j`` (t counted from the start).
    """
    x = np.asarray(x, dtype=float)
    if m % 2 == 0:  # 2 x m centred moving average
        w = np.r_[0.5, np.ones(m - 1), 0.5] / m
    else:
        w = np.ones(m) / m
    trend = np.convolve(x, w, mode="valid")
    off = (len(w) - 1) // 2
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = x[off:off + len(trend)] / trend
    pos = (np.arange(len(trend)) + off) % m
    idx = np.array([np.nanmean(ratio[pos == j]) if np.any(pos == j) else 1.0 for j in range(m)])
    idx = np.where(np.isfinite(idx) & (idx > 0), idx, 1.0)
    return idx / idx.mean()


def naive2(x: np.ndarray, h: int, m: int) -> np.ndarray:
    """Naive2: the naive forecast of the seasonally adjusted series, reseasonalised (seasonal
    adjustment only where :func:`seasonality_test` says the series is seasonal and it is
    strictly positive, as multiplicative decomposition needs)."""
    x = np.asarray(x, dtype=float)
    if m > 1 and np.all(x > 0) and seasonality_test(x, m):
        si = seasonal_indices(x, m)
        n = len(x)
        level = x[-1] / si[(n - 1) % m]
        return level * si[(n + np.arange(h)) % m]
    return np.full(h, x[-1])


# Aggregation ------------------------------------------------------------------------------------

def score_subset(y: list[np.ndarray], f: np.ndarray, histories: list[np.ndarray], m: int,
                 naive2_fc: np.ndarray | None = None) -> dict[str, float]:
    """sMAPE, MAPE, MASE (means over series) and OWA (if Naive2 forecasts are given)."""
    Y = np.vstack(y)
    F = np.asarray(f, dtype=float)
    out = {"sMAPE": float(np.mean(smape(Y, F))), "MAPE": float(np.mean(mape(Y, F))),
           "MASE": float(np.mean(mase(Y, F, histories, m)))}
    if naive2_fc is not None:
        s2 = float(np.mean(smape(Y, naive2_fc)))
        m2 = float(np.mean(mase(Y, naive2_fc, histories, m)))
        out["OWA"] = owa(out["sMAPE"], out["MASE"], s2, m2)
        out["_naive2"] = {"sMAPE": s2, "MASE": m2}
    return out


def weighted_average(per_subset: dict[str, dict[str, float]],
                     weights: dict[str, int]) -> dict[str, float]:
    """Average of each metric over subsets, weighted by ``series x horizon`` (``weights``).

    OWA of the whole dataset is recomputed from the averaged sMAPE and MASE of the method and of
    Naive2, as in the M4 competition, rather than averaged.
    """
    total = sum(weights.values())
    out: dict[str, float] = {}
    for k in ("sMAPE", "MAPE", "MASE"):
        out[k] = float(sum(per_subset[s][k] * w for s, w in weights.items()) / total)
    if all("_naive2" in per_subset[s] for s in weights):
        s2 = sum(per_subset[s]["_naive2"]["sMAPE"] * w for s, w in weights.items()) / total
        m2 = sum(per_subset[s]["_naive2"]["MASE"] * w for s, w in weights.items()) / total
        out["OWA"] = owa(out["sMAPE"], out["MASE"], s2, m2)
    return out
