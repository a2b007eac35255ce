"""Plot history, forecasts and held-out truth for a sample of series."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import SeriesSet


def plot_forecasts(series: SeriesSet, forecasts: dict[str, np.ndarray], path: str | Path,
                   n: int = 6, seed: int = 0, methods: list[str] | None = None,
                   max_history: int = 120, labels: dict[str, str] | None = None) -> Path:
    """A grid of ``n`` randomly chosen series (reproducible with ``seed``): history, the
    holdout truth (if known) and the forecasts of ``methods`` (default: all given), on the
    series' own time axis (its dates, or its time index); ``labels`` renames methods in the
    legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [k for k in dict.fromkeys(methods or forecasts) if k in forecasts]
    if n < 1 or len(series) == 0:
        return Path(path)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(series), size=min(n, len(series)), replace=False))
    cols = 2 if len(idx) > 1 else 1
    rows = int(np.ceil(len(idx) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 2.8 * rows), squeeze=False)
    for ax, i in zip(axes.ravel(), idx):
        y = series.y[i][-max_history:]
        n_hist = len(series.y[i])
        if series.ds is not None and series.test_ds is not None:
            t_hist, t_fut = series.ds[i][-len(y):], series.test_ds[i]
        else:
            t_hist = np.arange(n_hist - len(y) + 1, n_hist + 1)
            t_fut = np.arange(n_hist + 1, n_hist + series.h + 1)
        ax.plot(t_hist, y, color="black", lw=1.2, label="history")
        if series.test is not None:
            ax.plot(t_fut, series.test[i], color="black", ls="--", lw=1.2, label="truth")
        for k in methods:
            ax.plot(t_fut, forecasts[k][i], lw=1, label=(labels or {}).get(k, k))
        ax.set_title(f"{series.name}: {series.ids[i]}", fontsize=9)
        ax.axvline(t_hist[-1], color="grey", lw=0.5)
        ax.tick_params(axis="x", labelsize=7)
    for ax in axes.ravel()[len(idx):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7, ncol=2)
    if series.freq:
        fig.autofmt_xdate()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
