"""Time of one ES generation's fitness on the sinusoid MLP: ``evaluate_population`` scoring the
whole population in one closed-form pass vs a few candidates at a time (cache-sized chunks,
the default), for the population sizes and task counts of the ES benchmarks.

    python benchmarks/es_fitness_speed.py [--threads 2] [--reps 5]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

import metaphi.meta.batched_fitness as fitness_mod  # noqa: E402
from metaphi.meta import phi_vector  # noqa: E402
from metaphi.meta.batched_fitness import evaluate_population  # noqa: E402
from metaphi.meta.fitness import fitness_task_seeds  # noqa: E402
from metaphi.runs import validate_config  # noqa: E402
from metaphi.runs.population import fitness_spec  # noqa: E402

CASES = [([40, 40], 50, 25), ([40, 40], 100, 400), ([40, 40], 400, 400), ([20, 20], 200, 400),
         ([40, 40], 100, 1600)]


def seconds(phis, seeds, spec, chunk_elements: int, reps: int) -> tuple[float, np.ndarray]:
    fitness_mod._CHUNK_ELEMENTS = chunk_elements
    out = np.array(evaluate_population(phis, seeds, spec))  # warm-up (and the numbers)
    start = time.perf_counter()
    for _ in range(reps):
        evaluate_population(phis, seeds, spec)
    return (time.perf_counter() - start) / reps, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0, default, rows = time.perf_counter(), fitness_mod._CHUNK_ELEMENTS, []
    for hidden, popsize, n_tasks in CASES:
        # sinusoid K=10, 10 queries; MAML on the MLP, inner lr 0.01, 1 inner step; seed 0
        spec = fitness_spec(validate_config({
            "task": {"source": "sinusoid", "k_shot": 10, "n_query": 10},
            "model": {"name": "mlp", "hidden": hidden},
            "learner": {"name": "maml", "inner_lr": 0.01, "inner_steps": 1},
            "meta_optimizer": {"name": "cmaes"}, "seed": 0}))
        base = phi_vector(spec.make_learner(None))
        rng = np.random.default_rng(0)
        phis = [base + 0.01 * rng.standard_normal(base.shape) for _ in range(popsize)]
        seeds = fitness_task_seeds(0, 0, n_tasks)
        whole, a = seconds(phis, seeds, spec, 1 << 62, args.reps)
        chunked, b = seconds(phis, seeds, spec, default, args.reps)
        rows.append(["-".join(map(str, [1, *hidden, 1])), popsize, n_tasks, round(whole, 4),
                     round(chunked, 4), round(whole / chunked, 1),
                     f"{float(np.max(np.abs(a - b) / np.abs(a))):.1e}"])
        print(rows[-1], flush=True)
    fitness_mod._CHUNK_ELEMENTS = default
    write_result(
        "es_fitness_speed", "ES fitness of one generation: whole population vs cache-sized chunks",
        [{"title": f"sinusoid K=10, 10 queries, one inner step, closed form; {args.threads} "
                   f"torch thread(s), mean of {args.reps} generations",
          "columns": ["MLP", "popsize", "tasks", "whole population s", "chunked s", "speed-up",
                      "max rel. difference"],
          "rows": rows,
          "notes": f"Chunks hold at most {default} elements per (candidates, tasks, points, "
                   "width) activation tensor (metaphi.meta.batched_fitness._CHUNK_ELEMENTS). Both "
                   "columns use the same fused kernel; only the chunking differs."}],
        time.perf_counter() - t0, topic="population-search")


if __name__ == "__main__":
    main()
