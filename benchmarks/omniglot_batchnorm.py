"""ProtoNet meta-test accuracy with episode vs running BatchNorm statistics, same φ.

Snell et al.'s reference code meta-tests with ``model.eval()``: BatchNorm normalises with the
running statistics kept during meta-training. metaphi's metric learners normalise with each
episode's own statistics by default; ``learner.batchnorm=running`` estimates running
statistics for the final φ on meta-train episodes instead. This benchmark takes finished run
folders (no training), meta-tests each φ both ways on the same 1000 meta-test episodes, and
reports the paired difference:

    METAPHI_DATA=/path/to/data python benchmarks/omniglot_batchnorm.py \
        --runs benchmarks/_work/omniglot/omniglot-protonet-5w1s+trainval:5w1s ... \
        [--batchnorm-tasks 200]   (alias: --population-tasks)
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
from omniglot import COLUMN, PUBLISHED  # noqa: E402

from metaphi.loops.evaluate import mean_ci95, task_scores  # noqa: E402
from metaphi.runs.build import build_sources  # noqa: E402
from metaphi.runs.run import load_run  # noqa: E402
from metaphi.tasks.sources import fixed_tasks  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, help="RUN_DIR:SETTING, e.g. DIR:20w5s")
    ap.add_argument("--batchnorm-tasks", "--population-tasks", dest="batchnorm_tasks", type=int,
                    default=200, help="meta-train episodes for the running statistics")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="omniglot_batchnorm")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    rows, details = [], []
    for spec in args.runs:
        run_dir, setting = spec.rsplit(":", 1)
        run = Path(run_dir)
        scores, fit_seconds = {}, 0.0
        n_way, k_shot = setting[:-1].split("w")
        for mode in ("episode", "running"):
            t0 = time.perf_counter()
            # the run folders were made with episode statistics: load_run estimates the
            # running ones on meta-train episodes (and returns the learner in eval mode)
            cfg, learner = load_run(run, batchnorm=mode, overrides=[
                f"task.n_way={n_way}", f"task.k_shot={k_shot}",
                f"learner.batchnorm_tasks={args.batchnorm_tasks}"])
            fit_seconds = max(fit_seconds, time.perf_counter() - t0)
            test_source = build_sources(cfg).test
            with torch.no_grad():
                scores[mode] = np.array([m for m, _ in task_scores(
                    learner, fixed_tasks(test_source, cfg.seed, "test", cfg.test_tasks))])
        ep, run_stats = (mean_ci95(100 * scores[m]) for m in ("episode", "running"))
        diff = mean_ci95(100 * (scores["running"] - scores["episode"]))
        published = PUBLISHED[cfg.learner.name][COLUMN[setting]]
        label = f"{cfg.learner.name} [{run.name.split('+', 1)[-1]}]" if "+" in run.name else cfg.learner.name
        rows.append([label, setting, f"{ep['mean']:.2f} ± {ep['ci95']:.2f}",
                     f"{run_stats['mean']:.2f} ± {run_stats['ci95']:.2f}",
                     f"{diff['mean']:+.3f} ± {diff['ci95']:.3f}", published, ep["tasks"],
                     round(fit_seconds, 1)])
        details.append({"run": str(run), "setting": setting, "episode": ep, "running": run_stats,
                        "paired_difference": diff, "steps": cfg.steps})
        print(rows[-1], flush=True)
    table = {
        "title": "Meta-test accuracy % ± 95% CI, the same φ and the same meta-test episodes, "
                 "BatchNorm with each episode's statistics vs running statistics",
        "columns": ["learner", "setting", "episode statistics", "running statistics",
                    "paired difference (pp)", "published %", "meta-test episodes",
                    "load + estimate seconds"],
        "rows": rows,
        "notes": (f"Running statistics: per BatchNorm layer, the mean over "
                  f"{args.batchnorm_tasks} meta-train episodes of the run's own meta-train source "
                  "(as meta-trained: 60-way, train+val classes) of the batch mean and unbiased "
                  "batch variance of the layer's input with the final φ "
                  "(metaphi `learner.batchnorm=running`; PyTorch's running statistics with "
                  "momentum=None over those batches). Snell et al.'s reference code meta-tests "
                  "with model.eval(), i.e. with running statistics kept during meta-training "
                  "(momentum 0.1 over the last training episodes, φ almost fixed at the end of "
                  "the step schedule): the running column is the protocol-matched comparison "
                  "with the published numbers. No training here: φ is the run folder's best.pt "
                  "(the train+val rows of the Omniglot tables). Paired difference = mean over the "
                  "episodes of running minus episode accuracy, with its 95% CI."),
    }
    write_result(args.name, "Omniglot ProtoNet: BatchNorm statistics at meta-test",
                 [table], time.perf_counter() - t_all, topic="omniglot", details=details)


if __name__ == "__main__":
    main()
