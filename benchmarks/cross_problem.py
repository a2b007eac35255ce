"""Cross-problem training, leave-one-family-out regression: for each regression family, MAML
meta-trained on the other six families (cross-problem φ) against MAML meta-trained on that
family (in-family ceiling) and against a random initialisation adapted with the same inner
steps (no-meta-learning floor), all meta-tested on the same 1000 tasks of that family.

    flock /work/notes/cpu.lock nice -n 5 python benchmarks/cross_problem.py [--steps 5000] \
        [--families sine line ...] [--workers 2]

Runs are the `regression-lofo-<family>` and `regression-<family>` presets (budget in outer
steps, the same for every run); folders under benchmarks/_work/cross_problem/.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402
from task_runs import WORK, ci, fmt, parallel, scores, train  # noqa: E402

from metaphi.runs import get_preset  # noqa: E402
from metaphi.tasks.regression import FAMILIES  # noqa: E402

LABEL = {"maml": "MAML", "fomaml": "first-order MAML", "metasgd": "Meta-SGD"}


def floor_scores(family: str, steps: int, n: int, learner: str = "maml") -> np.ndarray:
    """The floor: φ at its random initialisation (the run's seed), adapted on each support set
    with the runs' inner steps, on the same tasks as the runs' meta-test."""
    import torch

    from metaphi.loops.evaluate import task_scores
    from metaphi.runs import validate_config
    from metaphi.runs.build import build_learner, build_sources
    from metaphi.runs.config import apply_overrides
    from metaphi.tasks.sources import fixed_tasks

    torch.set_num_threads(1)
    cfg = validate_config(apply_overrides(get_preset(f"regression-{family}"),
                                          [f"steps={steps}", f"learner.name={learner}"]))
    learner = build_learner(cfg).eval()
    tasks = fixed_tasks(build_sources(cfg).test, cfg.seed + 1, "test", n)
    return np.array([m for m, _ in task_scores(learner, tasks)])


def one(family: str, kind: str, steps: int, n: int,
        learner: str = "maml") -> tuple[str, str, np.ndarray, float]:
    """(family, kind, per-task MSEs, train seconds) of one run (or the floor)."""
    if kind == "floor":
        return family, kind, floor_scores(family, steps, n, learner), 0.0
    name = f"regression-lofo-{family}" if kind == "cross" else f"regression-{family}"
    out = WORK / "cross_problem" / (name if learner == "maml" else f"{name}+{learner}")
    res = train(get_preset(name), [f"steps={steps}", f"learner.name={learner}"], out)
    return family, kind, scores(out, n=n), res["train_seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", nargs="+", default=list(FAMILIES))
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--learner", default="maml", choices=["maml", "fomaml", "metasgd"],
                    help="the MAML-family learner of every run (the presets' is maml)")
    ap.add_argument("--name", default="cross_problem_regression")
    args = ap.parse_args()
    t0 = time.perf_counter()
    jobs = [(f, k, args.steps, args.tasks, args.learner) for f in args.families
            for k in ("cross", "ceiling", "floor")]
    got = {(f, k): (s, sec) for f, k, s, sec in parallel(one, jobs, args.workers)}
    rows, details, met = [], {}, []
    for f in args.families:
        floor, cross, ceil = (got[(f, k)][0] for k in ("floor", "cross", "ceiling"))
        fl, cr, ce = ci(floor), ci(cross), ci(ceil)
        closed = (fl["mean"] - cr["mean"]) / (fl["mean"] - ce["mean"])
        diff = ci(cross - ceil)
        met.append(closed >= 0.5)
        rows.append([f, fmt(fl, 3), fmt(cr, 3), fmt(ce, 3), f"{diff['mean']:+.3f} ± {diff['ci95']:.3f}",
                     f"{closed:.2f}", "yes" if closed >= 0.5 else "no",
                     round(got[(f, "cross")][1] / 60, 1), round(got[(f, "ceiling")][1] / 60, 1)])
        details[f] = {"floor": fl, "cross_problem": cr, "in_family": ce,
                      "cross_minus_in_family": diff, "gap_closed": closed}
        print(rows[-1], flush=True)
    _figure(args.families, details, Path(__file__).resolve().parent / "figures"
            / f"{args.name}.png", LABEL[args.learner])
    others = {f: [g for g in FAMILIES if g != f] for f in args.families}
    write_result(
        args.name, "Leave-one-family-out regression: cross-problem φ vs in-family φ vs random init"
        + ("" if args.learner == "maml" else f" ({LABEL[args.learner]})"),
        [{"title": f"Meta-test MSE ± 95% CI on {args.tasks} tasks of the held-out family "
                   "(the same tasks in each column)",
          "columns": ["held-out family", "floor: random init", "cross-problem φ (other 6 families)",
                      "ceiling: in-family φ", "cross − in-family (paired)", "gap closed",
                      "target ≥ 0.5 met", "cross train min", "in-family train min"],
          "rows": rows,
          "notes": (
              f"{LABEL[args.learner]}, MLP 1-40-40-1, 10-shot, inner SGD lr 0.01 "
              f"{'(initial value of the meta-learned per-parameter lrs) ' if args.learner == 'metasgd' else ''}"
              "with 5 steps at meta-train and "
              f"meta-test, Adam 1e-3, meta-batch 25, {args.steps} outer steps for every run "
              "(presets regression-lofo-<family> and regression-<family>), φ chosen on 200 "
              "meta-val tasks of the meta-train families every 1000 steps. Floor: the runs' "
              "initial φ (seed 0) adapted with the same 5 inner steps, no meta-training. Gap "
              "closed = (floor − cross) / (floor − ceiling): the share of what meta-learning "
              "on the family itself gains that meta-learning on the other families already "
              "gains. Families and parameter ranges: metaphi.tasks.regression. Wall times "
              "were measured on a shared 2-core machine, two runs at a time.")}],
        time.perf_counter() - t0, topic="task-construction",
        question="Does φ meta-trained on other problem families transfer to a family it "
                 "has never seen?",
        figures=[f"{args.name}.png"], details=details, held_out_from=others,
        target_met_on_every_family=all(met), steps=args.steps)


def _figure(families: list[str], details: dict, path: Path, learner: str = "MAML") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.3 * len(families) + 2, 3.6))
    width = 0.27
    for i, (key, label, color) in enumerate([("floor", "random init (floor)", "#999999"),
                                             ("cross_problem", "cross-problem φ", "#4c72b0"),
                                             ("in_family", "in-family φ (ceiling)", "#55a868")]):
        m = [details[f][key]["mean"] for f in families]
        e = [details[f][key]["ci95"] for f in families]
        ax.bar(np.arange(len(families)) + (i - 1) * width, m, width, yerr=e, capsize=3,
               label=label, color=color)
    ax.set_xticks(range(len(families)))
    ax.set_xticklabels(families)
    ax.set_yscale("log")
    ax.set_ylabel("meta-test MSE (log scale)")
    ax.set_title(f"Leave-one-family-out regression ({learner}, 10-shot)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
