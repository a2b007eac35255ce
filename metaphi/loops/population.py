"""Population meta-training: an ask/tell meta-optimizer (ES, CMA-ES, REINFORCE) driven over
generations, with parallel fitness, logs, progress, atomic checkpoints and exact resume.

Each generation: ``candidates = optimizer.ask()``; their fitnesses are evaluated in parallel
(:class:`metaphi.meta.fitness.PopulationEvaluator`); ``optimizer.tell(candidates, fitnesses)``;
one line is appended to ``metrics.jsonl``; ``checkpoint.pt`` is replaced atomically. A resumed
run reloads the optimizer's state and continues with the next generation, which gives exactly
the result of an uninterrupted run (the optimizers draw each generation's noise from
``(seed, generation)``, and fitness tasks are a function of the generation).

Inside an initialised ``torch.distributed`` process group (a script launched with ``torchrun``
that called :func:`metaphi.loops.distributed.init_from_env`), every rank runs this same loop:
the candidates are spread over the ranks, the fitnesses gathered, and rank 0 alone writes.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from ..meta.evolution import to_plain
from .checkpoint import atomic_write_text, load_checkpoint, save_checkpoint

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


class AskTell(Protocol):
    """What :func:`population_train` needs from a meta-optimizer."""

    generation: int

    def ask(self) -> list[Any]: ...
    def tell(self, candidates: list[Any], fitnesses: list[float]) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class PopulationResult:
    """``best``/``best_fitness``: the best candidate evaluated (on its own generation's tasks);
    ``center``: the optimizer's current estimate (ES/CMA-ES mean, REINFORCE's mode), usually the
    better φ to deploy when fitness tasks are resampled; ``center_average``: the mean of the
    centers of generations ``>= average_from`` (None without ``average_from``);
    ``history``: one dict per generation."""

    best: Any
    best_fitness: float
    center: Any
    generations: int
    evaluations: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    center_average: Any = None


def _read_metrics(path: Path, upto: int) -> list[dict[str, Any]]:
    """Lines of generations < ``upto`` (a run killed between the log line and the checkpoint
    leaves one line too many; it is dropped and redone)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if int(row["generation"]) < upto:
                rows.append(row)
    return rows


def population_train(optimizer: AskTell, fitness_fn: Callable[[Any, int], float],
                     generations: int, out_dir: str | Path, resume: bool = False,
                     workers: int | None = None, progress: bool = True,
                     config: dict[str, Any] | None = None,
                     on_generation: Callable[[dict[str, Any]], None] | None = None,
                     start_method: str = "spawn",
                     max_seconds: float | None = None,
                     checkpoint_seconds: float = 10.0,
                     average_from: int | None = None) -> PopulationResult:
    """Run ``optimizer`` for ``generations`` generations in total (counting those already in
    the checkpoint when ``resume``), minimising ``fitness_fn(phi, generation)``.

    ``workers``: parallel fitness processes (default: all cores; 0 or 1: in this process).
    ``config``: plain data saved in the checkpoint; a resume with a different config is refused,
    so a run is never continued with other settings by mistake.
    ``on_generation``: called with each generation's log row (e.g. to print or plot).
    ``max_seconds``: stop after the first generation that ends past this wall time (counting
    the time already in a resumed checkpoint); ``generations`` then records those done.
    ``checkpoint_seconds``: the checkpoint is written (atomically) at the first generation that
    ends this long after the previous one, and after the last generation; a killed run resumes
    from it and replays the generations after it exactly.
    ``average_from``: also keep the running mean of the centers after each generation from this
    one on (Polyak-Ruppert averaging; vector φ only). With resampled fitness tasks the center
    ends in a noise-driven random walk around the optimum, and the walk's average lies closer
    to it than its last position, at no extra fitness evaluation.
    In a distributed run (see the module docstring) ``workers`` counts local processes per
    rank (default 1).
    """
    from tqdm.auto import tqdm

    from ..meta.fitness import PopulationEvaluator
    from . import distributed as D

    if generations < 1:
        raise ValueError(f"generations must be >= 1, got {generations}")
    if average_from is not None:
        if not 0 <= average_from < generations:
            raise ValueError(f"average_from must be a generation in [0, {generations}), got "
                             f"{average_from}")
        if not isinstance(getattr(optimizer, "center", None), np.ndarray):
            raise ValueError("average_from averages a flat vector φ (ES or CMA-ES without a "
                             "search space); this optimizer's center is not one")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, metrics_path = out / CHECKPOINT, out / METRICS
    ctx = D.current()
    config = to_plain(dict(config or {}))
    start, seconds0 = 0, 0.0

    def read_state() -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        # Rank 0 reads (and trims the log); the other ranks get the same state and history.
        state = None
        if resume and ckpt_path.is_file():
            state = load_checkpoint(ckpt_path)
            if state.get("config") != config:
                raise ValueError(f"{ckpt_path} was written with config {state.get('config')}, "
                                 f"this run has {config}; resume with the same settings or use "
                                 "a new out_dir")
        elif ckpt_path.is_file() and not resume:
            raise FileExistsError(f"{ckpt_path} exists; pass resume=True to continue that run, "
                                  "or choose a new out_dir")
        rows = _read_metrics(metrics_path, int(state["generation"]) if state else 0)
        atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
        return state, rows

    state, history = D.on_main(ctx, read_state)
    avg_sum, avg_n = None, 0  # running sum of the centers of generations >= average_from
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        start, seconds0 = int(state["generation"]), float(state["seconds"])
        if state.get("average_from") != average_from:
            raise ValueError(f"{ckpt_path} was written with average_from="
                             f"{state.get('average_from')}, this run has {average_from}; resume "
                             "with the same setting or use a new out_dir")
        if state.get("avg_sum") is not None:
            avg_sum, avg_n = np.asarray(state["avg_sum"], dtype=np.float64), int(state["avg_n"])
        if optimizer.generation != start:
            raise ValueError(f"checkpoint says generation {start} but the optimizer state is at "
                             f"{optimizer.generation}; the checkpoint is inconsistent")
    if start >= generations:
        raise ValueError(f"the checkpoint already has {start} generations; ask for more than "
                         f"{start} to continue")

    t_start = last_save = time.perf_counter()
    done = start
    bar = tqdm(total=generations, initial=start, disable=not (progress and ctx.is_main),
               desc="generations", unit="gen", dynamic_ncols=True)
    evaluator = (D.DistributedPopulationEvaluator(fitness_fn, ctx, workers, start_method)
                 if ctx.enabled else PopulationEvaluator(fitness_fn, workers, start_method))
    with evaluator as evaluate:
        for gen in range(start, generations):
            t0 = time.perf_counter()
            candidates = optimizer.ask()
            fitnesses = evaluate(candidates, gen)
            optimizer.tell(candidates, fitnesses)
            if average_from is not None and gen >= average_from:
                c = np.asarray(optimizer.center, dtype=np.float64)  # type: ignore[attr-defined]
                avg_sum, avg_n = (c.copy() if avg_sum is None else avg_sum + c), avg_n + 1
            finite = [f for f in fitnesses if f == f and abs(f) != float("inf")]
            best_so_far = optimizer.best[1]  # type: ignore[attr-defined]
            row = {"generation": gen,
                   "best_fitness": min(finite) if finite else None,
                   "mean_fitness": sum(finite) / len(finite) if finite else None,
                   "worst_fitness": max(finite) if finite else None,
                   "non_finite": len(fitnesses) - len(finite),
                   "best_so_far": best_so_far,
                   "evaluations": int(optimizer.evaluations),  # type: ignore[attr-defined]
                   "spread": getattr(optimizer, "spread", None),
                   "popsize": len(candidates),  # changes where CMA-ES restarts (IPOP)
                   "seconds": round(time.perf_counter() - t0, 4)}
            history.append(row)
            # rank 0's clock decides, so all ranks stop after the same generation
            stop = max_seconds is not None and D.broadcast_object(
                seconds0 + time.perf_counter() - t_start >= max_seconds, ctx)
            if ctx.is_main:
                with metrics_path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                # Generations can take milliseconds: a checkpoint (with fsync) every
                # ``checkpoint_seconds`` and at the end; a resume replays from the last one.
                if (stop or gen + 1 == generations
                        or time.perf_counter() - last_save >= checkpoint_seconds):
                    save_checkpoint(ckpt_path, {
                        "optimizer": optimizer.state_dict(), "generation": gen + 1,
                        "config": config, "seconds": seconds0 + time.perf_counter() - t_start,
                        "best": to_plain(optimizer.best[0]), "best_fitness": best_so_far,  # type: ignore[attr-defined]
                        "average_from": average_from, "avg_n": avg_n,
                        "avg_sum": None if avg_sum is None else avg_sum.tolist()})
                    last_save = time.perf_counter()
            bar.set_postfix(best=f"{row['best_fitness']:.4g}" if finite else "nan",
                            mean=f"{row['mean_fitness']:.4g}" if finite else "nan",
                            **({} if row["spread"] is None else {"spread": f"{row['spread']:.3g}"}))
            bar.update(1)
            if on_generation is not None:
                on_generation(row)
            done = gen + 1
            if stop:
                break
    bar.close()
    best, best_f = optimizer.best  # type: ignore[attr-defined]
    return PopulationResult(best=best, best_fitness=float(best_f),
                            center=optimizer.center,  # type: ignore[attr-defined]
                            generations=done,
                            evaluations=int(optimizer.evaluations),  # type: ignore[attr-defined]
                            seconds=seconds0 + time.perf_counter() - t_start, history=history,
                            center_average=None if avg_sum is None else avg_sum / avg_n)


POPULATION_KEYS = {"meta_optimizer", "space", "optimizer", "fitness", "generations", "workers",
                   "seed", "max_seconds"}


def population_from_config(cfg: dict[str, Any]) -> tuple[AskTell, Callable[[Any, int], float]]:
    """(optimizer, fitness) from a plain run config, for ``metaphi train`` configs::

        {"meta_optimizer": "reinforce",            # es | cmaes | reinforce
         "seed": 0,
         "space": {"inner_lr": {"type": "float", "low": 1e-3, "high": 0.5, "log": true},
                   "inner_steps": {"type": "categorical", "choices": [1, 2, 3, 5]}},
         "optimizer": {"popsize": 8, "lr": 0.2},   # keyword arguments of the optimizer
         "fitness": {"phi": "hyper", "train_steps": 40, "n_tasks": 25,
                     "family": {...}, "learner": {...}},   # FitnessSpec fields + n_tasks
         "generations": 30, "workers": 2}

    Without a ``space``, φ is the learner's flat initialisation and ``log(inner_lr)``
    (``fitness.phi`` must then be ``"vector"``), starting from the learner's seeded weights.
    """
    from ..meta import FitnessSpec, Space, TaskFitness, build_learner, make_optimizer, phi_vector

    unknown = set(cfg) - POPULATION_KEYS
    if unknown:
        raise ValueError(f"unknown population config keys {sorted(unknown)}; allowed: "
                         f"{sorted(POPULATION_KEYS)}")
    if "meta_optimizer" not in cfg:
        raise ValueError("population config needs meta_optimizer: es, cmaes or reinforce")
    seed = int(cfg.get("seed", 0))
    fit_cfg = dict(cfg.get("fitness", {}))
    n_tasks = int(fit_cfg.pop("n_tasks", 25))
    resample = bool(fit_cfg.pop("resample", True))
    try:
        spec = FitnessSpec(**{"seed": seed, **fit_cfg})
    except TypeError as e:
        raise ValueError(f"bad fitness config: {e}; allowed keys are FitnessSpec's fields "
                         "(family, learner, phi, learn_inner_lr, train_steps, train_meta_batch, "
                         "train_outer_lr, seed) plus n_tasks and resample") from e
    space = Space.from_config(cfg["space"]) if cfg.get("space") else None
    x0 = None
    if space is None:
        if spec.phi != "vector":
            raise ValueError("fitness.phi='hyper' needs a search space; give `space`")
        x0 = phi_vector(build_learner(spec.learner, seed=spec.seed), spec.learn_inner_lr)
    elif spec.phi != "hyper":
        raise ValueError("a search space sets learner settings: use fitness.phi='hyper'")
    opt_kw = dict(cfg.get("optimizer", {}))
    if opt_kw.get("schedule") == "cosine" and "horizon" not in opt_kw:
        opt_kw["horizon"] = int(cfg.get("generations", 20))  # anneal over the whole run
    try:
        opt = make_optimizer(cfg["meta_optimizer"], space=space, x0=x0, seed=seed, **opt_kw)
    except TypeError as e:
        raise ValueError(f"bad optimizer settings for {cfg['meta_optimizer']!r}: {e}") from e
    return opt, TaskFitness(spec, n_tasks=n_tasks, seed=seed, resample=resample)


def population_run(cfg: dict[str, Any], out_dir: str | Path, resume: bool = False,
                   progress: bool = True) -> PopulationResult:
    """:func:`population_train` driven by a plain config (see :func:`population_from_config`);
    the config is stored in the checkpoint so that a resume with other settings is refused."""
    opt, fitness = population_from_config(cfg)
    return population_train(opt, fitness, int(cfg.get("generations", 20)), out_dir, resume=resume,
                            workers=cfg.get("workers"), progress=progress, config=cfg,
                            max_seconds=cfg.get("max_seconds"))
