"""Learning curves of a run (training loss and meta-validation metric) as a PNG."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..files import save_figure as write_png  # noqa: E402


def moving_average(y: np.ndarray, n: int) -> np.ndarray:
    """Mean of each ``n`` consecutive values (``y`` itself when it is shorter than ``n``)."""
    if len(y) < n or n <= 1:
        return y
    kernel = np.ones(n) / n
    return np.convolve(y, kernel, mode="valid")


def learning_curve(metrics_path: str | Path, out_path: str | Path, metric_name: str = "metric",
                   title: str = "") -> Path:
    """Plot meta-train query loss (smoothed) and meta-validation metric (with 95% CI)."""
    rows = [json.loads(l) for l in Path(metrics_path).read_text().splitlines() if l.strip()]
    if not rows:
        raise ValueError(f"{metrics_path} holds no metrics yet")
    steps = np.array([r["step"] + 1 for r in rows])
    loss = np.array([r["loss"] for r in rows])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    w = max(1, len(loss) // 100)
    a1.plot(steps, loss, alpha=0.25, lw=0.8, color="C0")
    sm = moving_average(loss, w)
    a1.plot(steps[len(steps) - len(sm):], sm, color="C0", label=f"mean of {w} steps")
    a1.set_xlabel("outer step")
    a1.set_ylabel("meta-train query loss")
    a1.set_yscale("log" if (loss > 0).all() and loss.max() / max(loss.min(), 1e-12) > 20 else "linear")
    a1.legend(loc="upper right")
    val = [r for r in rows if "val_metric" in r]
    if val:
        vs = np.array([r["step"] + 1 for r in val])
        vm = np.array([r["val_metric"] for r in val])
        ci = np.array([r.get("val_ci95", 0.0) for r in val])
        a2.plot(vs, vm, marker="o", ms=3, color="C1")
        a2.fill_between(vs, vm - ci, vm + ci, alpha=0.25, color="C1")
    a2.set_xlabel("outer step")
    a2.set_ylabel(f"meta-validation {metric_name}")
    for a in (a1, a2):
        a.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return save_figure(fig, out_path)


def save_figure(fig, out_path: str | Path) -> Path:
    """Lay out ``fig``, write it as a PNG and close it."""
    fig.tight_layout()
    out_path = Path(out_path)
    write_png(fig, out_path, dpi=110)
    plt.close(fig)
    return out_path


def fitness_curve(metrics_path: str | Path, out_path: str | Path, title: str = "") -> Path:
    """Best and mean population fitness per generation (population meta-optimizers), the
    candidates' spread (the search's step size, log scale on the right) where it is logged, and
    a dotted line where the population size changes (a CMA-ES restart)."""
    rows = [json.loads(l) for l in Path(metrics_path).read_text().splitlines() if l.strip()]
    if not rows:
        raise ValueError(f"{metrics_path} holds no generations yet")
    g = np.array([r["generation"] + 1 for r in rows])
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(g, [r["mean_fitness"] for r in rows], label="population mean", color="C0")
    ax.plot(g, [r["best_fitness"] for r in rows], label="generation best", color="C1")
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness (meta-validation loss)")
    ax.grid(alpha=0.3)
    pops = [r.get("popsize") for r in rows]
    for i in range(1, len(rows)):
        if pops[i] is not None and pops[i - 1] is not None and pops[i] != pops[i - 1]:
            ax.axvline(g[i], color="0.5", ls=":", lw=1)
            ax.annotate(f"restart, popsize {pops[i]}", (g[i], 1), xycoords=("data", "axes fraction"),
                        rotation=90, va="top", ha="right", fontsize=7, color="0.4")
    handles = ax.get_lines()[:2]
    spread = [r.get("spread") for r in rows]
    if any(v is not None and v > 0 for v in spread):
        ax2 = ax.twinx()
        handles += ax2.semilogy(g, [np.nan if v is None or v <= 0 else v for v in spread],
                                label="candidate spread", color="C2", lw=1, alpha=0.8)
        ax2.set_ylabel("candidate spread (step size)")
    ax.legend(handles=handles, labels=[h.get_label() for h in handles])
    if title:
        ax.set_title(title)
    return save_figure(fig, out_path)
