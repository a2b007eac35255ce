"""Task augmentation in the task-poor regime: Omniglot meta-trained on the characters of only 5
or 10 background alphabets, meta-tested 5-way and 20-way 1-shot on Vinyals' test classes,
without augmentation, with each augmentation, and with the best combination.

    flock /work/notes/cpu.lock nice -n 5 python benchmarks/task_poor.py \
        --learners protonet --alphabets 5 10 [--steps protonet=1500] [--workers 2]
    flock /work/notes/cpu.lock nice -n 5 python benchmarks/task_poor.py --learners maml \
        --alphabets 5 --ways 5 --name task_poor_maml [--combo rotate+affine]

Runs are the `taskpoor-<learner>-<N>alph[-<W>w]` presets with `task.augment` overrides, the
same outer steps for every run of a learner (budget in steps); folders under
benchmarks/_work/task_poor/. The alphabet lists are metaphi.runs.task_presets
.TASK_POOR_ALPHABETS. The best combination joins the single augmentations that raised 20-way
(ProtoNet; MAML: its widest test) accuracy at the fewest alphabets, or the two best if fewer
than two did. Every run is meta-tested here on the same 1000 tasks per setting (seed 1), so
differences are also reported task by task.
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
from metaphi.runs.task_presets import TASK_POOR_ALPHABETS  # noqa: E402

SINGLE = ("rotate", "mlti", "affine")
ORDER = ("rotate", "mlti", "affine", "permute_labels")


def preset_name(learner: str, n_alph: int, ways: int) -> str:
    return f"taskpoor-{learner}-{n_alph}alph" + ("" if learner == "protonet" else f"-{ways}w")


def one(learner: str, n_alph: int, train_ways: int, augment: str, steps: int,
        test_ways: tuple[int, ...], n: int) -> tuple[tuple, dict[int, np.ndarray], float]:
    """Train one variant (or reuse it) and meta-test it on ``n`` tasks per test setting."""
    name = preset_name(learner, n_alph, train_ways)
    aug = [] if augment == "none" else augment.split("+")
    # the run's own meta-test is cut to one task: every setting is meta-tested below, on the
    # same tasks for every variant
    over = [f"steps={steps}", f"task.augment={aug}", "test_tasks=1"]
    out = WORK / "task_poor" / f"{name}+{augment}"
    res = train(get_preset(name), over, out)
    got = {w: scores(out, [f"task.n_way={w}"], n=n) for w in test_ways}
    return (learner, n_alph, augment), got, res["train_seconds"]


def combo_of(results: dict, learner: str, n_alph: int, ways: int) -> str:
    """The single augmentations that raised accuracy over none (paired mean), in ORDER; the
    two best if fewer than two did."""
    base = results[(learner, n_alph, "none")][ways]
    gains = {a: float(np.mean(results[(learner, n_alph, a)][ways] - base))
             for a in ORDER if (learner, n_alph, a) in results}
    helped = [a for a in ORDER if gains.get(a, -1) > 0]
    if len(helped) < 2:
        helped = sorted(gains, key=gains.get, reverse=True)[:2]
    return "+".join(a for a in ORDER if a in helped)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--learners", nargs="+", default=["protonet"])
    ap.add_argument("--alphabets", nargs="+", type=int, default=[5, 10])
    ap.add_argument("--ways", nargs="+", type=int, default=[5, 20],
                    help="meta-test ways (ProtoNet: one run tested at each; MAML: a run each)")
    ap.add_argument("--augments", nargs="+", default=list(SINGLE))
    ap.add_argument("--combo", default="auto", help="'auto', 'none' or a+b")
    ap.add_argument("--steps", nargs="+", default=[], metavar="LEARNER=N")
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--name", default="task_poor_omniglot")
    args = ap.parse_args()
    t0 = time.perf_counter()
    steps = {lr: get_preset(preset_name(lr, 5, 5))["steps"] for lr in args.learners}
    steps.update({k: int(v) for k, v in (s.split("=") for s in args.steps)})

    def jobs(augments: list[str]) -> list[tuple]:
        out = []
        for lr in args.learners:
            train_ways = [max(args.ways)] if lr == "protonet" else args.ways
            for a in args.alphabets:
                for w in train_ways:
                    test_ways = tuple(args.ways) if lr == "protonet" else (w,)
                    out += [(lr, a, w, aug, steps[lr], test_ways, args.tasks) for aug in augments]
        return out

    def collect(done: list, results: dict, seconds: dict) -> None:
        for key, got, sec in done:
            for w, s in got.items():
                results.setdefault(key, {})[w] = s
                seconds[key + (w,)] = sec

    results: dict = {}
    seconds: dict = {}
    collect(parallel(one, jobs(["none", *args.augments]), args.workers), results, seconds)
    combos = {}
    if args.combo != "none":
        for lr in args.learners:
            wide = max(args.ways)
            combos[lr] = (combo_of(results, lr, min(args.alphabets), wide) if args.combo == "auto"
                          else args.combo)
        todo = [j for j in jobs(sorted(set(combos.values()))) if j[3] == combos[j[0]]]
        collect(parallel(one, todo, args.workers), results, seconds)
    rows, details, checks = [], {}, []
    for (lr, a, aug), by_ways in sorted(results.items(), key=lambda kv: (
            kv[0][0], kv[0][1], ("none", *args.augments).index(kv[0][2])
            if kv[0][2] in ("none", *args.augments) else 99)):
        row = [lr, a, aug + (" (best combination)" if combos.get(lr) == aug else "")]
        for w in args.ways:
            if w not in by_ways:
                row += ["–", "–"]
                continue
            s = ci(by_ways[w], 100)
            d = ci(by_ways[w] - results[(lr, a, "none")][w], 100)
            row += [fmt(s), "–" if aug == "none" else f"{d['mean']:+.2f} ± {d['ci95']:.2f}"]
            details[f"{lr}/{a}/{aug}/{w}w1s"] = {"accuracy": s, "vs_none": d}
        train_s = max(v for k, v in seconds.items() if k[:3] == (lr, a, aug))
        rows.append(row + [round(train_s / 60, 1)])
        print(rows[-1], flush=True)
    # the target: best augmentation >= 2 points over none at the fewest alphabets, widest test,
    # confidence intervals not overlapping
    for lr in args.learners:
        a, w = min(args.alphabets), max(args.ways)
        if (lr, a, "none") not in results or w not in results[(lr, a, "none")]:
            continue
        none = ci(results[(lr, a, "none")][w], 100)
        best = max((k for k in results if k[:2] == (lr, a) and k[2] != "none"
                    and w in results[k]),
                   key=lambda k: results[k][w].mean())
        b = ci(results[best][w], 100)
        gap = b["mean"] - none["mean"]
        apart = b["mean"] - b["ci95"] > none["mean"] + none["ci95"]
        # the target is set at 5 alphabets; elsewhere the same test is for comparison only
        target = "target" if a == 5 else "the 5-alphabet target's test, for comparison"
        checks.append(f"{lr}, {a} alphabets, {w}-way 1-shot: best augmentation {best[2]} "
                      f"{b['mean']:.2f} vs none {none['mean']:.2f} ({gap:+.2f} points; CIs "
                      f"{'do not overlap' if apart else 'overlap'}); {target} >= 2 points "
                      f"with CIs apart: {'met' if gap >= 2 and apart else 'not met'}")
        print(checks[-1], flush=True)
    cols = ["learner", "alphabets", "augmentation"]
    for w in args.ways:
        cols += [f"{w}-way 1-shot %", f"Δ vs none {w}-way (paired)"]
    cols.append("train minutes")
    lists = "; ".join(f"{n}: {', '.join(TASK_POOR_ALPHABETS[n])}" for n in args.alphabets)
    write_result(
        args.name, "Task-poor Omniglot ("
        + " and ".join(str(n) for n in args.alphabets) + " alphabets): task augmentation with "
        + " and ".join({"protonet": "ProtoNet", "maml": "MAML"}.get(lr, lr) for lr in args.learners),
        [{"title": f"Meta-test accuracy % ± 95% CI on {args.tasks} tasks per setting (the same "
                   "tasks for every row); Δ: paired difference to no augmentation",
          "columns": cols, "rows": rows,
          "notes": (
              f"Meta-train classes: the characters as drawn (no rotated classes) of the first "
              f"N background alphabets in alphabetical order, leaving out Vinyals' 5 meta-val "
              f"alphabets ({lists}). No meta-validation: φ of the last step. Meta-test: "
              f"Vinyals' test classes (1692 rotated-character classes of 13 evaluation "
              f"alphabets), 5 queries per class. Conv-4 (64 filters). "
              + " ".join(f"{lr}: {steps[lr]} outer steps every run ({_episodes(lr)})."
                         for lr in args.learners)
              + " Augmentations (task.augment, metaphi.tasks.augment, defaults): rotate = each "
              "class of a task turned by a random multiple of 90 degrees; mlti = input-level "
              "task interpolation, half of the tasks mixed with a second task, lam ~ Beta(2, 2); "
              "affine = per-image rotation ±15°, shift ±10%, zoom 0.9-1.1, shear ±10°; "
              "permute_labels (MAML only) = the task's labels shuffled, which for these "
              "sources (labels already in a random order per task) changes the tasks' "
              "distribution in nothing. "
              + ("" if args.combo in ("auto", "none") else
                 f"The combination row is {args.combo}, given with --combo. ")
              + "".join(f"{c}. " for c in checks) + "Wall times were measured on a shared "
              "2-core machine, two "
              "runs at a time, one thread each.")}],
        time.perf_counter() - t0, topic="task-construction",
        question="Which task augmentations help when there are few meta-train classes, and by "
                 "how much?",
        details=details, combos=combos, steps=steps, alphabets={
            n: list(TASK_POOR_ALPHABETS[n]) for n in args.alphabets})


def _episodes(learner: str) -> str:
    p = get_preset(preset_name(learner, 5, 5))
    t = p["task"]
    if learner == "protonet":
        return (f"20-way 1-shot {t['n_query']}-query episodes, one a step, Adam "
                f"{p['meta_optimizer']['lr']}")
    lc = p["learner"]
    return (f"W-way 1-shot {t['n_query']}-query episodes, meta-batch {p['meta_batch']}, inner lr "
            f"{lc['inner_lr']}, {lc['inner_steps']} inner step(s) (5-way), "
            f"{lc['eval_inner_steps']} at meta-test")


if __name__ == "__main__":
    main()
