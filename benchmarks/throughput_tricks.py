"""What else was tried for Conv-4 meta-training speed on CPU: torch.compile and bfloat16
autocast, against the plain per-task loop (second-order MAML, 5-way 1-shot, 15 queries,
meta-batch 8 to keep the run short), with the meta-gradient's relative error vs float32.

    python benchmarks/throughput_tricks.py [--threads 2] [--reps 2]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402
from throughput import random_tasks  # noqa: E402

from metaphi.learners import FOMAML, MAML  # noqa: E402
from metaphi.models import conv4  # noqa: E402


def rel_err(a, b) -> float:
    num = sum(float((a[k].float() - b[k].float()).norm() ** 2) for k in a) ** 0.5
    return num / sum(float(b[k].float().norm() ** 2) for k in b) ** 0.5


def timed(learner, tasks, reps, ctx=None):
    def step():
        if ctx is None:
            return learner.outer_grads(tasks)
        with ctx():
            return learner.outer_grads(tasks)

    grads, _ = step()  # warm-up (and compilation)
    t0 = time.perf_counter()
    for _ in range(reps):
        step()
    return grads, len(tasks) * reps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--meta-batch", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    tasks = random_tasks(args.meta_batch)
    rows = []
    for name, cls in (("maml", MAML), ("fomaml", FOMAML)):
        torch.manual_seed(0)
        learner = cls(conv4(5), inner_lr=0.4, inner_steps=1, batched=False)
        ref, base = timed(learner, tasks, args.reps)
        rows.append([name, "plain loop (fp32)", round(base, 2), 1.0, 0.0, ""])
        bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
        g, tps = timed(learner, tasks, args.reps, bf16)
        rows.append([name, "bfloat16 autocast", round(tps, 2), round(tps / base, 2),
                     f"{rel_err(g, ref):.2e}", ""])
        compiled = cls(conv4(5), inner_lr=0.4, inner_steps=1, batched=False)
        compiled.load_state_dict(learner.state_dict())
        compiled.model.compile()
        try:
            g, tps = timed(compiled, tasks, args.reps)
            rows.append([name, "torch.compile(model)", round(tps, 2), round(tps / base, 2),
                         f"{rel_err(g, ref):.2e}", ""])
        except Exception as e:  # report what happened instead of hiding it
            rows.append([name, "torch.compile(model)", "failed", "–", "–",
                         f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"])
        print(rows[-3:], flush=True)
    write_result(
        "throughput_tricks", "Other things tried for Conv-4 speed on CPU",
        [{"title": f"Conv-4 64 filters, 5-way 1-shot, 15 queries/class, meta-batch "
                   f"{args.meta_batch}, 1 inner step, {args.threads} threads, per-task loop",
          "columns": ["learner", "variant", "tasks/s", "x fp32 loop", "meta-grad rel. error",
                      "note"],
          "rows": rows,
          "notes": "Relative error = ||g - g_fp32|| / ||g_fp32|| of the whole meta-gradient."}],
        time.perf_counter() - t_start, order=22)


if __name__ == "__main__":
    main()
