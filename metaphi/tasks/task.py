"""A task: a support set to learn from and a query set to be judged on."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class Task:
    """One few-shot task.

    ``support_x``/``support_y`` are the task's training data, ``query_x``/``query_y`` its test
    data. ``meta`` holds optional metadata (domain, class names, the task family's parameters).
    A *batch* of tasks uses the same class with a leading task dimension on every tensor.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None,
           non_blocking: bool = False) -> "Task":
        def move(t: Tensor) -> Tensor:
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype, non_blocking=non_blocking)
            return t.to(device, non_blocking=non_blocking)

        return Task(move(self.support_x), move(self.support_y), move(self.query_x),
                    move(self.query_y), dict(self.meta))

    def pin_memory(self) -> "Task":
        """A copy in page-locked memory (what ``DataLoader(pin_memory=True)`` calls), so that
        ``to(cuda, non_blocking=True)`` copies asynchronously."""
        return Task(self.support_x.pin_memory(), self.support_y.pin_memory(),
                    self.query_x.pin_memory(), self.query_y.pin_memory(), dict(self.meta))

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(t.shape) for t in (self.support_x, self.support_y,
                                               self.query_x, self.query_y))


def stack_tasks(tasks: list[Task]) -> Task:
    """Stack tasks of equal shape into one batched :class:`Task` (leading task dimension)."""
    if not tasks:
        raise ValueError("stack_tasks needs at least one task")
    first = tasks[0].shapes
    for i, t in enumerate(tasks):
        if t.shapes != first:
            raise ValueError(
                f"tasks must have equal shapes to stack: task 0 has {first}, task {i} has "
                f"{t.shapes}; sample them with the same ways/shots/queries")
    return Task(
        torch.stack([t.support_x for t in tasks]),
        torch.stack([t.support_y for t in tasks]),
        torch.stack([t.query_x for t in tasks]),
        torch.stack([t.query_y for t in tasks]),
        {"tasks": [t.meta for t in tasks]},
    )


def unstack_tasks(batch: Task) -> list[Task]:
    """Inverse of :func:`stack_tasks`."""
    metas = batch.meta.get("tasks", [{}] * batch.support_x.shape[0])
    return [Task(batch.support_x[i], batch.support_y[i], batch.query_x[i], batch.query_y[i],
                 metas[i]) for i in range(batch.support_x.shape[0])]
