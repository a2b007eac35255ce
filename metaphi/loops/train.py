"""Cross-task training with a gradient meta-optimizer.

One outer step: sample a meta-batch of tasks (a pure function of seed and step), let the
learner accumulate the meta-gradient of the mean query loss into φ's ``.grad``
(``learner.meta_backward``), clip, step the ``torch.optim`` optimizer and the schedule.
Meta-validation runs every ``val_every`` steps on a fixed task set and the best φ is kept.
State is checkpointed atomically, so a killed run resumes and ends with the same numbers an
uninterrupted run gives. Under ``torchrun`` the meta-batch is split over the processes and
their meta-gradients are all-reduced (:mod:`metaphi.loops.distributed`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..learners.base import Learner
from ..tasks.prefetch import meta_batches
from ..tasks.sources import TaskSource, task_rng
from ..tasks.task import Task
from ..files import as_write_error
from .checkpoint import (atomic_write_text, load_checkpoint, read_log, save_checkpoint,
                         strict_json)
from .distributed import (DistContext, all_reduce_grads_, broadcast_object, check_in_sync,
                          evaluate_gathered, fixed_task_block, load_on_main)

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


class NonFiniteError(RuntimeError):
    """Meta-training produced a NaN or infinite loss or gradient."""


@dataclass
class TrainOptions:
    """How :func:`meta_train` runs: the budget, validation, checkpoints and where it runs.

    ``steps`` outer steps on meta-batches of ``meta_batch`` tasks drawn with ``seed``;
    meta-validation on ``val_tasks`` fixed tasks every ``val_every`` steps; a checkpoint every
    ``checkpoint_every`` steps; ``resume`` continues from the run folder's checkpoint;
    ``loader_workers`` processes sample meta-batches ahead (the tasks are the same with any
    number); ``max_seconds`` ends training (validated and checkpointed like a last step) after
    the first step that ends past this wall time, counting a resumed run's earlier time;
    ``on_step(step, record)`` is called after each step.
    """

    steps: int
    meta_batch: int
    seed: int = 0
    val_every: int = 500
    val_tasks: int = 200
    checkpoint_every: int = 500
    clip_grad_norm: float | None = None
    resume: bool = False
    device: torch.device | str = "cpu"
    loader_workers: int = 0
    progress: bool = True
    max_seconds: float | None = None
    on_step: Callable[[int, dict[str, float]], None] | None = None


@dataclass
class TrainState:
    step: int = 0
    best_value: float | None = None
    best_step: int = -1
    best_params: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: float = 0.0


def meta_train(learner: Learner, train_source: TaskSource, val_source: TaskSource | None,
               optimizer: torch.optim.Optimizer,
               schedule: torch.optim.lr_scheduler.LRScheduler, out_dir: str | Path,
               options: TrainOptions, dist: DistContext | None = None) -> TrainState:
    """Meta-train ``learner`` (its parameters are φ) and return the final :class:`TrainState`
    (``best_params`` holds φ with the best meta-validation metric; without a ``val_source``,
    φ of the last step). ``dist``: the process group of a distributed run
    (:func:`metaphi.loops.distributed.init_from_env`): each rank draws its block of every
    meta-batch and only rank 0 writes files."""
    o, ctx, out = options, dist or DistContext(), Path(out_dir)
    first, local_batch = ctx.shard(o.meta_batch)  # fails before any collective or file
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    state = _restore(learner, optimizer, schedule, out, o, ctx)
    log = MetricsLog(out / METRICS, state.step if o.resume else None) if ctx.is_main else None
    val_set = ([] if val_source is None else [t.to(o.device) for t in fixed_task_block(
        val_source, o.seed, "val", o.val_tasks, ctx)])
    bar = _progress_bar(o, state, ctx)
    t0 = time.perf_counter() - state.seconds
    batches = meta_batches(train_source, o.seed, "train", state.step, o.steps, local_batch,
                           start=first, workers=o.loader_workers, device=o.device)
    learner.train()
    try:
        for step, tasks in zip(range(state.step, o.steps), batches):
            # forward, backward, update
            record = _outer_step(learner, tasks, optimizer, schedule, step, o, ctx)
            last = step + 1 == o.steps or _out_of_time(o, t0, ctx)
            # evaluate on the meta-validation tasks and keep the best φ
            if val_source is not None and ((step + 1) % o.val_every == 0 or last):
                record.update(_validate(learner, train_source, val_set, o, ctx))
                _keep_best(learner, state, record["val_metric"], step + 1)
            # timing, logging and checkpoints
            record["seconds"] = state.seconds = time.perf_counter() - t0
            state.step = step + 1
            _log(record, log, bar, state, o)
            if ctx.is_main and (state.step % o.checkpoint_every == 0 or last):
                _checkpoint(out, learner, optimizer, schedule, state)
            if last:
                break
    finally:
        batches.close()  # stops the loader's worker processes
        for closer in (log, bar):
            if closer is not None:
                closer.close()
    if val_source is None:
        # Nothing to choose with: deploy the last φ (also when a resumed run had no step left).
        state.best_step, state.best_params = state.step, _copy_state(learner)
    check_in_sync(learner.state_dict(), ctx)
    return state


# -- the stanzas of meta_train -----------------------------------------------------------------
def _restore(learner: Learner, optimizer: torch.optim.Optimizer, schedule: Any, out: Path,
             o: TrainOptions, ctx: DistContext) -> TrainState:
    """The state to start from: a fresh one, or the run folder's checkpoint when resuming.
    Rank 0 reads it and sends it to the others (no shared disk needed)."""
    path = out / CHECKPOINT

    def read() -> dict[str, Any] | None:
        if not (o.resume and path.exists()):
            return None
        # distributed: CPU tensors travel to the other ranks, which move them to their devices
        return load_checkpoint(path, map_location="cpu" if ctx.enabled else o.device,
                               expect=("learner", "optimizer", "schedule", "step"))

    ck = load_on_main(ctx, read, o.device)
    if ck is None:
        return TrainState()
    learner.load_state_dict(ck["learner"])
    optimizer.load_state_dict(ck["optimizer"])
    schedule.load_state_dict(ck["schedule"])
    return TrainState(step=ck["step"], best_value=ck["best_value"], best_step=ck["best_step"],
                      best_params=ck["best_params"], seconds=ck["seconds"])


def _outer_step(learner: Learner, tasks: list[Task], optimizer: torch.optim.Optimizer,
                schedule: Any, step: int, o: TrainOptions, ctx: DistContext) -> dict[str, Any]:
    """One outer step; returns the step's log record (loss, metric, lr, grad norm)."""
    # Anything stochastic inside the step (dropout, augmentation) is a function of (seed, step)
    # too, so a resumed run replays it exactly.
    torch.manual_seed(int(task_rng(o.seed, "train", step, 1 << 30).integers(2**62)))
    optimizer.zero_grad(set_to_none=True)
    # learners with schedules over the outer steps (MAML++) follow the loop's step, so a
    # resumed run continues them exactly
    if hasattr(learner, "set_outer_step"):
        learner.set_outer_step(step)
    # dividing by the global meta-batch makes the sum over ranks the mean gradient
    stats = learner.meta_backward(tasks, normalize_by=o.meta_batch)
    if ctx.enabled:
        stats = all_reduce_grads_(learner.parameters(), stats, ctx, len(tasks), o.meta_batch)
    params = [p for p in learner.parameters() if p.grad is not None]
    if o.clip_grad_norm is not None:
        stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, o.clip_grad_norm))
    check_finite(stats, params, step)
    optimizer.step()
    record = {"step": step, "loss": stats["loss"], "metric": stats["metric"],
              "lr": optimizer.param_groups[0]["lr"], **({"grad_norm": stats["grad_norm"]}
                                                         if "grad_norm" in stats else {})}
    schedule.step()
    return record


def _out_of_time(o: TrainOptions, t0: float, ctx: DistContext) -> bool:
    """Whether the wall-time budget is spent (rank 0's clock decides for every rank)."""
    if o.max_seconds is None:
        return False
    return bool(broadcast_object(time.perf_counter() - t0 >= o.max_seconds, ctx))


def check_finite(stats: dict[str, float], params: list[torch.Tensor], step: int) -> None:
    """Stop before a non-finite loss or gradient reaches φ (the last checkpoint is kept)."""
    loss = stats["loss"]
    bad = not math.isfinite(loss) or any(not bool(torch.isfinite(p.grad).all()) for p in params)
    if bad:
        raise NonFiniteError(
            f"meta-training diverged at step {step}: the query loss is {loss} or φ's gradient "
            "is not finite, so φ was not updated and the run folder keeps its last checkpoint. "
            "Lower the learning rates (meta_optimizer.lr, learner.inner_lr) or set "
            "meta_optimizer.clip_grad_norm")


def _validate(learner: Learner, train_source: TaskSource, val_set: list[Task],
              o: TrainOptions, ctx: DistContext) -> dict[str, float]:
    learner.prepare_eval(train_source, o.seed)
    val = evaluate_gathered(learner, val_set, ctx, o.device)
    learner.train()
    return {"val_metric": val["mean"], "val_ci95": val["ci95"], "val_loss": val["loss"]}


def _keep_best(learner: Learner, state: TrainState, value: float, step: int) -> None:
    if _better(value, state.best_value, learner.higher_is_better):
        state.best_value, state.best_step = value, step
        state.best_params = _copy_state(learner)


def _copy_state(learner: Learner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learner.state_dict().items()}


def _log(record: dict[str, Any], log: "MetricsLog | None", bar: Any, state: TrainState,
         o: TrainOptions) -> None:
    if log is not None:
        log.write(record)
    if bar is not None:
        bar.update(1)
        post = {"loss": f"{record['loss']:.4g}"}
        if state.best_value is not None:
            post["best_val"] = f"{state.best_value:.4g}"
        bar.set_postfix(post)
    if o.on_step is not None:
        o.on_step(record["step"], record)


def _checkpoint(out: Path, learner: Learner, optimizer: torch.optim.Optimizer, schedule: Any,
                state: TrainState) -> None:
    save_checkpoint(out / CHECKPOINT, {
        "step": state.step, "learner": learner.state_dict(),
        "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
        "best_value": state.best_value, "best_step": state.best_step,
        "best_params": state.best_params, "seconds": state.seconds})


def _progress_bar(o: TrainOptions, state: TrainState, ctx: DistContext) -> Any:
    if not (o.progress and ctx.is_main):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=o.steps, initial=state.step, desc="meta-train", unit="step",
                dynamic_ncols=True)


def _better(value: float, best: float | None, higher: bool) -> bool:
    return best is None or (value > best if higher else value < best)


class MetricsLog:
    """Per-step metrics as JSON lines; on resume, lines past the checkpoint are dropped so the
    log equals an uninterrupted run's."""

    def __init__(self, path: Path, keep_before_step: int | None = None,
                 key: str = "step") -> None:
        self.path = path
        kept = [] if keep_before_step is None else read_log(path, key, keep_before_step)
        atomic_write_text(path, "".join(strict_json(r) + "\n" for r in kept))
        self._f = open(path, "a")

    def write(self, record: dict[str, Any]) -> None:
        try:
            self._f.write(strict_json(record) + "\n")
            self._f.flush()
        except OSError as e:
            raise as_write_error(self.path, e) from e

    def close(self) -> None:
        self._f.close()
