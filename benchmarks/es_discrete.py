"""REINFORCE picks MAML's inner steps, inner learning rate and hidden width on sinusoid
regression; the chosen configuration and the default are then meta-trained equally long.

Space (config paths): learner.inner_steps ∈ {1, 2, 3, 5}, learner.inner_lr log-uniform in
[1e-3, 0.5], model.hidden ∈ {[20, 20], [40, 40], [80, 80]} (a 1-width-width-1 MLP). The
fitness of a configuration is its mean post-adaptation query MSE on ``--fitness-tasks`` tasks
(fresh each generation, shared by the generation) after ``--fitness-train-steps`` outer Adam
steps of second-order MAML; no gradient reaches these choices. Then the policy's mode and the
default (1 step, lr 0.01, width 40) are each meta-trained for ``--final-steps`` outer steps on
the same task stream and scored on the same 1000 meta-test tasks (K = 10).

    nice -n 10 python benchmarks/es_discrete.py --budget-seconds 360
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from metaphi.loops.population import PopulationOptions, population_train  # noqa: E402
from metaphi.meta import REINFORCE, Space, TaskFitness  # noqa: E402
from metaphi.meta.fitness import meta_train_briefly  # noqa: E402
from metaphi.runs import validate_config  # noqa: E402
from metaphi.runs.population import fitness_spec  # noqa: E402
from metaphi.tasks import fixed_tasks  # noqa: E402

DEFAULT = {"learner.inner_steps": 1, "learner.inner_lr": 0.01, "model.hidden": [40, 40]}
SPACE_CONFIG = {"learner.inner_steps": {"type": "categorical", "choices": [1, 2, 3, 5]},
                "learner.inner_lr": {"type": "float", "low": 1e-3, "high": 0.5, "log": True},
                "model.hidden": {"type": "categorical", "choices": [[20, 20], [40, 40], [80, 80]]}}
SPACE = Space.from_config(SPACE_CONFIG)


def meta_test(learner, family, seed: int, n: int) -> tuple[float, float]:
    losses, _ = learner.eval_episodes(list(fixed_tasks(family, seed, "test", n)))
    losses = losses.double().numpy()
    return float(losses.mean()), float(1.96 * losses.std(ddof=1) / math.sqrt(n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget-seconds", type=float, default=360.0, help="wall time of the search")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--popsize", type=int, default=8)
    ap.add_argument("--policy-lr", type=float, default=0.2)
    ap.add_argument("--fitness-tasks", type=int, default=25)
    ap.add_argument("--fitness-train-steps", type=int, default=40)
    ap.add_argument("--fitness-meta-batch", type=int, default=5)
    ap.add_argument("--final-steps", type=int, default=2000)
    ap.add_argument("--final-meta-batch", type=int, default=10)
    ap.add_argument("--outer-lr", type=float, default=1e-3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--test-tasks", type=int, default=1000)
    ap.add_argument("--name", default="es_discrete")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_all = time.perf_counter()

    # sinusoid K=10 (10 queries), MAML on an MLP, second order; a candidate φ overrides
    # SPACE's config paths and is meta-trained for fitness.train_steps before it is scored
    spec = fitness_spec(validate_config({
        "task": {"source": "sinusoid", "k_shot": 10, "n_query": 10},
        "model": {"name": "mlp", "hidden": DEFAULT["model.hidden"]},
        "learner": {"name": "maml", "inner_lr": DEFAULT["learner.inner_lr"],
                    "inner_steps": DEFAULT["learner.inner_steps"]},
        "meta_optimizer": {"name": "reinforce"},
        "fitness": {"phi": "hyper", "train_steps": args.fitness_train_steps,
                    "train_meta_batch": args.fitness_meta_batch, "train_lr": args.outer_lr},
        "space": SPACE_CONFIG, "seed": args.seed}))
    fitness = TaskFitness(spec, n_tasks=args.fitness_tasks, seed=args.seed)
    rf = REINFORCE(SPACE, popsize=args.popsize, lr=args.policy_lr, seed=args.seed)
    with tempfile.TemporaryDirectory() as d:
        res = population_train(rf, fitness, d, PopulationOptions(
            10**6, workers=args.workers, progress=False, max_seconds=args.budget_seconds,
            config={"bench": args.name}))
    chosen = SPACE.validate(res.center)
    probs = rf.probabilities()

    family = spec.source
    rows, detail = [], {}
    for label, cfg in (("default", DEFAULT), ("REINFORCE choice (policy mode)", chosen)):
        learner = spec.make_learner(cfg)
        before, _ = meta_test(learner, family, args.seed, args.test_tasks)
        t0 = time.perf_counter()
        meta_train_briefly(learner, spec.train_source, args.final_steps, args.final_meta_batch,
                           args.outer_lr, args.seed)
        secs = time.perf_counter() - t0
        mse, ci = meta_test(learner, family, args.seed, args.test_tasks)
        search_f = fitness(cfg, 0)  # the search's own score, on generation 0's tasks
        rows.append([label, cfg["learner.inner_steps"], round(cfg["learner.inner_lr"], 4),
                     cfg["model.hidden"][0],
                     round(search_f, 3), round(before, 3), f"{mse:.3f} ± {ci:.3f}", round(secs, 1)])
        detail[label] = {"config": cfg, "mse": mse, "ci95": ci, "mse_before": before,
                         "search_fitness_gen0": search_f, "train_seconds": secs}
    d_mse, c_mse = detail["default"]["mse"], detail["REINFORCE choice (policy mode)"]["mse"]
    table = {
        "title": "Sinusoid 10-shot: configuration chosen by REINFORCE vs the default",
        "columns": ["configuration", "inner steps", "inner lr", "width",
                    f"search fitness (gen-0 tasks, {args.fitness_train_steps} steps)",
                    "meta-test MSE before meta-training",
                    f"meta-test MSE ± 95% CI after {args.final_steps} steps", "meta-train s"],
        "rows": rows,
        "notes": (f"Search: REINFORCE, popsize {args.popsize}, policy Adam lr {args.policy_lr}, "
                  f"{res.generations} generations, {res.evaluations} fitness evaluations, "
                  f"{res.seconds:.0f} s with {args.workers} workers. Each fitness evaluation "
                  f"meta-trains the candidate for {args.fitness_train_steps} outer steps "
                  f"(meta-batch {args.fitness_meta_batch}) and scores it on "
                  f"{args.fitness_tasks} tasks. Final meta-training: {args.final_steps} outer "
                  f"steps, meta-batch {args.final_meta_batch}, Adam lr {args.outer_lr}, same task "
                  f"stream for both. Chosen/default meta-test MSE = {c_mse / d_mse:.2f}. Final "
                  f"policy probabilities: {probs}.")}
    write_result(args.name, "REINFORCE picks inner steps, inner lr and width (sinusoid)", [table],
                 time.perf_counter() - t_all,
                 notes=("Sinusoid instead of Omniglot 5-way 1-shot: the machine is a shared 2-core "
                        "CPU, where scoring each Omniglot candidate by meta-training a Conv-4 does "
                        "not fit the 15-minute budget. Run with nice -n 10."),
                 search={"generations": res.generations, "evaluations": res.evaluations,
                         "seconds": res.seconds, "best": res.best, "best_fitness": res.best_fitness,
                         "chosen": chosen, "probabilities": probs,
                         "curve": [[h["generation"], h["mean_fitness"], h["best_fitness"]]
                                   for h in res.history]},
                 results=detail, topic="population-search")
    print(table["rows"], table["notes"])


if __name__ == "__main__":
    main()
