"""Meta-training step time on the sinusoid MLP (1-40-40-1), meta-batch 25, K=10: the per-task
loop vs the task-batched path, for every gradient-based learner; and the time of a cross-task
test over 1000 tasks (100 queries each, as in the presets) both ways.

    python benchmarks/throughput_mlp.py [--threads 1] [--reps 50]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

import metaphi.learners as L  # noqa: E402
from metaphi.loops.evaluate import evaluate  # noqa: E402
from metaphi.models import mlp  # noqa: E402
from metaphi.tasks import SinusoidSource, sample_tasks  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    tasks = sample_tasks(SinusoidSource(k_shot=10), 0, "train", 0, 25)
    test_tasks = sample_tasks(SinusoidSource(k_shot=10, n_query=100), 0, "test", 0, 1000)
    rows, eval_rows = [], []
    for name, cls, kw in (("maml", L.MAML, {}), ("fomaml", L.FOMAML, {}),
                          ("metasgd", L.MetaSGD, {}), ("anil", L.ANIL, {}),
                          ("reptile", L.Reptile, {"inner_steps": 8})):
        ms = {}
        for path in (False, True):
            torch.manual_seed(0)
            learner = cls(mlp(), loss="mse", inner_lr=0.01, batched=path, **kw)
            learner.meta_grads(tasks)
            start = time.perf_counter()
            for _ in range(args.reps):
                learner.meta_grads(tasks)
            ms[path] = (time.perf_counter() - start) / args.reps * 1e3
            start = time.perf_counter()
            res = evaluate(learner, test_tasks)
            ms[f"eval{path}"] = time.perf_counter() - start
            ms[f"mse{path}"] = res["mean"]
        eval_rows.append([name, round(ms["evalFalse"], 3), round(ms["evalTrue"], 3),
                          round(ms["evalFalse"] / ms["evalTrue"], 1),
                          f"{abs(ms['mseTrue'] - ms['mseFalse']) / ms['mseFalse']:.1e}"])
        rows.append([name, round(ms[False], 2), round(ms[True], 2), round(ms[False] / ms[True], 1),
                     round(25 / ms[True] * 1e3)])
        print(rows[-1], flush=True)
    write_result(
        "throughput_mlp", "Meta-training step time on the sinusoid MLP: loop vs task-batched",
        [{"title": f"1-40-40-1 MLP, K=10, 10 queries, meta-batch 25, {args.threads} CPU "
                   f"thread(s), mean of {args.reps} outer steps",
          "columns": ["learner", "loop ms/step", "batched ms/step", "speed-up", "batched tasks/s"],
          "rows": rows,
          "notes": "Both paths compute the same meta-gradient (tests/test_meta_gradients.py). "
                   "Reptile uses 8 inner steps."},
         {"title": "Cross-task test of 1000 sinusoid tasks (K=10, 100 queries), "
                   "metaphi.loops.evaluate.evaluate, right after the steps above",
          "columns": ["learner", "loop s", "batched s", "speed-up",
                      "relative difference of the mean MSE"],
          "rows": eval_rows,
          "notes": "Tasks reach the learner 32 at a time (Learner.eval_episodes); the batched "
                   "path adapts all of them in one pass per layer with the evaluation's inner "
                   "steps and no second-order graph."}],
        time.perf_counter() - t0, topic="throughput")


if __name__ == "__main__":
    main()
