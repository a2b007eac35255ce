"""Task-parallel meta-batches on CPU: tasks of a meta-batch run on several threads at once.

On a CPU, one task's episode (a few dozen images through a small network) is too small for
PyTorch's intra-op threads to keep every core busy. Tasks are independent, so running them
side by side, each on one intra-op thread, uses the cores better (the speed page of the
results compares the two). The result is the same per-task computation; the per-task
gradients are summed in task order, so the meta-gradient does not depend on thread timing.

``torch.func.functional_call`` swaps a module's attributes while it runs, so two threads must
never share a module: each thread gets a replica that shares every parameter and buffer
(no copies of tensors) but has its own module objects.
"""
from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence, TypeVar

import torch
from torch import nn

T = TypeVar("T")
R = TypeVar("R")

# Process-wide default for learners whose ``task_threads`` is None (``metaphi train
# --task-threads``); None: one task thread per intra-op thread on CPU.
default_threads: int | None = None

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def _one_thread() -> None:
    # OpenMP's thread count is per calling thread: set it in each worker.
    torch.set_num_threads(1)


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size != workers:
            if _pool is not None:
                _pool.shutdown(wait=True)
            _pool = ThreadPoolExecutor(workers, thread_name_prefix="metaphi-task",
                                       initializer=_one_thread)
            _pool_size = workers
        return _pool


def replica(module: nn.Module) -> nn.Module:
    """A copy of ``module``'s structure that shares all its tensors (parameters, buffers)."""
    memo: dict[int, Any] = {id(t): t for t in module.parameters()}
    memo.update({id(t): t for t in module.buffers()})
    return copy.deepcopy(module, memo)


def _checked(threads: int) -> int:
    if threads < 1:
        raise ValueError(f"task_threads must be >= 1 (1: one task at a time), got {threads}")
    return int(threads)


def set_default_threads(threads: int | None) -> None:
    """Task threads for every learner whose ``task_threads`` is None (None: the CPU default)."""
    global default_threads
    default_threads = None if threads is None else _checked(threads)


def resolve_threads(requested: int | None, tensors: Sequence[torch.Tensor]) -> int:
    """How many task threads to use: ``requested``, or by default the intra-op thread count on
    CPU (1, i.e. the plain loop, on a GPU, where one task's kernels already fill the device)."""
    requested = default_threads if requested is None else requested
    if requested is not None:
        return _checked(requested)
    if any(t.device.type != "cpu" for t in tensors):
        return 1
    return torch.get_num_threads()


def fold_tasks(module: nn.Module, fn: Callable[[nn.Module, T], R], tasks: Sequence[T],
               threads: int, add: Callable[[R], None]) -> None:
    """``add(fn(module_or_replica, task))`` for every task, in task order.

    On one thread each result is added before the next task runs, so that a task's result (a
    meta-gradient: a copy of φ) is not held while the later tasks' graphs are built; on more,
    the results of :func:`map_tasks` are added in task order, as they would be on one.
    """
    if _sequential(tasks, threads):
        for t in tasks:
            add(fn(module, t))
        return
    for r in map_tasks(module, fn, tasks, threads):
        add(r)


def _sequential(tasks: Sequence[Any], threads: int) -> bool:
    """Whether :func:`map_tasks` runs the plain loop (one thread, one task, or nested)."""
    return (threads <= 1 or len(tasks) < 2
            or threading.current_thread().name.startswith("metaphi-task"))


def map_tasks(module: nn.Module, fn: Callable[[nn.Module, T], R], tasks: Sequence[T],
              threads: int) -> list[R]:
    """``[fn(module_or_replica, task) for task in tasks]``, on ``threads`` threads.

    Tasks are dealt round-robin to the threads; results come back in task order.
    """
    if _sequential(tasks, threads):
        return [fn(module, t) for t in tasks]
    threads = min(threads, len(tasks))
    mods = [module] + [replica(module) for _ in range(threads - 1)]
    results: list[Any] = [None] * len(tasks)

    def work(w: int) -> None:
        for i in range(w, len(tasks), threads):
            results[i] = fn(mods[w], tasks[i])

    keep = shared_accumulators(module)
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        futures = [_executor(threads - 1).submit(work, w) for w in range(1, threads)]
        work(0)  # this thread takes the first share
        for f in futures:
            f.result()
    finally:
        torch.set_num_threads(prev)
        del keep
    return results


def shared_accumulators(module: nn.Module) -> list[Any]:
    """The gradient accumulators of ``module``'s trainable parameters, created now.

    A thread that creates a leaf's accumulator holds the tensor's autograd lock while it waits
    for the GIL, and a thread that holds the GIL can wait for that lock: the two threads then
    stall each other. Created here, before the task threads start, and kept alive until they
    finish, the accumulators are only looked up by the threads, never created.
    """
    if not torch.is_grad_enabled():
        return []
    return [p.view_as(p).grad_fn.next_functions[0][0] for p in module.parameters()
            if p.requires_grad]
