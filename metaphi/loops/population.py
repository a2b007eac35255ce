"""Population meta-training: an ask/tell meta-optimizer (ES, CMA-ES, REINFORCE) driven over
generations, with parallel fitness, logs, progress, atomic checkpoints and exact resume.

Each generation: ``candidates = optimizer.ask()``; their fitnesses are evaluated in parallel
(:class:`metaphi.meta.PopulationEvaluator`); ``optimizer.tell(candidates, fitnesses)``;
one line is appended to ``metrics.jsonl``; ``checkpoint.pt`` is replaced atomically. A resumed
run reloads the optimizer's state and continues with the next generation, which gives exactly
the result of an uninterrupted run (the optimizers draw each generation's noise from
``(seed, generation)``, and fitness tasks are a function of the generation).

Inside an initialised ``torch.distributed`` process group (a script launched with ``torchrun``
that called :func:`metaphi.loops.distributed.init_from_env`), every rank runs this same loop:
the candidates are spread over the ranks, the fitnesses gathered, and rank 0 alone writes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from ..meta.evolution import to_plain
from ..files import as_write_error
from .checkpoint import (atomic_write_text, load_checkpoint, read_log, save_checkpoint,
                         strict_json)

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


class AskTell(Protocol):
    """What :func:`population_train` needs from a meta-optimizer."""

    generation: int
    evaluations: int
    spread: float | None

    @property
    def best(self) -> tuple[Any, float]: ...
    @property
    def center(self) -> Any: ...
    def ask(self) -> list[Any]: ...
    def tell(self, candidates: list[Any], fitnesses: list[float]) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class PopulationOptions:
    """How :func:`population_train` runs.

    ``generations`` in total (counting those already in the checkpoint when ``resume``);
    ``workers``: parallel fitness processes (default: all cores; 0 or 1: in this process);
    ``config``: plain data saved in the checkpoint, a resume with a different one is refused;
    ``on_generation``: called with each generation's log row; ``max_seconds``: stop after the
    first generation that ends past this wall time (counting a resumed checkpoint's time);
    ``checkpoint_seconds``: write the checkpoint (atomically) at the first generation that ends
    this long after the previous one, and after the last; ``average_from``: also keep the
    running mean of the centers from this generation on (Polyak-Ruppert averaging; vector φ
    only). With resampled fitness tasks the center ends in a noise-driven random walk around
    the optimum, and the walk's average lies closer to it than its last position.
    In a distributed run ``workers`` counts local processes per rank (default 1).
    """

    generations: int
    resume: bool = False
    workers: int | None = None
    progress: bool = True
    config: dict[str, Any] = field(default_factory=dict)
    on_generation: Callable[[dict[str, Any]], None] | None = None
    start_method: str = "spawn"
    max_seconds: float | None = None
    checkpoint_seconds: float = 10.0
    average_from: int | None = None


@dataclass
class PopulationResult:
    """``best``/``best_fitness``: the best candidate evaluated (on its own generation's tasks);
    ``center``: the optimizer's current estimate (ES/CMA-ES mean, REINFORCE's mode), usually the
    better φ to deploy when fitness tasks are resampled; ``center_average``: the mean of the
    centers of generations ``>= average_from`` (None without it); ``history``: one dict per
    generation."""

    best: Any
    best_fitness: float
    center: Any
    generations: int
    evaluations: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    center_average: Any = None


@dataclass
class _Average:
    """Running sum of the centers of generations >= ``start`` (None: no averaging)."""

    start: int | None
    total: np.ndarray | None = None
    n: int = 0

    def add(self, generation: int, center: Any) -> None:
        if self.start is not None and generation >= self.start:
            c = np.asarray(center, dtype=np.float64)
            self.total, self.n = (c.copy() if self.total is None else self.total + c), self.n + 1

    def value(self) -> np.ndarray | None:
        return None if self.total is None else self.total / self.n


def population_train(optimizer: AskTell, fitness_fn: Callable[[Any, int], float],
                     out_dir: str | Path, options: PopulationOptions) -> PopulationResult:
    """Run ``optimizer`` for ``options.generations`` generations, minimising
    ``fitness_fn(phi, generation)`` (see :class:`PopulationOptions`)."""
    from ..meta.evaluator import PopulationEvaluator
    from . import distributed

    o, out, ctx = options, Path(out_dir), distributed.current()
    _check_options(optimizer, o)
    out.mkdir(parents=True, exist_ok=True)
    config = to_plain(dict(o.config))
    state, history = distributed.on_main(ctx, lambda: _read_state(out, config, o))
    start, seconds0, avg = _restore(optimizer, state, o)
    t_start = last_save = time.perf_counter()
    done = start
    bar = _progress_bar(o, start, ctx.is_main)
    evaluator = (distributed.DistributedPopulationEvaluator(fitness_fn, ctx, o.workers,
                                                            o.start_method)
                 if ctx.enabled else PopulationEvaluator(fitness_fn, o.workers, o.start_method))
    with evaluator as evaluate:
        for gen in range(start, o.generations):
            # ask, evaluate in parallel, tell
            t0 = time.perf_counter()
            candidates = optimizer.ask()
            fitnesses = evaluate(candidates, gen)
            optimizer.tell(candidates, fitnesses)
            avg.add(gen, optimizer.center)
            row = _log_row(optimizer, gen, candidates, fitnesses, time.perf_counter() - t0)
            history.append(row)
            # rank 0's clock decides, so all ranks stop after the same generation
            stop = o.max_seconds is not None and distributed.broadcast_object(
                seconds0 + time.perf_counter() - t_start >= o.max_seconds, ctx)
            # log and checkpoint: generations can take milliseconds, so the checkpoint (with
            # fsync) is written every checkpoint_seconds and at the end
            seconds = seconds0 + time.perf_counter() - t_start
            if ctx.is_main:
                _append_row(out / METRICS, row)
                due = time.perf_counter() - last_save >= o.checkpoint_seconds
                if stop or gen + 1 == o.generations or due:
                    _checkpoint(out, optimizer, gen + 1, config, seconds, o, avg)
                    last_save = time.perf_counter()
            _update_bar(bar, row)
            if o.on_generation is not None:
                o.on_generation(row)
            done = gen + 1
            if stop:
                break
    bar.close()
    best, best_f = optimizer.best
    return PopulationResult(best=best, best_fitness=float(best_f), center=optimizer.center,
                            generations=done, evaluations=int(optimizer.evaluations),
                            seconds=seconds0 + time.perf_counter() - t_start, history=history,
                            center_average=avg.value())


# -- the stanzas of population_train -----------------------------------------------------------
def _check_options(optimizer: AskTell, o: PopulationOptions) -> None:
    if o.generations < 1:
        raise ValueError(f"generations must be >= 1, got {o.generations}")
    if o.average_from is not None:
        if not 0 <= o.average_from < o.generations:
            raise ValueError(f"average_from must be a generation in [0, {o.generations}), got "
                             f"{o.average_from}")
        if not isinstance(getattr(optimizer, "center", None), np.ndarray):
            raise ValueError("average_from averages a flat vector φ (ES or CMA-ES without a "
                             "search space); this optimizer's center is not one")


def _read_state(out: Path, config: dict[str, Any], o: PopulationOptions
                ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The checkpoint to resume from (or None) and the log rows before it; the log is trimmed
    to them (a run killed between a log line and its checkpoint redoes that generation)."""
    path = out / CHECKPOINT
    state = None
    if o.resume and path.is_file():
        state = load_checkpoint(path, expect=("optimizer", "generation", "config"))
        if state.get("config") != config:
            raise ValueError(f"{path} was written with config {state.get('config')}, this run "
                             f"has {config}; resume with the same settings or use a new out_dir")
    elif path.is_file() and not o.resume:
        raise FileExistsError(f"{path} exists; pass resume=True to continue that run, or "
                              "choose a new out_dir")
    rows = read_log(out / METRICS, "generation", int(state["generation"]) if state else 0)
    atomic_write_text(out / METRICS, "".join(strict_json(r) + "\n" for r in rows))
    return state, rows


def _append_row(path: Path, row: dict[str, Any]) -> None:
    try:
        with path.open("a") as f:
            f.write(strict_json(row) + "\n")
    except OSError as e:
        raise as_write_error(path, e) from e


def _restore(optimizer: AskTell, state: dict[str, Any] | None,
             o: PopulationOptions) -> tuple[int, float, _Average]:
    """(first generation, seconds already spent, center average) after loading ``state``."""
    if state is None:
        return 0, 0.0, _Average(o.average_from)
    optimizer.load_state_dict(state["optimizer"])
    start = int(state["generation"])
    if state["average_from"] != o.average_from:
        raise ValueError(f"the checkpoint was written with average_from={state['average_from']}, "
                         f"this run has {o.average_from}; resume with the same setting")
    if optimizer.generation != start:
        raise ValueError(f"checkpoint says generation {start} but the optimizer state is at "
                         f"{optimizer.generation}; the checkpoint is inconsistent")
    if start >= o.generations:
        raise ValueError(f"the checkpoint already has {start} generations; ask for more than "
                         f"{start} to continue")
    total = None if state["avg_sum"] is None else np.asarray(state["avg_sum"], dtype=np.float64)
    return start, float(state["seconds"]), _Average(o.average_from, total, int(state["avg_n"]))


def _log_row(optimizer: AskTell, gen: int, candidates: list[Any], fitnesses: list[float],
             seconds: float) -> dict[str, Any]:
    finite = [f for f in fitnesses if f == f and abs(f) != float("inf")]
    return {"generation": gen,
            "best_fitness": min(finite) if finite else None,
            "mean_fitness": sum(finite) / len(finite) if finite else None,
            "worst_fitness": max(finite) if finite else None,
            "non_finite": len(fitnesses) - len(finite),
            "best_so_far": optimizer.best[1],
            "evaluations": int(optimizer.evaluations),
            "spread": optimizer.spread,
            "popsize": len(candidates),  # changes where CMA-ES restarts (IPOP)
            "seconds": round(seconds, 4)}


def _checkpoint(out: Path, optimizer: AskTell, generation: int, config: dict[str, Any],
                seconds: float, o: PopulationOptions, avg: _Average) -> None:
    best, best_f = optimizer.best
    save_checkpoint(out / CHECKPOINT, {
        "optimizer": optimizer.state_dict(), "generation": generation, "config": config,
        "seconds": seconds, "best": to_plain(best), "best_fitness": best_f,
        "average_from": o.average_from, "avg_n": avg.n,
        "avg_sum": None if avg.total is None else avg.total.tolist()})


def _progress_bar(o: PopulationOptions, start: int, main: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=o.generations, initial=start, disable=not (o.progress and main),
                desc="generations", unit="gen", dynamic_ncols=True)


def _update_bar(bar: Any, row: dict[str, Any]) -> None:
    def fmt(v: float | None) -> str:
        return "nan" if v is None else f"{v:.4g}"

    # best: the best fitness so far (what the run reports at the end); mean: this generation's
    post = {"best": fmt(row["best_so_far"]), "mean": fmt(row["mean_fitness"])}
    if row["spread"] is not None:
        post["spread"] = f"{row['spread']:.3g}"
    bar.set_postfix(post)
    bar.update(1)
