"""Shared plumbing of the task-construction benchmarks (task_poor.py, transfer_matrix.py,
cross_problem.py): real `metaphi train` runs in benchmarks/_work/<benchmark>/<run>, reused when
a finished run with the same config is there, run two at a time (one thread each) so that a
2-core machine is used fully, and paired comparisons of per-task scores."""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

# METAPHI_BENCH_WORK=DIR keeps smoke runs apart from the real ones
WORK = Path(os.environ.get("METAPHI_BENCH_WORK") or Path(__file__).resolve().parent / "_work")


def train(preset: dict[str, Any], overrides: Sequence[str], out: Path) -> dict[str, Any]:
    """Train (or reuse) a run; returns its results.json."""
    import torch

    torch.set_num_threads(1)
    from omniglot import check_same_run

    from metaphi.runs import train_run, validate_config
    from metaphi.runs.config import apply_overrides

    cfg = validate_config(apply_overrides(preset, list(overrides)))
    check_same_run(out, cfg)
    res_path = out / "results.json"
    if res_path.exists():
        res = json.loads(res_path.read_text())
        if res["steps"] >= cfg.steps:
            return res
    return train_run(cfg, out, resume=(out / "checkpoint.pt").exists(), progress=False)


def train_preset(bench: str, preset: str, steps: int) -> float:
    """Train (or reuse) a preset for ``steps`` outer steps in ``WORK/<bench>/<preset>``, its
    own meta-test cut to one task (the benchmark meta-tests it); returns its train seconds."""
    from metaphi.runs import get_preset

    res = train(get_preset(preset), [f"steps={steps}", "test_tasks=1"], WORK / bench / preset)
    return res["train_seconds"]


def train_rows(bench: str, presets: dict[str, str], steps: int, workers: int
               ) -> dict[str, float]:
    """:func:`train_preset` for each row's preset (row -> preset name), ``workers`` at a time;
    the train seconds by row."""
    secs = parallel(train_preset, [(bench, p, steps) for p in presets.values()], workers)
    return dict(zip(presets, secs))


def parallel(fn: Callable[..., Any], jobs: Sequence[tuple], workers: int) -> list[Any]:
    """``[fn(*job) for job in jobs]`` on ``workers`` processes (in this process for 1)."""
    if workers <= 1 or len(jobs) <= 1:
        return [fn(*job) for job in jobs]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, *zip(*jobs)))


def ci(values: Sequence[float] | np.ndarray, scale: float = 1.0) -> dict[str, float]:
    from metaphi.loops.evaluate import mean_ci95

    return mean_ci95(np.asarray(values, dtype=np.float64) * scale)


def fmt(s: dict[str, float], digits: int = 2) -> str:
    return f"{s['mean']:.{digits}f} ± {s['ci95']:.{digits}f}"


def scores(run_dir: Path, overrides: Sequence[str] = (), n: int = 1000, seed: int | None = None,
           batchnorm: str | None = None, on: str | None = None) -> np.ndarray:
    """Per-task meta-test metrics of a run on ``n`` tasks drawn with ``seed`` (default the
    run's seed + 1), as `metaphi test RUN [--on SOURCE] [--batchnorm B] OVERRIDES` draws
    them. The same seed gives runs with the same test source the same tasks, so they can be
    compared task by task."""
    import hashlib

    import torch

    key = json.dumps([list(overrides), n, seed, batchnorm, on])
    cache = run_dir / "bench_scores" / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.npy"
    weights = run_dir / "best.pt"
    if cache.exists() and weights.exists() and cache.stat().st_mtime > weights.stat().st_mtime:
        return np.load(cache)  # this run was scored on these tasks already
    torch.set_num_threads(1)
    from metaphi.loops.evaluate import task_scores
    from metaphi.runs.run import prepare_test
    from metaphi.tasks.sources import fixed_tasks

    _, learner, splits, seed = prepare_test(run_dir, "cpu", batchnorm, on, list(overrides), seed)
    with torch.no_grad():
        out = np.array([m for m, _ in task_scores(learner,
                                                  fixed_tasks(splits.test, seed, "test", n))])
    cache.parent.mkdir(exist_ok=True)
    np.save(cache, out)
    return out
