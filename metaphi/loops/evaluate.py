"""Cross-task testing: the mean metric over many tasks with its 95% confidence interval."""
from __future__ import annotations

import math
from itertools import islice
from typing import Any, Iterable, Sequence

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


def task_records(learner: Learner, tasks: Iterable[Task], device: torch.device | str = "cpu",
                 progress: bool = False, desc: str = "meta-test", chunk: int = 32,
                 total: int | None = None) -> list[tuple[float, float, str | None]]:
    """``(metric, loss, domain)`` of each task, in task order: adapted on its support set with
    φ fixed, scored on its query set; ``domain`` is the task's ``meta["domain"]`` (None where
    it names none). Tasks go to the learner ``chunk`` at a time, so that a task-batched path
    can score equally shaped tasks together (:meth:`Learner.eval_episodes`); a generator is
    consumed chunk by chunk (``total``: its length, for the progress bar's ETA)."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tasks) if hasattr(tasks, "__len__") else total, desc=desc,
                   unit="task", leave=False)
    out: list[tuple[float, float, str | None]] = []
    it = iter(tasks)
    while block := list(islice(it, chunk)):
        domains = [t.meta.get("domain") for t in block]
        losses, metrics = learner.eval_episodes([t.to(device) for t in block])
        out += zip(metrics.tolist(), losses.tolist(), domains)
        if bar is not None:
            bar.update(len(block))
    if bar is not None:
        bar.close()
    return out


def task_scores(learner: Learner, tasks: Iterable[Task], device: torch.device | str = "cpu",
                progress: bool = False, desc: str = "meta-test", chunk: int = 32,
                total: int | None = None) -> list[tuple[float, float]]:
    """``(metric, loss)`` of each task, in task order (:func:`task_records` without the
    domains)."""
    return [(m, loss) for m, loss, _ in task_records(learner, tasks, device, progress, desc,
                                                     chunk, total)]


def summarise(learner: Learner, scores: Sequence[tuple]) -> dict[str, Any]:
    """Mean metric with its 95% CI, mean loss and the metric's name; with ``(metric, loss,
    domain)`` records of tasks that name their domain, also ``by_domain``: the same summary
    for each domain's tasks (in order of first appearance)."""
    out: dict[str, Any] = mean_ci95(s[0] for s in scores)
    out["loss"] = float(np.mean([s[1] for s in scores]))
    out["metric"] = learner.metric_name
    domains = [s[2] if len(s) > 2 else None for s in scores]
    if any(d is not None for d in domains):
        by: dict[str, list[tuple]] = {}
        for s, d in zip(scores, domains):
            by.setdefault("(none)" if d is None else str(d), []).append(s)
        out["by_domain"] = {d: {**mean_ci95(s[0] for s in rows),
                                "loss": float(np.mean([s[1] for s in rows]))}
                            for d, rows in by.items()}
    return out


def evaluate(learner: Learner, tasks: Iterable[Task], device: torch.device | str = "cpu",
             progress: bool = False, desc: str = "meta-test",
             total: int | None = None) -> dict[str, Any]:
    """Adapt on each task's support set, score its query set; summarise the metric and loss
    (and per domain, where the tasks name their domains: ``by_domain``)."""
    return summarise(learner, task_records(learner, tasks, device, progress, desc, total=total))
