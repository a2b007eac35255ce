"""Pictures of few-shot regression: the support points, the adapted fit and the truth."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ..files import save_figure  # noqa: E402
from ..learners.base import eval_mode  # noqa: E402
from ..tasks.sinusoid import SinusoidSource  # noqa: E402
from ..tasks.sources import task_rng  # noqa: E402


def sinusoid_fits(learner, source: SinusoidSource, seed: int, out_path: str | Path,
                  n_tasks: int = 6, device: torch.device | str = "cpu") -> Path:
    """A grid of meta-test sinusoid tasks: support points, truth, φ before and after adaptation."""
    cols = 3
    rows = (n_tasks + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= n_tasks:
            ax.axis("off")
            continue
        task = source.sample(task_rng(seed, "test", 0, i)).to(device)
        xs, ys = source.curve(task.meta["amplitude"], task.meta["phase"])
        grid = torch.tensor(xs, dtype=torch.float32, device=device)[:, None]
        with eval_mode(learner):
            adapted = learner.adapt(task.support_x, task.support_y)
            before = learner.adapt(task.support_x, task.support_y, steps=0)  # φ itself
            with torch.no_grad():
                after = adapted(grid).cpu().numpy().ravel()
                before = before(grid)
        ax.plot(xs, ys, "k-", lw=1.2, label="truth")
        ax.plot(xs, before.cpu().numpy().ravel(), ":", color="C7", label="φ (before)")
        ax.plot(xs, after, "-", color="C3", label="adapted")
        ax.scatter(task.support_x.cpu().numpy(), task.support_y.cpu().numpy(), c="C0", zorder=3,
                   s=18, label=f"support (K={len(task.support_x)})")
        ax.set_title(f"A={task.meta['amplitude']:.2f}, phase={task.meta['phase']:.2f}", fontsize=9)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    out_path = Path(out_path)
    save_figure(fig, out_path, dpi=100)
    plt.close(fig)
    return out_path
