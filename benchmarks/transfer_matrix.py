"""Cross-domain transfer on Omniglot: ProtoNet meta-trained on one group of alphabets (a
domain) and meta-tested on the unseen alphabets of every group, 5-way 1-shot, with four
BatchNorm choices at meta-test (episode, running, support, target statistics).

    flock /work/notes/cpu.lock nice -n 5 python benchmarks/transfer_matrix.py [--steps 1000] \
        [--tasks 500] [--workers 2]

Domains: metaphi.runs.task_presets.ALPHABET_GROUPS (Brahmic, European, invented scripts); in
each group, in alphabetical order, the 1st, 3rd, ... alphabets are meta-train alphabets and the
2nd, 4th, ... meta-test alphabets. Rows are the `transfer-protonet-<group>` presets; each cell
is `metaphi test RUN --on omniglot task.classes.test=[<group's meta-test alphabets>]
--batchnorm <choice>` on the same tasks for every row.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402
from task_runs import WORK, ci, fmt, parallel, scores, train_rows  # noqa: E402

from metaphi.runs.task_presets import ALPHABET_GROUPS, group_split  # noqa: E402

BATCHNORM = ("episode", "running", "support", "target")


def characters(alphabets: list[str]) -> int:
    from metaphi.data.omniglot import ALPHABETS

    return sum(p[a] for p in ALPHABETS.values() for a in alphabets if a in p)


def run_dir(group: str) -> Path:
    return WORK / "transfer_matrix" / f"transfer-protonet-{group}"


def cell(row: str, col: str, bn: str, n: int) -> tuple[tuple[str, str, str], np.ndarray]:
    classes = json.dumps({"test": group_split(col)["test"]})
    return (row, col, bn), scores(run_dir(row), [f"task.classes={classes}"], n=n, batchnorm=bn,
                                  on="omniglot")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--groups", nargs="+", default=list(ALPHABET_GROUPS))
    ap.add_argument("--batchnorm", nargs="+", default=list(BATCHNORM))
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--tasks", type=int, default=500)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--name", default="transfer_matrix_omniglot")
    args = ap.parse_args()
    t0 = time.perf_counter()
    seconds = train_rows("transfer_matrix", {g: f"transfer-protonet-{g}" for g in args.groups},
                         args.steps, args.workers)
    jobs = [(r, c, bn, args.tasks) for r in args.groups for c in args.groups
            for bn in args.batchnorm]
    got = dict(parallel(cell, jobs, args.workers))
    G = args.groups
    mean = {bn: np.array([[100 * got[(r, c, bn)].mean() for c in G] for r in G])
            for bn in args.batchnorm}
    half = {bn: np.array([[ci(got[(r, c, bn)], 100)["ci95"] for c in G] for r in G])
            for bn in args.batchnorm}
    rows, details = [], {}
    for r in G:
        for c in G:
            row = [r, c, "in-domain" if r == c else "cross-domain"]
            base = got[(r, c, "episode")]
            for bn in args.batchnorm:
                s = ci(got[(r, c, bn)], 100)
                details[f"{r}->{c}/{bn}"] = s
                if bn == "episode":
                    row.append(fmt(s))
                else:
                    d = ci(got[(r, c, bn)] - base, 100)
                    row.append(f"{fmt(s)} ({d['mean']:+.2f} ± {d['ci95']:.2f})")
            rows.append(row)
            print(row, flush=True)
    # how much accuracy is lost off the diagonal, per BatchNorm choice
    summary = []
    for bn in args.batchnorm:
        m = mean[bn]
        diag = float(np.mean(np.diag(m)))
        off = float(np.mean(m[~np.eye(len(G), dtype=bool)])) if len(G) > 1 else float("nan")
        summary.append([bn, f"{diag:.2f}", f"{off:.2f}", f"{diag - off:.2f}"])
    fig = Path(__file__).resolve().parent / "figures" / f"{args.name}.png"
    fig.parent.mkdir(parents=True, exist_ok=True)
    from metaphi.plots.domains import transfer_matrix

    transfer_matrix(mean, G, G, fig, ci=half,
                    title="Omniglot ProtoNet 5-way 1-shot: meta-train group (rows) x meta-test "
                          "group (columns), by BatchNorm statistics at meta-test")
    groups = "; ".join(f"{g}: meta-train {', '.join(group_split(g)['train'])} | meta-test "
                       f"{', '.join(group_split(g)['test'])}" for g in G)
    sizes = ", ".join(f"{g} {characters(group_split(g)['train'])}" for g in G)
    write_result(
        args.name, "Omniglot transfer matrix: alphabet groups as domains, BatchNorm choices",
        [{"title": f"Meta-test accuracy % ± 95% CI on {args.tasks} 5-way 1-shot tasks (5 "
                   "queries a class) per cell "
                   "(the same tasks in a column); in brackets: paired difference to episode "
                   "statistics",
          "columns": ["meta-train group", "meta-test group", "kind",
                      *[f"BatchNorm {bn}" for bn in args.batchnorm]],
          "rows": rows,
          "notes": (
              f"Groups (characters as drawn, no rotated classes): {groups}. ProtoNet, Conv-4 "
              f"(64 filters), 20-way 1-shot 5-query meta-train episodes, Adam 1e-3, "
              f"{args.steps} outer steps each (preset transfer-protonet-<group>; no "
              "meta-validation: φ of the last step), meta-trained with episode statistics. "
              "BatchNorm at meta-test: episode = each episode's support and query images "
              "together; running = estimated on 50 meta-train episodes; support = each "
              "episode's support images alone; target = re-estimated on 50 unlabelled "
              "episodes of the target's meta-test alphabets (another stream than the "
              "evaluated ones). Rows differ in meta-train data as well as in domain: "
              f"characters in each group's meta-train alphabets: {sizes}. Wall times were "
              "measured on a shared 2-core machine.")},
         {"title": "Mean accuracy % on the diagonal (in-domain) and off it (cross-domain)",
          "columns": ["BatchNorm", "in-domain", "cross-domain", "drop (points)"],
          "rows": summary, "notes": ""}],
        time.perf_counter() - t0, topic="task-construction",
        question="How well does φ meta-trained on one family of scripts transfer to others, "
                 "and which BatchNorm statistics transfer best?",
        figures=[f"{args.name}.png"], details=details, train_seconds=seconds,
        groups={g: group_split(g) for g in G}, steps=args.steps)


if __name__ == "__main__":
    main()
