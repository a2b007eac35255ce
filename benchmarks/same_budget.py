"""Every learner on Omniglot 5-way 1-shot and 20-way 1-shot with the same CPU time budget per
run: the comparison papers rarely give. Each run is a real `metaphi train` of the learner's
Omniglot preset, stopped after ``--seconds`` of meta-training (``max_seconds``), validated once
at its last step and meta-tested on 1000 episodes (95% CI); φ is the last step's.

    METAPHI_DATA=/path/to/data python benchmarks/same_budget.py --seconds 180

Run alone on the machine: the budget is wall time, so other jobs would take steps away.
``--retest`` meta-tests the runs already trained under ``benchmarks/_work/same_budget`` again
(``--test-tasks`` episodes, the runs' own test seed, ``--jobs`` processes): meta-testing has no
time budget, so it may share the machine, and the table keeps the training it records.
A learner without a preset for a setting uses its 5-way 1-shot preset with ``task.n_way`` set
(the table says so).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from metaphi.runs import PRESETS, get_preset, train_run, validate_config  # noqa: E402
from metaphi.runs.config import apply_overrides  # noqa: E402
from metaphi.runs.run import test_run  # noqa: E402

LEARNERS = ("protonet", "matchingnet", "r2d2", "relationnet", "metaoptnet", "baseline",
            "baselinepp", "maml", "fomaml", "metasgd", "anil", "reptile", "mamlpp", "imaml",
            "learned_opt")
SETTINGS = {"5w1s": 5, "20w1s": 20}
WORK = Path(__file__).resolve().parent / "_work" / "same_budget"
RETEST_NOTE = (" Meta-tested again by --retest: the training (steps, train s) is the earlier run's "
               "of this command without --retest, alone on the machine; the episodes are the "
               "runs' own meta-test seed's, so the first ones are those of the earlier test.")


def config(learner: str, setting: str, seconds: float, test_tasks: int):
    name = f"omniglot-{learner}-{setting}"
    fallback = name not in PRESETS
    data = get_preset(name if not fallback else f"omniglot-{learner}-5w1s")
    over = [f"max_seconds={seconds}", "val_every=1000000000", "val_tasks=100",
            f"test_tasks={test_tasks}", "checkpoint_every=1000000000", "steps=1000000000",
            f"name={name}"]
    if fallback:
        over.append(f"task.n_way={SETTINGS[setting]}")
    if data["meta_optimizer"].get("schedule") == "cosine":
        # a cosine schedule needs the run's length; within a time budget it is unknown
        over.append("meta_optimizer.schedule=constant")
    return validate_config(apply_overrides(data, over)), fallback


def run_dir(learner: str, setting: str) -> Path:
    return WORK / f"{learner}-{setting}"


def retest(out: Path, seed: int, tasks: int, threads: int) -> dict:
    """A trained run's meta-test redone on ``tasks`` episodes."""
    torch.set_num_threads(threads)
    return test_run(out, seed=seed, n_tasks=tasks, progress=False)["meta_test"]


def run_all(args, cells: list[tuple[str, str]]) -> dict[tuple[str, str], tuple]:
    """Train and meta-test every cell, or with ``--retest`` only meta-test again."""
    done = {}
    if not args.retest:
        for cell in cells:
            cfg, fallback = config(*cell, args.seconds, args.test_tasks)
            shutil.rmtree(run_dir(*cell), ignore_errors=True)
            done[cell] = (cfg, fallback, train_run(cfg, run_dir(*cell), progress=False))
            print(*cell, done[cell][2]["meta_test"], flush=True)
        return done
    saved = {}
    for cell in cells:
        path = run_dir(*cell) / "results.json"
        if not path.exists():
            raise SystemExit(f"--retest: {path.parent} has no finished run; train it first "
                             f"(the same command without --retest)")
        saved[cell] = json.loads(path.read_text())
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch threads
    with ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
        futures = {}
        # longest meta-tests first, so the processes finish together
        for cell in sorted(cells, key=lambda c: -saved[c].get("test_seconds", 0)):
            cfg, fallback = config(*cell, args.seconds, args.test_tasks)
            futures[cell] = cfg, fallback, pool.submit(
                retest, run_dir(*cell), cfg.seed, args.test_tasks,
                max(1, args.threads // args.jobs))
        for cell in cells:
            cfg, fallback, fut = futures[cell]
            done[cell] = (cfg, fallback, {**saved[cell], "meta_test": fut.result()})
            print(*cell, done[cell][2]["meta_test"], flush=True)
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=180.0, help="meta-training time per run")
    ap.add_argument("--learners", nargs="+", default=list(LEARNERS))
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--test-tasks", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--retest", action="store_true",
                    help="meta-test the runs already trained again; no training")
    ap.add_argument("--jobs", type=int, default=1, help="--retest: processes side by side")
    ap.add_argument("--name", default="omniglot_same_budget")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0, rows, runs = time.perf_counter(), [], {}
    cells = [(learner, setting) for setting in args.settings for learner in args.learners]
    for (learner, setting), (cfg, fallback, res) in run_all(args, cells).items():
        mt = res["meta_test"]
        rows.append([setting, learner + (" (5w1s preset, n_way set)" if fallback else ""),
                     res["steps"], round(res["train_seconds"]), cfg.meta_batch,
                     f"{100 * mt['mean']:.2f} ± {100 * mt['ci95']:.2f}"])
        runs[f"{learner}-{setting}"] = {"meta_test": mt, "steps": res["steps"],
                                         "train_seconds": res["train_seconds"],
                                         "preset_fallback": fallback}
    json.dumps(runs)  # fail on anything that would not serialise before writing
    write_result(
        args.name, f"Every learner on Omniglot with {args.seconds:.0f} s of meta-training each",
        [{"title": f"Omniglot (Vinyals split), {args.seconds:.0f} s of CPU meta-training per "
                   f"run, {args.threads} threads, {args.test_tasks} meta-test episodes",
          "columns": ["setting", "learner", "outer steps done", "train s", "meta-batch",
                      "meta-test accuracy % ± 95% CI"],
          "rows": rows,
          "notes": "Each learner's Omniglot preset (its paper's settings) with max_seconds set: "
                   "training stops after the step that passes the budget; φ is the last "
                   "step's (one meta-validation at the end, not used to choose). A budget, not "
                   "the papers' protocols: learners that need many steps are far from their "
                   "published accuracy here. Cosine schedules become constant (a time budget "
                   "has no known length)." + RETEST_NOTE * args.retest}],
        time.perf_counter() - t0, topic="omniglot", runs=runs,
        question="With the same CPU time, which learner gets furthest on Omniglot?")


if __name__ == "__main__":
    main()
