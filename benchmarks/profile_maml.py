"""Where second-order MAML's time goes on CPU: torch.profiler's top operators for one outer step
of the per-task loop (Conv-4, 64 filters, 5-way 1-shot, 15 queries/class, meta-batch 32).

    python benchmarks/profile_maml.py [--threads 2] [--steps 1]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402
from throughput import build, random_tasks, to_channels_last  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = []
    for cl in (False, True):
        torch.manual_seed(0)
        lrn = build("maml", args.steps, batched=False, task_threads=1)
        tasks = random_tasks(32)
        if cl:
            lrn = to_channels_last(lrn, tasks)
        lrn.meta_grads(tasks)  # warm-up
        with torch.profiler.profile() as prof:
            lrn.meta_grads(tasks)
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events)
        for e in events[:args.top]:
            rows.append(["channels_last" if cl else "NCHW", e.key, e.count,
                         round(e.self_cpu_time_total / 1e3, 1),
                         round(100 * e.self_cpu_time_total / total, 1)])
        print(rows[-args.top:], flush=True)
    write_result(
        "profile_maml", "Where second-order MAML's time goes on CPU (torch.profiler)",
        [{"title": f"Top operators by self CPU time, one outer step, meta-batch 32, "
                   f"{args.steps} inner step(s), per-task loop, {args.threads} threads",
          "columns": ["layout", "operator", "calls", "self CPU ms", "% of step"],
          "rows": rows,
          "notes": "Self CPU time under the profiler (which adds overhead); the share of each "
                   "operator is what matters."}],
        time.perf_counter() - t0, topic="throughput")


if __name__ == "__main__":
    main()
