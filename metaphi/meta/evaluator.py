"""Parallel evaluation of a population's candidates in worker processes."""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Sequence

import numpy as np
import torch


def _init_worker() -> None:
    # One intra-op thread per worker: workers already use every core, and more threads would
    # oversubscribe them.
    torch.set_num_threads(1)


def _call(args: tuple[Callable[[Any, int], float], Any, int]) -> float:
    fn, phi, generation = args
    return float(fn(phi, generation))


def _call_batch(args: tuple[Any, Sequence[Any], int]) -> list[float]:
    fn, phis, generation = args
    return [float(v) for v in fn.batch(phis, generation)]


class PopulationEvaluator:
    """Evaluates a population's candidates in parallel worker processes (serially in this
    process when ``workers <= 1``). Use as a context manager so that the workers exit.

    ``fitness_fn(phi, generation) -> float`` must be picklable (a module-level function or a
    :class:`TaskFitness`); the result does not depend on ``workers``.
    """

    def __init__(self, fitness_fn: Callable[[Any, int], float], workers: int | None = None,
                 start_method: str = "spawn") -> None:
        workers = (os.cpu_count() or 1) if workers is None else int(workers)
        if workers < 0:
            raise ValueError(f"workers must be >= 0 (0 or 1: serial), got {workers}")
        self.fitness_fn, self.workers = fitness_fn, workers
        self._pool: ProcessPoolExecutor | None = None
        if workers > 1:
            try:
                pickle.dumps(fitness_fn)
            except Exception as e:
                raise ValueError(
                    f"parallel fitness needs a picklable fitness function, but {fitness_fn!r} is "
                    f"not ({e}); define it at module level (not a lambda or a local function), "
                    "use TaskFitness, or pass workers=1") from e
            self._pool = ProcessPoolExecutor(workers, mp_context=mp.get_context(start_method),
                                             initializer=_init_worker)

    def __call__(self, candidates: Sequence[Any], generation: int) -> list[float]:
        if hasattr(self.fitness_fn, "batch"):
            # One vectorised call per worker on a contiguous slice of the population.
            k = max(1, min(self.workers, len(candidates)))
            bounds = np.linspace(0, len(candidates), k + 1).astype(int)
            jobs_b = [(self.fitness_fn, list(candidates[a:b]), generation)
                      for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
            parts = (map(_call_batch, jobs_b) if self._pool is None
                     else self._pool.map(_call_batch, jobs_b))
            return [v for part in parts for v in part]
        jobs = [(self.fitness_fn, c, generation) for c in candidates]
        if self._pool is None:
            return [_call(j) for j in jobs]
        return list(self._pool.map(_call, jobs))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "PopulationEvaluator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
