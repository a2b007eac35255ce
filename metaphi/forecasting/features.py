"""Series features for the feature-based meta-learner (FFORMA-style).

Computed here with plain numpy rather than a feature library, on purpose: the Python
``tsfeatures`` package returns NaN for its ARCH/GARCH features with current statsmodels and is
slow (one statsmodels fit per feature per series), while these ~30 features follow the same
definitions as Hyndman's ``tsfeatures`` / FFORMA (autocorrelations of the series and its
differences, strength of trend and seasonality from a decomposition, spikiness, linearity,
curvature, stability, lumpiness, spectral entropy, flat spots, crossing points, an ARCH-effect
statistic) and take milliseconds per series with no fitting that can fail. Each series is divided
by its mean absolute value first, so features do not depend on the series' scale.
"""
from __future__ import annotations

import numpy as np

FEATURE_NAMES = [
    "log_length", "period", "horizon", "h_over_n",
    "x_acf1", "x_acf10", "diff1_acf1", "diff1_acf10", "diff2_acf1", "diff2_acf10", "seas_acf1",
    "trend", "seasonal_strength", "spike", "linearity", "curvature", "e_acf1", "e_acf10",
    "stability", "lumpiness", "entropy", "flat_spots", "crossing_points", "arch_acf",
    "diff_var_ratio", "cv", "skew", "kurtosis", "last_over_mean", "recent_growth",
    "max_level_shift", "max_var_shift",
]


def _acf(x: np.ndarray, nlags: int) -> np.ndarray:
    """Autocorrelations at lags 1..nlags (0 where undefined)."""
    out = np.zeros(nlags)
    if len(x) < 3:
        return out
    x = x - x.mean()
    den = float(np.dot(x, x))
    if den <= 1e-12:
        return out
    for k in range(1, min(nlags, len(x) - 1) + 1):
        out[k - 1] = float(np.dot(x[k:], x[:-k])) / den
    return out


def _acf_pair(x: np.ndarray) -> tuple[float, float]:
    r = _acf(x, 10)
    return float(r[0]), float(np.sum(r ** 2))


def _moving_average(x: np.ndarray, w: int) -> np.ndarray:
    """Centred moving average (2 x w for even w), edges padded with the nearest value."""
    if w <= 1 or len(x) < w + 1:
        return np.full_like(x, x.mean()) if len(x) < 3 else np.convolve(
            np.pad(x, 1, mode="edge"), np.ones(3) / 3, mode="valid")
    k = np.r_[0.5, np.ones(w - 1), 0.5] / w if w % 2 == 0 else np.ones(w) / w
    pad = (len(k) - 1) // 2
    return np.convolve(np.pad(x, pad, mode="edge"), k, mode="valid")


def _decompose(x: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Additive classical decomposition: trend, seasonal, remainder."""
    trend = _moving_average(x, m if m > 1 else 5)
    detr = x - trend
    seas = np.zeros_like(x)
    if m > 1 and len(x) >= 2 * m:
        pos = np.arange(len(x)) % m
        idx = np.array([detr[pos == j].mean() for j in range(m)])
        seas = (idx - idx.mean())[pos]
    return trend, seas, x - trend - seas


def _tiled(x: np.ndarray, w: int, fn) -> float:
    n = len(x) // w
    if n < 2:
        return 0.0
    return float(np.var([fn(x[i * w:(i + 1) * w]) for i in range(n)]))


def _max_shift(x: np.ndarray, w: int, fn) -> float:
    if len(x) < 2 * w:
        return 0.0
    vals = np.array([fn(x[i:i + w]) for i in range(len(x) - w + 1)])
    return float(np.max(np.abs(vals[w:] - vals[:-w]))) if len(vals) > w else 0.0


def series_features(y: np.ndarray, m: int, h: int) -> np.ndarray:
    """The :data:`FEATURE_NAMES` vector of one series' history."""
    y = np.asarray(y, dtype=float)
    scale = np.mean(np.abs(y))
    x = y / scale if scale > 0 else y.copy()
    n = len(x)
    f: dict[str, float] = {"log_length": np.log(n), "period": m, "horizon": h, "h_over_n": h / n}
    f["x_acf1"], f["x_acf10"] = _acf_pair(x)
    d1 = np.diff(x)
    d2 = np.diff(x, 2)
    f["diff1_acf1"], f["diff1_acf10"] = _acf_pair(d1)
    f["diff2_acf1"], f["diff2_acf10"] = _acf_pair(d2)
    f["seas_acf1"] = float(_acf(x, m)[m - 1]) if m > 1 and n > m + 2 else 0.0
    trend, seas, rem = _decompose(x, m)
    vr = np.var(rem)
    f["trend"] = max(0.0, 1 - vr / np.var(trend + rem)) if np.var(trend + rem) > 0 else 0.0
    f["seasonal_strength"] = (max(0.0, 1 - vr / np.var(seas + rem))
                              if m > 1 and np.var(seas + rem) > 0 else 0.0)
    if n >= 4:
        loo = [(np.sum(rem ** 2) - rem[i] ** 2) / (n - 1) for i in range(n)]  # leave-one-out var
        f["spike"] = float(np.var(loo))
    else:
        f["spike"] = 0.0
    t = np.arange(n, dtype=float)
    if n >= 3:
        # orthogonal polynomial regression of the trend on time (degree 2), as in tsfeatures
        V = np.vander((t - t.mean()) / max(n, 1), 3, increasing=True)
        Q, _ = np.linalg.qr(V)
        coef = Q.T @ trend
        f["linearity"], f["curvature"] = float(coef[1]), float(coef[2])
    else:
        f["linearity"] = f["curvature"] = 0.0
    f["e_acf1"], f["e_acf10"] = _acf_pair(rem)
    w = m if m > 1 else 10
    f["stability"] = _tiled(x, w, np.mean)
    f["lumpiness"] = _tiled(x, w, np.var)
    spec = np.abs(np.fft.rfft(x - x.mean())[1:]) ** 2
    if spec.sum() > 0 and len(spec) > 1:
        p = spec / spec.sum()
        f["entropy"] = float(-np.sum(p[p > 0] * np.log(p[p > 0])) / np.log(len(p)))
    else:
        f["entropy"] = 1.0
    bins = np.digitize(x, np.quantile(x, np.linspace(0, 1, 11)[1:-1]))
    runs = np.diff(np.flatnonzero(np.r_[True, bins[1:] != bins[:-1], True]))
    f["flat_spots"] = float(runs.max()) / n
    med = np.median(x)
    ab = x > med
    f["crossing_points"] = float(np.sum(ab[1:] != ab[:-1])) / max(n - 1, 1)
    f["arch_acf"] = _acf_pair((d1 - d1.mean()) ** 2)[1] if len(d1) > 3 else 0.0
    f["diff_var_ratio"] = float(np.var(d1) / np.var(x)) if np.var(x) > 0 and len(d1) > 1 else 0.0
    sd = np.std(x)
    f["cv"] = float(sd / abs(np.mean(x))) if np.mean(x) != 0 else 0.0
    z = (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)
    f["skew"], f["kurtosis"] = float(np.mean(z ** 3)), float(np.mean(z ** 4))
    f["last_over_mean"] = float(x[-1] / np.mean(x)) if np.mean(x) != 0 else 0.0
    k = min(h, n - 1)
    f["recent_growth"] = float((x[-1] - x[-1 - k]) / (k * max(sd, 1e-8))) if k >= 1 else 0.0
    f["max_level_shift"] = _max_shift(x, w, np.mean)
    f["max_var_shift"] = _max_shift(x, w, np.var)
    vec = np.array([f[k] for k in FEATURE_NAMES], dtype=float)
    return np.nan_to_num(vec, nan=0.0, posinf=0.0, neginf=0.0)


def feature_matrix(series: list[np.ndarray], m: int, h: int) -> np.ndarray:
    """``(n_series, n_features)`` features of many series."""
    return np.vstack([series_features(s, m, h) for s in series])
