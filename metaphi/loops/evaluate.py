"""Cross-task testing: the mean metric over many tasks with its 95% confidence interval."""
from __future__ import annotations

import math
from typing import Iterable

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


def evaluate(learner: Learner, tasks: Iterable[Task], device: torch.device | str = "cpu",
             progress: bool = False, desc: str = "meta-test") -> dict[str, float]:
    """Adapt on each task's support set, score its query set; summarise the metric and loss."""
    tasks = list(tasks) if progress else tasks
    it = tasks
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(tasks, desc=desc, unit="task", leave=False)
    metrics, losses = [], []
    for task in it:
        loss, metric = learner.episode(task.to(device))
        metrics.append(float(metric))
        losses.append(float(loss.detach()))
    out = mean_ci95(metrics)
    out["loss"] = float(np.mean(losses))
    out["metric"] = learner.metric_name
    return out
