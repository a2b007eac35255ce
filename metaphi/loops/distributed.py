"""Distributed meta-training on ``torch.distributed``, launched with ``torchrun``.

``torchrun --nproc_per_node=N -m metaphi train ...`` starts N processes (ranks). Each rank:

* draws its own contiguous block of every meta-batch: rank r of W takes tasks
  ``[r*B/W, (r+1)*B/W)`` of step s, which are ``task_rng(seed, "train", s, i)`` as in a
  single-process run, so the union over ranks *is* the single-process meta-batch;
* computes the meta-gradient of ``sum(its task losses) / B`` (exact second-order MAML: each
  rank differentiates through its own inner loops with ``torch.autograd.grad``);
* sums those gradients over ranks with one ``all_reduce`` of a flat buffer, giving the mean
  over the global meta-batch; every rank then takes the same optimizer step, so φ stays
  identical everywhere (checked at the end of training);
* evaluates its block of the meta-validation / meta-test tasks; per-task numbers are gathered
  in task order, so every rank computes the same summary and the same best-φ decision.

Only rank 0 writes files; a resumed run reads the checkpoint on rank 0 and broadcasts it, so no
shared file system is needed for the state (only rank 0's ``--out`` folder matters).

Population meta-optimizers spread each generation's candidates over the ranks
(:class:`DistributedPopulationEvaluator`); every rank runs the same ask/tell optimizer on the
gathered fitnesses, so their states never diverge.

A process started without ``WORLD_SIZE > 1`` (plain ``python -m metaphi train``) never touches
``torch.distributed``: :func:`init_from_env` returns the single-process context.
"""
from __future__ import annotations

import os
import pickle
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence, TypeVar

import torch
import torch.distributed as dist

from ..tasks.sources import TaskSource, task_rng
from ..tasks.task import Task

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly trivial) process group.

    ``owns_group``: this library created the process group, so it also destroys it.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        """More than one process: collectives are needed."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0, the only rank that writes logs, checkpoints, plots and results."""
        return self.rank == 0

    def shard(self, meta_batch: int) -> tuple[int, int]:
        """``(start, count)`` of this rank's block of a meta-batch of ``meta_batch`` tasks."""
        if meta_batch % self.world_size:
            raise ValueError(
                f"meta_batch={meta_batch} cannot be split evenly over {self.world_size} processes; "
                f"use a meta_batch that is a multiple of {self.world_size} (e.g. "
                f"meta_batch={max(1, round(meta_batch / self.world_size)) * self.world_size}) "
                "or launch a number of processes that divides it")
        n = meta_batch // self.world_size
        return self.rank * n, n

    def block(self, n: int) -> range:
        """This rank's contiguous block of ``n`` items (sizes differ by at most one)."""
        return range(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)


def current() -> DistContext:
    """The context of an already initialised process group, or the single-process one."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                       backend=str(dist.get_backend()), owns_group=False)


def init_from_env(device: torch.device | str = "cpu") -> tuple[DistContext, torch.device]:
    """Join the process group that ``torchrun`` describes in the environment.

    With ``WORLD_SIZE`` unset or 1 nothing happens (single process, ``device`` unchanged).
    Otherwise the backend is NCCL when ``device`` is CUDA (each rank then uses
    ``cuda:LOCAL_RANK``) and gloo on CPU; ``MASTER_ADDR``/``MASTER_PORT`` (set by ``torchrun``,
    also across machines) say where to meet. Returns the context and the device to use.
    """
    device = torch.device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(), device
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world} but {', '.join(missing)} not set; launch with "
                           "torchrun (e.g. torchrun --nproc_per_node=2 -m metaphi train ...)")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if device.index is not None:
            raise ValueError(f"--device {device}: under torchrun every process uses the GPU "
                             "cuda:LOCAL_RANK; pass --device cuda (or auto) and choose GPUs "
                             "with CUDA_VISIBLE_DEVICES")
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} "
                               "GPUs are visible; use --nproc_per_node <= the number of GPUs")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"distributed runs support CPU (gloo) and CUDA (NCCL) devices, not "
                         f"{device.type!r}")
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://")
        owns = True
    elif dist.get_backend() != backend:
        raise RuntimeError(f"the process group already uses {dist.get_backend()}, but device "
                           f"{device} needs {backend}")
    ctx = DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                      local_rank=local_rank, backend=backend, owns_group=owns)
    return ctx, device


def shutdown(ctx: DistContext) -> None:
    """Destroy the process group if :func:`init_from_env` created it."""
    if ctx.owns_group and dist.is_initialized():
        # On success all ranks tear the group down together: a rank that destroyed it while
        # another still worked (rank 0 writing plots and results) sometimes aborted at exit
        # inside gloo's threads ("terminate called without an active exception", 1 in 12 runs
        # of the distributed test). While an exception propagates (called from a `finally`),
        # the other ranks may never arrive, so no barrier then; torchrun ends them.
        if sys.exc_info()[1] is None:
            dist.barrier()
        dist.destroy_process_group()


def _comm_device(ctx: DistContext) -> torch.device:
    # NCCL moves only CUDA tensors; gloo is used on CPU.
    return torch.device("cuda", torch.cuda.current_device()) if ctx.backend == "nccl" \
        else torch.device("cpu")


# -- collectives ----------------------------------------------------------------------------
def broadcast_object(obj: T, ctx: DistContext, src: int = 0) -> T:
    """``obj`` from rank ``src`` on every rank (any picklable object)."""
    if not ctx.enabled:
        return obj
    box = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(box, src=src, device=_comm_device(ctx))
    return box[0]  # type: ignore[return-value]


def gather_blocks(local: Sequence[T], ctx: DistContext) -> list[T]:
    """Concatenate every rank's list in rank order (so :meth:`DistContext.block` pieces come
    back in their original order); the same list on every rank."""
    if not ctx.enabled:
        return list(local)
    parts: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(parts, list(local))
    return [x for p in parts for x in p]


def on_main(ctx: DistContext, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and hand its result to every rank; an exception raised there
    is raised on every rank (instead of leaving the other ranks waiting forever)."""
    if not ctx.enabled:
        return fn()
    outcome: tuple[bool, Any] = (True, None)
    if ctx.is_main:
        try:
            outcome = (True, fn())
        except Exception as e:  # re-raised below on every rank
            try:
                pickle.dumps(e)
                outcome = (False, e)
            except Exception:
                outcome = (False, RuntimeError(f"{type(e).__name__}: {e}"))
    ok, value = broadcast_object(outcome, ctx)
    if not ok:
        raise value
    return value


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def all_reduce_grads_(params: Iterable[torch.Tensor], stats: dict[str, float],
                      ctx: DistContext, local_count: int, global_count: int) -> dict[str, float]:
    """Sum the parameters' ``.grad`` over ranks, in place, and turn per-rank stat means over
    ``local_count`` tasks into global means over ``global_count``.

    One collective per (dtype, device) group: the flattened gradients, with the per-rank stat
    sums riding at the end of the first buffer (with small networks a step costs little
    compute, so the number of synchronisations per step matters). The gradients already hold
    the second-order terms, so their sum is exactly the meta-gradient of the summed losses.
    """
    if not ctx.enabled:
        return stats
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            groups.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    keys = list(stats)
    dev = _comm_device(ctx)
    out = dict(stats)
    for i, grads in enumerate(groups.values() or [[]]):
        dtype = grads[0].dtype if grads else torch.float64
        parts = [g.reshape(-1).to(dev) for g in grads]
        if i == 0:  # the stats ride with the first group
            parts.append(torch.tensor([stats[k] * local_count for k in keys], dtype=dtype,
                                      device=dev))
        flat = torch.cat(parts)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
        if i == 0:
            out = {k: float(v) / global_count for k, v in zip(keys, flat[offset:].tolist())}
    return out


def check_in_sync(tensors: dict[str, torch.Tensor], ctx: DistContext, what: str = "φ") -> None:
    """Raise if ``tensors`` differ between ranks (they must be bitwise identical: every rank
    applies the same all-reduced gradient)."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        flat = torch.cat([t.detach().reshape(-1).double().cpu() for t in tensors.values()])
    # Two position-weighted checksums catch both changed and swapped values.
    w = torch.arange(1, flat.numel() + 1, dtype=torch.float64)
    sums = (float(flat.sum()), float((flat * w.reciprocal()).sum()))
    everyone = gather_blocks([sums], ctx)
    if any(s != everyone[0] for s in everyone):
        raise RuntimeError(f"{what} differs between ranks ({everyone}); the processes ran "
                           "different code or data")


# -- tasks and evaluation -------------------------------------------------------------------
def fixed_task_block(source: TaskSource, seed: int, stream: str | int, n: int,
                     ctx: DistContext) -> list[Task]:
    """This rank's block of the ``n`` fixed tasks of ``stream`` (those of
    :func:`metaphi.tasks.sources.fixed_tasks`)."""
    return [source.sample(task_rng(seed, stream, 0, i)) for i in ctx.block(n)]


def evaluate_gathered(learner: Any, local_tasks: Sequence[Task], ctx: DistContext,
                      device: torch.device | str = "cpu", progress: bool = False,
                      desc: str = "meta-test") -> dict[str, Any]:
    """:func:`metaphi.loops.evaluate.evaluate` over tasks spread across ranks: each rank scores
    its block, the per-task numbers are gathered in task order and summarised identically on
    every rank (equal to a single-process evaluation of all the tasks)."""
    from .evaluate import evaluate, summarise, task_records

    if not ctx.enabled:
        return evaluate(learner, local_tasks, device, progress=progress, desc=desc)
    records = task_records(learner, local_tasks, device, progress and ctx.is_main,
                           f"{desc} (rank 0 of {ctx.world_size})")
    return summarise(learner, gather_blocks(records, ctx))


def load_on_main(ctx: DistContext, load: Callable[[], T | None],
                 device: torch.device | str) -> T | None:
    """Run ``load`` (e.g. read a checkpoint onto the CPU) on rank 0, send the result to every
    rank and move its tensors to ``device``. Only rank 0 needs the file."""
    obj = on_main(ctx, load)
    return _to_device(obj, torch.device(device)) if ctx.enabled else obj


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


# -- population meta-optimizers -------------------------------------------------------------
class DistributedPopulationEvaluator:
    """Evaluate a generation's candidates spread over the ranks: rank r scores its contiguous
    block (serially, or with ``workers`` local processes), the fitnesses are gathered in
    candidate order, and every rank receives the full list. With pure fitness functions (the
    case for :class:`metaphi.meta.fitness.TaskFitness`) the numbers equal a single-process
    evaluation, so every rank's ask/tell optimizer takes the same steps.
    """

    def __init__(self, fitness_fn: Callable[[Any, int], float], ctx: DistContext | None = None,
                 workers: int | None = 1, start_method: str = "spawn") -> None:
        from ..meta.evaluator import PopulationEvaluator

        self.ctx = current() if ctx is None else ctx
        # Several ranks usually share a machine: one process each unless asked otherwise.
        self.local = PopulationEvaluator(fitness_fn, 1 if workers is None else workers,
                                         start_method)

    def __call__(self, candidates: Sequence[Any], generation: int) -> list[float]:
        mine = [candidates[i] for i in self.ctx.block(len(candidates))]
        return gather_blocks(self.local(mine, generation) if mine else [], self.ctx)

    def close(self) -> None:
        self.local.close()

    def __enter__(self) -> "DistributedPopulationEvaluator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
