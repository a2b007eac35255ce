"""One few-shot episode as a PNG: a row per class with its support images, then that class's
query images titled with the predicted label; wrong predictions are framed and titled in red."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from ..files import save_figure
from ..tasks.task import Task

WRONG = "#d62728"
RIGHT = "#2ca02c"


def _as_images(x: Tensor, what: str) -> np.ndarray:
    """(n, H, W) or (n, H, W, 3) floats for imshow."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"plot_episode needs image tasks with {what} of shape (n, 1 or 3, H, W), "
                         f"got {tuple(x.shape)}; for a batch of tasks plot one task at a time")
    a = x.detach().to("cpu", torch.float32).numpy()
    return a[:, 0] if a.shape[1] == 1 else np.clip(a.transpose(0, 2, 3, 1), 0.0, 1.0)


def _predicted_labels(predictions: Tensor | np.ndarray | Sequence[int], n_query: int) -> np.ndarray:
    if isinstance(predictions, Tensor):
        p = predictions.detach().cpu().numpy()
    else:
        p = np.asarray(predictions)
    if p.ndim == 2 and len(p) == n_query:
        p = p.argmax(1)  # logits or probabilities
    if p.shape != (n_query,):
        raise ValueError(f"predictions must be {n_query} labels (or ({n_query}, n_way) logits), "
                         f"got shape {p.shape}")
    return p.astype(np.int64)


def _wrap(label: str, width: int = 22) -> str:
    """Break a long class name at its first '/' (``Alphabet/characterNN/rot090``)."""
    if len(label) <= width or "/" not in label:
        return label
    head, tail = label.split("/", 1)
    return f"{head}/\n{tail}"


def plot_episode(task: Task, path: str | Path,
                 predictions: Tensor | np.ndarray | Sequence[int] | None = None,
                 class_names: Sequence[str] | None = None, *, max_queries: int = 10,
                 title: str | None = None, cmap: str = "gray_r", dpi: int = 100) -> Path:
    """Draw ``task`` to ``path`` (PNG) and return the path.

    ``predictions`` are the predicted query labels (or logits); ``class_names`` default to
    ``task.meta["classes"]``. At most ``max_queries`` queries per class are drawn. Grayscale
    images use ``cmap`` ("gray_r" shows ink = 1 as black on white).
    """
    sx, qx = _as_images(task.support_x, "support_x"), _as_images(task.query_x, "query_x")
    sy = task.support_y.detach().cpu().numpy().astype(np.int64)
    qy = task.query_y.detach().cpu().numpy().astype(np.int64)
    n_way = int(max(sy.max(initial=-1), qy.max(initial=-1))) + 1
    if class_names is None:
        class_names = task.meta.get("classes") or [str(c) for c in range(n_way)]
    if len(class_names) < n_way:
        raise ValueError(f"{len(class_names)} class names given for {n_way} classes")
    pred = None if predictions is None else _predicted_labels(predictions, len(qy))
    if max_queries < 0:
        raise ValueError(f"max_queries must be >= 0, got {max_queries}")

    support_rows = [np.flatnonzero(sy == c) for c in range(n_way)]
    query_rows = [np.flatnonzero(qy == c)[:max_queries] for c in range(n_way)]
    k = max(len(r) for r in support_rows)
    q = max((len(r) for r in query_rows), default=0)
    cols = k + (1 + q if q else 0)  # a narrow blank column between support and query
    widths = [1.0] * k + ([0.35] + [1.0] * q if q else [])
    labels = [_wrap(f"{c}: {class_names[c]}") for c in range(n_way)]
    label_in = 0.075 * max(len(line) for lab in labels for line in lab.split("\n")) + 0.2
    fig_w = 0.9 * sum(widths) + label_in + 0.2
    top_in = 0.9 if pred is not None else 0.6  # room for the title and column headings
    fig_h = 1.0 * n_way + top_in + 0.1
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(n_way, cols, width_ratios=widths, left=label_in / fig_w,
                            right=1 - 0.1 / fig_w, top=1 - top_in / fig_h, bottom=0.1 / fig_h,
                            wspace=0.1, hspace=0.45)

    def show(r: int, col: int, img: np.ndarray):
        ax = fig.add_subplot(grid[r, col])
        ax.imshow(img, cmap=cmap if img.ndim == 2 else None, vmin=0.0, vmax=1.0,
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        return ax

    for c in range(n_way):
        for j, i in enumerate(support_rows[c]):
            ax = show(c, j, sx[i])
            if j == 0:
                ax.set_ylabel(labels[c], rotation=0, ha="right", va="center", fontsize=7)
            if c == 0 and j == 0:
                ax.text(0, 1.35 if pred is not None else 1.05, "support", fontsize=8,
                        transform=ax.transAxes, va="bottom")
        for j, i in enumerate(query_rows[c]):
            ax = show(c, k + 1 + j, qx[i])
            if c == 0 and j == 0:
                ax.text(0, 1.35 if pred is not None else 1.05, "query", fontsize=8,
                        transform=ax.transAxes, va="bottom")
            if pred is None:
                continue
            ok = pred[i] == c
            color = RIGHT if ok else WRONG
            ax.set_title(f"→{pred[i]}", fontsize=7, color=color, pad=2)
            if not ok:
                for spine in ax.spines.values():
                    spine.set_edgecolor(WRONG)
                    spine.set_linewidth(2.5)
    head = title or ""
    if pred is not None:
        acc = f"query accuracy {int((pred == qy).sum())}/{len(qy)}"
        if q < int(np.bincount(qy, minlength=n_way).max(initial=0)):
            acc += f" (showing up to {q} queries a class)"
        head = f"{head}  {acc}" if head else acc
    if head:
        fig.suptitle(head, fontsize=9, y=1 - 0.08 / fig_h, va="top")
    path = Path(path)
    save_figure(fig, path)
    return path
