"""Meta-training throughput (tasks/s) with 1 and 2 torchrun processes, and scaling efficiency.

Two cases, both second-order MAML with outer Adam and a global meta-batch of 32 tasks:

* ``sinusoid``: MLP 1-40-40-1, K = 10, 1 inner step (the task-batched path);
* ``conv4``: Conv-4 (64 filters), 5-way 1-shot, 15 queries per class, 28x28 single-channel
  images, 1 inner step at lr 0.4. The images are random tensors (the throughput does not depend
  on the pixel values; no dataset download is needed).

Each configuration is launched with ``torchrun --nproc_per_node=N`` on this machine; every
process uses one intra-op thread. Throughput is timed inside :func:`metaphi.loops.train.meta_train`
(the real loop: task sampling, meta-gradient, all-reduce, optimizer step) from the end of the
warm-up steps to the step before the last one (the last one also meta-validates), on rank 0's
clock. Scaling efficiency = tasks/s(N) / (N * tasks/s(1)).

    python benchmarks/distributed_scaling.py
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CASES = {
    # steps include the warm-up; the timed window is steps[warmup : steps - 1]
    "sinusoid": {"steps": 400, "warmup": 20, "meta_batch": 32, "repeats": 3},
    # ~5 s per step single-process on an idle core: a few steps, two runs per configuration
    "conv4": {"steps": 8, "warmup": 2, "meta_batch": 32, "repeats": 2},
}


def worker(case: str, out_json: str) -> None:
    """One rank of a run (launched by torchrun); rank 0 writes the step times."""
    import torch

    torch.set_num_threads(1)
    from metaphi.learners import MAML
    from metaphi.loops import distributed as D
    from metaphi.loops.train import TrainOptions, meta_train
    from metaphi.models import conv4, mlp
    from metaphi.tasks import SinusoidSource
    from metaphi.tasks.fewshot import TensorData, fewshot_splits

    ctx, device = D.init_from_env("cpu")
    spec = CASES[case]
    torch.manual_seed(0)
    if case == "sinusoid":
        learner = MAML(mlp(1, (40, 40), 1), loss="mse", inner_lr=0.01, inner_steps=1)
        train = val = SinusoidSource(10, 10)
    else:
        learner = MAML(conv4(5, 1, 64, 28, 4), loss="ce", inner_lr=0.4, inner_steps=1)
        g = torch.Generator().manual_seed(0)
        x = torch.rand(60 * 20, 1, 28, 28, generator=g)
        y = torch.arange(60).repeat_interleave(20)
        train, val, _ = fewshot_splits(TensorData(x, y), 5, 1, 15)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)  # constant
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as d:
        meta_train(learner, train, val, opt, sched, d, TrainOptions(
            steps=spec["steps"], meta_batch=spec["meta_batch"], seed=0, val_every=10**9,
            val_tasks=2 * ctx.world_size, checkpoint_every=10**9, device=device, progress=False,
            on_step=lambda step, rec: stamps.append(rec["seconds"])), dist=ctx)
    if ctx.is_main:
        w, last = spec["warmup"], spec["steps"] - 2  # stamps[i]: end of step i
        seconds = stamps[last] - stamps[w - 1]
        tasks = (last - w + 1) * spec["meta_batch"]
        Path(out_json).write_text(json.dumps({
            "case": case, "processes": ctx.world_size, "timed_steps": last - w + 1,
            "tasks": tasks, "seconds": seconds, "tasks_per_s": tasks / seconds,
            "phi_numbers": sum(p.numel() for p in learner.parameters())}))
    D.shutdown(ctx)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(case: str, nproc: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "r.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(Path(__file__).resolve()),
               "--worker", case, "--out-json", str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
        return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", choices=sorted(CASES), help=argparse.SUPPRESS)
    ap.add_argument("--out-json", help=argparse.SUPPRESS)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, help="runs per configuration (best kept; default: "
                    "3 for sinusoid, 2 for conv4)")
    ap.add_argument("--name", default="distributed_scaling")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.out_json)
        return
    from common import write_result

    t0 = time.perf_counter()
    load_before = os.getloadavg()
    rows, raw = [], []
    for case in CASES:
        base = None
        for n in args.procs:
            runs = [launch(case, n) for _ in range(args.repeats or CASES[case]["repeats"])]
            raw.extend(runs)
            best = max(r["tasks_per_s"] for r in runs)
            base = best if n == 1 else base
            eff = best / (n * base) if base else None
            rows.append([case, n, round(best, 1), [round(r["tasks_per_s"], 1) for r in runs],
                         None if eff is None else round(eff, 3)])
            print(rows[-1], flush=True)
    write_result(
        args.name, "Distributed meta-training: tasks/s and scaling efficiency (torchrun, gloo, CPU)",
        [{"title": "Second-order MAML, global meta-batch 32, 1 thread per process",
          "columns": ["case", "processes", "tasks/s (best)", "tasks/s (each run)",
                      "scaling efficiency"],
          "rows": rows,
          "notes": "efficiency = tasks/s(N) / (N * tasks/s(1)); timed inside meta_train on rank "
                   "0's clock, warm-up and the final (validating) step excluded"}],
        time.perf_counter() - t0,
        notes=(f"{os.cpu_count()} CPU cores; load average "
               f"{tuple(round(x, 2) for x in load_before)} before the benchmark (see "
               "machine.load_average_at_end for after; run it alone: with N processes on N "
               "cores any other job takes cores from the distributed run). No GPU was available "
               "in this session."),
        runs=raw, load_average_before=load_before, cases=CASES, topic="distributed")


if __name__ == "__main__":
    main()
