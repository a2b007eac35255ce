"""Meta-batches sampled ahead of the outer loop, in worker processes.

On a GPU the outer step is short enough that sampling the next meta-batch on the CPU (numpy
indexing, one small tensor per task) and copying it over task by task leaves the device idle
for a large share of each step. :func:`meta_batches` moves the sampling into
``torch.utils.data.DataLoader`` worker processes: each yields one meta-batch, stacked into a
single :class:`Task` in pinned memory, so it reaches the GPU in four asynchronous copies.
Tasks are a pure function of (seed, stream, step, index) (:func:`task_rng`), so the batches are
the same with or without workers, and a resumed run starts its workers at the resumed step.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .sources import TaskSource, sample_tasks
from .task import Task, stack_tasks, unstack_tasks


class _StepBatches(IterableDataset):
    """The meta-batches of steps ``first_step .. last_step-1``; worker ``w`` of ``W`` makes every
    W-th one, and the DataLoader interleaves the workers back into step order."""

    def __init__(self, source: TaskSource, seed: int, stream: str, first_step: int,
                 last_step: int, n: int, start: int) -> None:
        self.source, self.seed, self.stream = source, seed, stream
        self.first_step, self.last_step, self.n, self.start = first_step, last_step, n, start

    def __iter__(self) -> Iterator[Task]:
        info = get_worker_info()
        w, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for step in range(self.first_step + w, self.last_step, workers):
            tasks = sample_tasks(self.source, self.seed, self.stream, step, self.n, self.start)
            yield _stack_or_list(tasks)


def _stack_or_list(tasks: list[Task]) -> Task | list[Task]:
    # Tasks of unequal shapes (possible with a user's task source) travel as a list.
    return stack_tasks(tasks) if len({t.shapes for t in tasks}) == 1 else tasks


def meta_batches(source: TaskSource, seed: int, stream: str, first_step: int, last_step: int,
                 n: int, *, start: int = 0, workers: int = 0,
                 device: torch.device | str = "cpu") -> Iterator[list[Task]]:
    """The meta-batches (``n`` tasks each, from task index ``start``) of steps ``first_step`` to
    ``last_step - 1``, in order, on ``device``. ``workers=0`` samples in this process, just in
    time; ``workers > 0`` samples in that many processes, a few steps ahead."""
    device = torch.device(device)
    if workers == 0:
        for step in range(first_step, last_step):
            yield [t.to(device) for t in sample_tasks(source, seed, stream, step, n, start)]
        return
    loader = DataLoader(_StepBatches(source, seed, stream, first_step, last_step, n, start),
                        batch_size=None, num_workers=workers, pin_memory=device.type == "cuda",
                        prefetch_factor=4, persistent_workers=False)
    for item in loader:
        if isinstance(item, list):
            yield [t.to(device, non_blocking=True) for t in item]
        else:
            yield unstack_tasks(item.to(device, non_blocking=True))
