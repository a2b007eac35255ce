"""Domain generalisation on SIB-200 with languages as domains: ERM on the pooled source
languages vs MLDG (Li et al. 2018) vs Fish (Shi et al. 2022), leave-languages-out (the 43
meta-test languages of the sib200_language split are the targets and give no labelled data),
model selection on held-out sentences of the source languages (DomainBed's training-domain
validation), several seeds.

    flock /work/notes/cpu.lock nice -n 5 env METAPHI_DATA=/path/to/data \\
        python benchmarks/language_dg.py [--steps 300] [--seeds 0 1 2]

Target accuracy is exact: every test sentence (204) of every target language, averaged per
language, then over languages; the CI is over seeds (t distribution).
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
from language_common import SHARED_NOTE, WORK, throughput, train  # noqa: E402

METHODS = ("erm", "mldg", "fish")
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57}


def target_accuracy(run_dir: Path) -> tuple[dict[str, float], dict[str, bool]]:
    """Per target language: accuracy of the deployed model on all its test sentences."""
    from metaphi.runs.build import build_sources
    from metaphi.runs.run import load_run

    cfg, learner = load_run(run_dir, "cpu")
    splits = build_sources(cfg)
    test = splits.test
    data = test.data
    out, seen = {}, {}
    with torch.no_grad():
        for lang, idx in test._by_domain:
            correct = 0
            for i in range(0, len(idx), 256):
                chunk = idx[i:i + 256]
                x = data.get(chunk)
                model = learner.adapt(x[:0], torch.zeros(0, dtype=torch.long))
                pred = model(x).argmax(-1).numpy()
                correct += int((pred == data.labels[chunk]).sum())
            out[lang] = correct / len(idx)
            seen[lang] = bool(test.domain_meta[lang]["seen_script"])
    return out, seen


def mean_t(values: list[float]) -> str:
    v = np.asarray(values) * 100
    if len(v) < 2:
        return f"{v.mean():.1f}"
    half = T95.get(len(v) - 1, 1.96) * v.std(ddof=1) / np.sqrt(len(v))
    return f"{v.mean():.1f} ± {half:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--overrides", nargs="*", default=[])
    ap.add_argument("--name", default="language_dg")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    per: dict[str, list[dict]] = {m: [] for m in args.methods}
    for method in args.methods:
        for seed in args.seeds:
            out = WORK / args.name / f"{method}_seed{seed}"
            every = max(args.steps // 6, 1)
            res = train(f"sib200dg-{method}", out, [
                f"steps={args.steps}", f"val_every={every}", f"checkpoint_every={every}",
                "test_tasks=100", f"seed={seed}", *args.overrides], args.threads)
            acc, seen = target_accuracy(out)
            per[method].append({
                "seed": seed, "val": res["meta_val_best"]["value"],
                "best_step": res["meta_val_best"]["step"],
                "all": float(np.mean(list(acc.values()))),
                "seen": float(np.mean([a for k, a in acc.items() if seen[k]])),
                "unseen": float(np.mean([a for k, a in acc.items() if not seen[k]])),
                "per_language": acc, "train_minutes": res["train_seconds"] / 60,
                "tasks_s": throughput(out, 8), "peak_rss_mib": res["peak_rss_mib"]})
    rows, seed_rows = [], []
    for method, rs in per.items():
        rows.append([method.upper(), len(rs), mean_t([r["val"] for r in rs]),
                     mean_t([r["all"] for r in rs]), mean_t([r["seen"] for r in rs]),
                     mean_t([r["unseen"] for r in rs]),
                     f"{np.mean([r['train_minutes'] for r in rs]):.1f}",
                     f"{np.mean([r['tasks_s'] for r in rs]):.1f}",
                     f"{max(r['peak_rss_mib'] for r in rs):.0f}"])
        for r in rs:
            seed_rows.append([method.upper(), r["seed"], f"{100 * r['val']:.1f}", r["best_step"],
                              f"{100 * r['all']:.1f}", f"{100 * r['seen']:.1f}",
                              f"{100 * r['unseen']:.1f}"])
    langs = sorted(next(iter(per.values()))[0]["per_language"])
    lang_rows = [[lang] + [f"{100 * np.mean([r['per_language'][lang] for r in per[m]]):.1f}"
                           for m in per] for lang in langs]
    tables = [
        {"title": "Target-language accuracy % (mean ± 95% CI over seeds)",
         "columns": ["method", "seeds", "source val (selection)", "all targets",
                     "seen-script targets", "unseen-script targets", "train min / run",
                     "tasks/s", "peak RSS MiB"],
         "rows": rows,
         "notes": "Targets: the 43 meta-test languages of sib200_language (26 of scripts seen "
                  "in the sources, 17 unseen); each gives no labelled data. Sources: the 162 "
                  "meta-train + meta-val languages; 20% of their train sentence ids are held "
                  "out, and the step with the best accuracy on them is deployed (training-domain "
                  "validation). Accuracy is exact over all 204 test sentences of a target "
                  "language, averaged over languages (chance 14.3%). " + SHARED_NOTE},
        {"title": "Per seed", "columns": ["method", "seed", "source val %", "selected step",
                                          "all targets %", "seen script %", "unseen script %"],
         "rows": seed_rows},
        {"title": "Per target language (accuracy %, mean over seeds)",
         "columns": ["language"] + [m.upper() for m in per], "rows": lang_rows},
    ]
    write_result(args.name, "SIB-200 domain generalisation over languages: ERM vs MLDG vs Fish",
                 tables, time.perf_counter() - t0, topic="language",
                 question="With languages as domains and no data from the target language, "
                          "does MLDG or Fish generalise better than ERM on the pooled sources?",
                 steps=args.steps, seeds=args.seeds)


if __name__ == "__main__":
    main()
