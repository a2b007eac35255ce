"""Plot history, forecasts and held-out truth for a sample of series."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import SeriesSet


def plot_forecasts(series: SeriesSet, forecasts: dict[str, np.ndarray], path: str | Path,
                   n: int = 6, seed: int = 0, methods: list[str] | None = None,
                   max_history: int = 120) -> Path:
    """A grid of ``n`` randomly chosen series (reproducible with ``seed``): history, the
    holdout truth (if known) and the forecasts of ``methods`` (default: all given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = methods or list(forecasts)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(series), size=min(n, len(series)), replace=False))
    cols = 2 if len(idx) > 1 else 1
    rows = int(np.ceil(len(idx) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 2.8 * rows), squeeze=False)
    for ax, i in zip(axes.ravel(), idx):
        y = series.y[i][-max_history:]
        t0 = len(series.y[i]) - len(y)
        t_hist = np.arange(t0, len(series.y[i]))
        t_fut = np.arange(len(series.y[i]), len(series.y[i]) + series.h)
        ax.plot(t_hist, y, color="black", lw=1.2, label="history")
        if series.test is not None:
            ax.plot(t_fut, series.test[i], color="black", ls="--", lw=1.2, label="truth")
        for k in methods:
            ax.plot(t_fut, forecasts[k][i], lw=1, label=k)
        ax.set_title(f"{series.name}: {series.ids[i]}", fontsize=9)
        ax.axvline(len(series.y[i]) - 0.5, color="grey", lw=0.5)
    for ax in axes.ravel()[len(idx):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
