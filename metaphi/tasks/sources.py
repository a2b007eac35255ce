"""Task sources: reproducible streams of tasks.

A task source is anything with ``sample(rng) -> Task`` where ``rng`` is a
:class:`numpy.random.Generator`. Streams are addressed by ``(seed, stream, step)`` so that the
tasks of step ``s`` are the same whether a run started at 0 or resumed at ``s``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal, Protocol, runtime_checkable

import numpy as np

from .task import Task, stack_tasks

# Stream ids keep meta-train, meta-validation and meta-test draws independent under one seed.
STREAMS = {"train": 0, "val": 1, "test": 2, "init": 3, "fitness": 4, "batchnorm": 5}


@runtime_checkable
class TaskSource(Protocol):
    """Anything with ``sample(rng) -> Task``, a pure function of the generator."""

    def sample(self, rng: np.random.Generator) -> Task: ...


@dataclass(frozen=True)
class TaskInfo:
    """What a source's tasks look like, known before any data is loaded.

    ``kind``: ``"classification"`` or ``"regression"``; ``input``: ``"image"``, ``"vector"``
    or ``"tokens"`` (padded token ids, pad 0); ``input_shape``: one input's shape;
    ``n_way``: classes per task (the output size of a classifier head); ``out_dim``: outputs of
    a regression task; ``default_model``: the backbone used when a config names none;
    ``vocab_size``: for token inputs.
    """

    kind: Literal["classification", "regression"]
    input: Literal["image", "vector", "tokens"]
    input_shape: tuple[int, ...]
    n_way: int | None = None
    out_dim: int = 1
    default_model: str = "mlp"
    vocab_size: int | None = None

    @property
    def outputs(self) -> int:
        """Outputs of a network with a head: ``n_way`` logits, or ``out_dim`` values."""
        return int(self.n_way) if self.kind == "classification" else int(self.out_dim)


@dataclass
class Splits:
    """Meta-train, meta-validation (None when there is none) and meta-test task sources."""

    train: TaskSource
    val: TaskSource | None
    test: TaskSource
    info: TaskInfo

    def __iter__(self):
        return iter((self.train, self.val, self.test))


def task_rng(seed: int, stream: str | int, step: int, index: int = 0) -> np.random.Generator:
    """The generator for one task: a pure function of (seed, stream, step, index)."""
    sid = STREAMS[stream] if isinstance(stream, str) else int(stream)
    return np.random.default_rng([int(seed), sid, int(step), int(index)])


def sample_tasks(source: TaskSource, seed: int, stream: str | int, step: int, n: int,
                 start: int = 0) -> list[Task]:
    """Tasks ``start .. start+n-1`` of ``step`` in a stream (ranks of a distributed run take
    disjoint ``start`` ranges, so together they draw exactly the single-process meta-batch)."""
    return [source.sample(task_rng(seed, stream, step, start + i)) for i in range(n)]


def sample_batch(source: TaskSource, seed: int, stream: str | int, step: int, n: int) -> Task:
    return stack_tasks(sample_tasks(source, seed, stream, step, n))


def fixed_tasks(source: TaskSource, seed: int, stream: str | int, n: int) -> Iterator[Task]:
    """``n`` tasks that depend only on (seed, stream): meta-validation and meta-test sets."""
    for i in range(n):
        yield source.sample(task_rng(seed, stream, 0, i))
