"""Meta-test results per domain (a mixture's parts, a regression family) as a bar chart, and a
transfer matrix (meta-train domain x meta-test domain) as a heat map."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def domain_bars(by_domain: dict[str, dict[str, Any]], path: str | Path, metric: str = "metric",
                title: str = "") -> Path:
    """One bar per domain: its mean metric with the 95% CI, and its number of tasks."""
    names = list(by_domain)
    means = np.array([by_domain[d]["mean"] for d in names])
    cis = np.array([by_domain[d]["ci95"] for d in names])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 2), 3.4))
    ax.bar(range(len(names)), means, yerr=cis, capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([f"{d}\n({by_domain[d]['tasks']} tasks)" for d in names], fontsize=8,
                       rotation=0 if len(names) < 6 else 30, ha="center" if len(names) < 6
                       else "right")
    ax.set_ylabel(f"{metric} (± 95% CI)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def transfer_matrix(panels: dict[str, np.ndarray], rows: Sequence[str], cols: Sequence[str],
                    path: str | Path, title: str = "",
                    ci: dict[str, np.ndarray] | None = None, label: str = "accuracy %",
                    fmt: str = "{:.1f}") -> Path:
    """Heat maps side by side, one per panel (e.g. a BatchNorm choice): ``panels[name][i, j]``
    is the metric meta-trained on ``rows[i]`` and meta-tested on ``cols[j]`` (``ci``: the ±
    written in each cell). One colour scale for all panels."""
    names = list(panels)
    vals = {k: np.asarray(v, dtype=float) for k, v in panels.items()}
    lo = min(np.nanmin(v) for v in vals.values())
    hi = max(np.nanmax(v) for v in vals.values())
    fig, axes = plt.subplots(1, len(names), squeeze=False,
                             figsize=(1.2 * len(cols) * len(names) + 2.5, 0.8 * len(rows) + 2.0))
    for ax, name in zip(axes[0], names):
        v = vals[name]
        im = ax.imshow(v, cmap="viridis", vmin=lo, vmax=hi, aspect="auto")
        ax.set_xticks(range(len(cols)))
        ax.set_xticklabels(cols, fontsize=8, rotation=30, ha="right")
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(rows if ax is axes[0][0] else [], fontsize=8)
        ax.set_title(name, fontsize=9)
        for i in range(len(rows)):
            for j in range(len(cols)):
                text = fmt.format(v[i, j]) + ("" if ci is None
                                              else "\n± " + fmt.format(ci[name][i, j]))
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if v[i, j] < (lo + hi) / 2 else "black")
    axes[0][0].set_ylabel("meta-train domain")
    for ax in axes[0]:
        ax.set_xlabel("meta-test domain", fontsize=8)
    fig.colorbar(im, ax=list(axes[0]), label=label, shrink=0.9)
    fig.suptitle(title, fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
