"""Outer-step time of a real Omniglot run with the meta-train tasks sampled in the loop vs in
DataLoader worker processes (``loader_workers``; metaphi.tasks.meta_batches).

The same preset, seed and steps for each setting, one after the other in one process; no
meta-validation (it is the same for both); the step time is the median of the per-step wall
times that metaphi.loops.meta_train logs, after a warm-up. Needs the Omniglot data
(``METAPHI_DATA``).

    python benchmarks/loader_workers.py --device cuda [--preset omniglot-maml-5w1s] [--steps 150]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from metaphi.loops.train import TrainOptions, meta_train  # noqa: E402
from metaphi.runs.build import (build_learner, build_meta_optimizer, build_sources,  # noqa: E402
                                resolve_device)
from metaphi.runs.presets import preset_config  # noqa: E402


def step_seconds(cfg, sources, workers: int, steps: int, warmup: int, device) -> dict:
    learner = build_learner(cfg).to(device)
    # the preset's meta-optimizer, its schedule over this run's steps
    opt, sched = build_meta_optimizer(cfg.model_copy(update={"steps": steps}), learner)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        meta_train(learner, sources.train, None, opt, sched, out, TrainOptions(
            steps=steps, meta_batch=cfg.meta_batch, seed=cfg.seed, checkpoint_every=10**9,
            device=device, progress=False, loader_workers=workers))
        wall = time.perf_counter() - t0
        rows = [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    t = [r["seconds"] for r in rows]
    dts = [b - a for a, b in zip(t[warmup:], t[warmup + 1:])]
    return {"median_s": statistics.median(dts), "mean_s": statistics.fmean(dts), "wall_s": wall,
            "final_loss": rows[-1]["loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="omniglot-maml-5w1s")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.warmup = min(args.warmup, args.steps // 3)  # a short check run keeps some steps
    cfg = preset_config(args.preset)
    sources = build_sources(cfg)
    t0 = time.perf_counter()
    res = {}
    for w in args.workers:
        res[w] = step_seconds(cfg, sources, w, args.steps, args.warmup, device)
        print(f"loader_workers={w}: {res[w]}", flush=True)
    base = res[args.workers[0]]["median_s"]
    rows = [[w, round(1000 * r["median_s"], 1), round(1000 * r["mean_s"], 1),
             round(base / r["median_s"], 2), round(r["final_loss"], 6)] for w, r in res.items()]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    write_result(
        args.name or f"loader_workers_{device.type}",
        f"Meta-train tasks sampled in the loop vs in worker processes ({where})",
        [{"title": f"{args.preset}, meta-batch {cfg.meta_batch}, {args.steps} outer steps per "
                   f"setting, step time = median over steps {args.warmup}..{args.steps - 1}",
          "columns": ["loader_workers", "median ms/step", "mean ms/step",
                      f"speed-up vs {args.workers[0]}", "loss at the last step"],
          "rows": rows}],
        time.perf_counter() - t0,
        notes="The loss at the last step is the same for every setting (the tasks are a pure "
              "function of seed and step, whoever samples them); 0 = sampled in the loop, "
              "n > 0 = n DataLoader worker processes, a meta-batch stacked in pinned memory "
              "and copied with non_blocking=True.",
        raw={str(k): v for k, v in res.items()}, topic="throughput")


if __name__ == "__main__":
    main()
