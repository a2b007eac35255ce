"""Cross-task testing: the mean metric over many tasks with its 95% confidence interval."""
from __future__ import annotations

import math
from itertools import islice
from typing import Any, Iterable

import numpy as np
import torch

from ..learners.base import Learner
from ..tasks.task import Task


def mean_ci95(values: Iterable[float]) -> dict[str, float]:
    """Mean and the half-width of its normal-approximation 95% CI (1.96 standard errors)."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        raise ValueError("no values to summarise")
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return {"mean": float(v.mean()), "ci95": 1.96 * std / math.sqrt(v.size), "std": std,
            "tasks": int(v.size)}


def task_scores(learner: Learner, tasks: Iterable[Task], device: torch.device | str = "cpu",
                progress: bool = False, desc: str = "meta-test", chunk: int = 32,
                total: int | None = None) -> list[tuple[float, float]]:
    """``(metric, loss)`` of each task, in task order: adapted on its support set with φ fixed,
    scored on its query set. Tasks go to the learner ``chunk`` at a time, so that a task-batched
    path can score equally shaped tasks together (:meth:`Learner.eval_episodes`); a generator
    is consumed chunk by chunk (``total``: its length, for the progress bar's ETA)."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tasks) if hasattr(tasks, "__len__") else total, desc=desc,
                   unit="task", leave=False)
    out: list[tuple[float, float]] = []
    it = iter(tasks)
    while block := [t.to(device) for t in islice(it, chunk)]:
        losses, metrics = learner.eval_episodes(block)
        out += zip(metrics.tolist(), losses.tolist())
        if bar is not None:
            bar.update(len(block))
    if bar is not None:
        bar.close()
    return out


def summarise(learner: Learner, scores: list[tuple[float, float]]) -> dict[str, float]:
    """Mean metric with its 95% CI, mean loss and the metric's name."""
    out: dict[str, Any] = mean_ci95(m for m, _ in scores)
    out["loss"] = float(np.mean([loss for _, loss in scores]))
    out["metric"] = learner.metric_name
    return out


def evaluate(learner: Learner, tasks: Iterable[Task], device: torch.device | str = "cpu",
             progress: bool = False, desc: str = "meta-test",
             total: int | None = None) -> dict[str, float]:
    """Adapt on each task's support set, score its query set; summarise the metric and loss."""
    return summarise(learner, task_scores(learner, tasks, device, progress, desc, total=total))
