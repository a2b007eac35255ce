"""Cross-task training with a gradient meta-optimizer.

One outer step: sample a meta-batch of tasks (a pure function of seed and step), ask the learner
for the meta-gradient of the mean query loss, clip, step the ``torch.optim`` optimizer and the
schedule. Meta-validation runs every ``val_every`` steps on a fixed task set and the best φ is
kept. State is checkpointed atomically, so a killed run resumes and ends with the same numbers
an uninterrupted run gives. Under ``torchrun`` the meta-batch is split over the processes and
their meta-gradients are all-reduced (:mod:`metaphi.loops.distributed`).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..learners.base import Learner
from ..tasks.prefetch import meta_batches
from ..tasks.sources import TaskSource, task_rng
from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import (DistContext, all_reduce_step, check_in_sync, evaluate_gathered,
                          fixed_task_block, load_on_main)


def build_optimizer(params, name: str, lr: float, weight_decay: float = 0.0,
                    momentum: float = 0.0) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'adam', 'adamw' or 'sgd', got {name!r}")


def build_schedule(opt: torch.optim.Optimizer, name: str, steps: int, step_size: int = 1000,
                   gamma: float = 0.5) -> torch.optim.lr_scheduler.LRScheduler:
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=step_size, gamma=gamma)
    raise ValueError(f"schedule must be 'constant', 'cosine' or 'step', got {name!r}")


@dataclass
class TrainState:
    step: int = 0
    best_value: float | None = None
    best_step: int = -1
    best_params: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: float = 0.0


class MetricsLog:
    """Per-step metrics as JSON lines; on resume, lines past the checkpoint are dropped so the
    log equals an uninterrupted run's."""

    def __init__(self, path: Path, keep_before_step: int | None = None) -> None:
        self.path = path
        if keep_before_step is not None and path.exists():
            kept = [l for l in path.read_text().splitlines()
                    if l.strip() and json.loads(l)["step"] < keep_before_step]
            path.write_text("".join(l + "\n" for l in kept))
        elif keep_before_step is None:
            path.write_text("")
        self._f = open(path, "a")

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _better(value: float, best: float | None, higher: bool) -> bool:
    return best is None or (value > best if higher else value < best)


def meta_train(learner: Learner, train_source: TaskSource, val_source: TaskSource | None, *,
               steps: int, meta_batch: int, seed: int, out_dir: str | Path,
               optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler,
               clip_grad_norm: float | None = None, val_every: int = 500, val_tasks: int = 200,
               checkpoint_every: int = 500, resume: bool = False,
               device: torch.device | str = "cpu", progress: bool = True,
               on_step: Callable[[int, dict[str, float]], None] | None = None,
               dist: DistContext | None = None, loader_workers: int = 0) -> TrainState:
    """Meta-train ``learner`` (its parameters are φ) and return the final :class:`TrainState`
    (``best_params`` holds φ with the best meta-validation metric; without a ``val_source``,
    φ of the last step).

    ``dist``: the process group of a distributed run (see
    :func:`metaphi.loops.distributed.init_from_env`); each rank then draws its block of every
    meta-batch and only rank 0 writes files. ``loader_workers``: processes that sample the
    meta-batches a few steps ahead (:func:`metaphi.tasks.meta_batches`; worth it on a GPU, where
    sampling in the loop leaves the device idle); the tasks are the same with any number."""
    ctx = dist or DistContext()
    first, local_batch = ctx.shard(meta_batch)
    out = Path(out_dir)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    state = TrainState()

    def read_checkpoint() -> dict[str, Any] | None:
        if not (resume and ckpt_path.exists()):
            return None
        # Distributed: CPU tensors travel to the other ranks, which move them to their devices.
        return load_checkpoint(ckpt_path, map_location="cpu" if ctx.enabled else device)

    # Rank 0 reads the checkpoint and sends it to the others: no shared disk needed.
    ck = load_on_main(ctx, read_checkpoint, device)
    if ck is not None:
        learner.load_state_dict(ck["learner"])
        optimizer.load_state_dict(ck["optimizer"])
        schedule.load_state_dict(ck["schedule"])
        state = TrainState(step=ck["step"], best_value=ck["best_value"], best_step=ck["best_step"],
                           best_params=ck["best_params"], seconds=ck["seconds"])
    log = (MetricsLog(out / "metrics.jsonl", keep_before_step=state.step if resume else None)
           if ctx.is_main else None)
    val_set = ([] if val_source is None else
               [t.to(device) for t in fixed_task_block(val_source, seed, "val", val_tasks, ctx)])
    params = dict(learner.named_parameters())

    bar = None
    if progress and ctx.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=state.step, desc="meta-train", unit="step",
                   dynamic_ncols=True)
    t0 = time.perf_counter() - state.seconds
    batches = meta_batches(train_source, seed, "train", state.step, steps, local_batch,
                           start=first, workers=loader_workers, device=device)
    try:
        for step, tasks in zip(range(state.step, steps), batches):
            # Anything stochastic inside the step (dropout, augmentation) is a function of
            # (seed, step) too, so a resumed run replays it exactly.
            torch.manual_seed(int(task_rng(seed, "train", step, 1 << 30).integers(2**62)))
            # Dividing by the global meta-batch makes the sum over ranks the mean gradient.
            grads, stats = learner.outer_grads(tasks, scale=meta_batch)
            if ctx.enabled:
                grads, stats = all_reduce_step(grads, stats, ctx, local_batch, meta_batch)
            for n, g in grads.items():
                params[n].grad = g
            if clip_grad_norm is not None:
                stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(
                    [params[n] for n in grads], clip_grad_norm))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            record = {"step": step, "loss": stats["loss"], "metric": stats["metric"],
                      "lr": optimizer.param_groups[0]["lr"]}
            schedule.step()
            last = step + 1 == steps
            if val_source is not None and ((step + 1) % val_every == 0 or last):
                learner.prepare_eval(train_source, seed)
                val = evaluate_gathered(learner, val_set, ctx, device)
                record.update(val_metric=val["mean"], val_ci95=val["ci95"], val_loss=val["loss"])
                if _better(val["mean"], state.best_value, learner.higher_is_better):
                    state.best_value, state.best_step = val["mean"], step + 1
                    state.best_params = {k: v.detach().clone() for k, v in learner.state_dict().items()}
            record["seconds"] = time.perf_counter() - t0
            if log is not None:
                log.write(record)
            state.step = step + 1
            state.seconds = record["seconds"]
            if bar is not None:
                bar.update(1)
                post = {"loss": f"{stats['loss']:.4g}"}
                if state.best_value is not None:
                    post["best_val"] = f"{state.best_value:.4g}"
                bar.set_postfix(post)
            if on_step is not None:
                on_step(step, record)
            if ctx.is_main and (state.step % checkpoint_every == 0 or last):
                save_checkpoint(ckpt_path, {
                    "step": state.step, "learner": learner.state_dict(),
                    "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                    "best_value": state.best_value, "best_step": state.best_step,
                    "best_params": state.best_params, "seconds": state.seconds})
    finally:
        batches.close()  # stops the loader's worker processes
        if log is not None:
            log.close()
        if bar is not None:
            bar.close()
    if val_source is None:
        # Nothing left to choose with: deploy the last φ (also when a resumed run had no step
        # left to do, e.g. one finished early at its last checkpoint).
        state.best_step = state.step
        state.best_params = {k: v.detach().clone() for k, v in learner.state_dict().items()}
    check_in_sync(learner.state_dict(), ctx)
    return state
