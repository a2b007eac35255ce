"""Paired speed-ups on a noisy machine: the per-task loop, the textbook loop and task threads,
measured in turns in one process.

This machine's speed drifts by up to ~30% over minutes (other tenants), so a ratio of two
numbers measured minutes apart (as in ``throughput.py``, one process per configuration for
clean peak-memory numbers) can be off by that much. Here every learner's paths run in turns
(loop, threads[, plain], loop, threads, ...) on the same tasks, and the table gives the median
of each path and the median of the per-round ratios.

    python benchmarks/throughput_paired.py [--rounds 5] [--threads 2]

Setting: Conv-4 (64 filters), 1x28x28, 5-way 1-shot, 15 queries per class, meta-batch 32 (as in
``throughput.py``). "threads" runs the meta-batch's tasks on ``--threads`` threads with one
intra-op thread each (metaphi's CPU default); "loop" runs one task at a time with ``--threads``
intra-op threads; "plain" is the textbook second-order MAML loop written without metaphi.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402
from throughput import GRADIENT, METRIC, PlainMAML, build, random_tasks  # noqa: E402


def timed(fn, tasks) -> float:
    t0 = time.perf_counter()
    fn(tasks)
    return len(tasks) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--meta-batch", type=int, default=32)
    ap.add_argument("--learners", nargs="+", default=list(GRADIENT + METRIC))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    tasks = random_tasks(args.meta_batch)
    rows, raw = [], {}
    for learner in args.learners:
        for steps in ((1, 5) if learner in GRADIENT else (0,)):
            torch.manual_seed(0)
            lrn = build(learner, steps, batched=False)
            paths = {"loop": 1, "threads": args.threads}

            def run(path: str):
                if path == "plain":
                    return plain.meta_grads
                lrn.task_threads = paths[path]
                return lrn.meta_grads

            order = ["loop", "threads"]
            if learner == "maml":
                torch.manual_seed(0)
                plain = PlainMAML(steps)
                order.append("plain")
            for p in order:  # warm-up
                run(p)(tasks)
            speeds: dict[str, list[float]] = {p: [] for p in order}
            for _ in range(args.rounds):
                for p in order:
                    speeds[p].append(timed(run(p), tasks))
            ratio = [t / l for t, l in zip(speeds["threads"], speeds["loop"])]
            med = {p: statistics.median(v) for p, v in speeds.items()}
            row = [learner, steps or "–", round(med["loop"], 2), round(med["threads"], 2),
                   round(statistics.median(ratio), 2),
                   f"{min(ratio):.2f}-{max(ratio):.2f}"]
            if "plain" in med:
                pr = [t / p for t, p in zip(speeds["threads"], speeds["plain"])]
                row += [round(med["plain"], 2), round(statistics.median(pr), 2)]
            else:
                row += ["–", "–"]
            rows.append(row)
            raw[f"{learner}/{steps}"] = speeds
            print(row, flush=True)
    write_result(
        "throughput_paired", "Task threads vs the per-task loop, measured in turns (Conv-4)",
        [{"title": f"tasks/s, median of {args.rounds} rounds (paths in turns on the same 32 "
                   f"tasks), {args.threads} CPU threads",
          "columns": ["learner", "inner steps", "loop tasks/s", "threads tasks/s",
                      "threads / loop (median)", "threads / loop (range)", "plain tasks/s",
                      "threads / plain (median)"],
          "rows": rows,
          "notes": "loop = metaphi's per-task loop, one task at a time; threads = the same "
                   f"tasks on {args.threads} threads side by side, one intra-op thread each "
                   "(metaphi's default on CPU; same meta-gradient, bitwise, as a 1-thread loop: "
                   "tests/test_task_threads.py); plain = second-order MAML as a textbook loop "
                   "without metaphi (learn2learn/higher style)."}],
        time.perf_counter() - t_start, raw=raw, topic="throughput")


if __name__ == "__main__":
    main()
