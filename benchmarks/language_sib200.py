"""Cross-lingual few-shot topic classification on SIB-200: meta-train on 148 languages, meta-test
7-way 1-shot and 5-shot episodes in 43 held-out languages (17 of them in scripts never seen in
meta-training), against a support-only TF-IDF nearest-centroid baseline on the same episodes.

    flock /work/notes/cpu.lock nice -n 5 env METAPHI_DATA=/path/to/data \\
        python benchmarks/language_sib200.py [--steps 600] [--tasks 1000]

One model (the `sib200-<learner>-7w5s` preset, meta-trained on 5-shot episodes; ``--learner``
protonet or protonet_tfidf) is meta-tested at 5 and 1 shots; results per language, per script
group, and a plot grouped by script.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402
from language_common import (FIGURES, LEARNER_LABELS, SHARED_NOTE, WORK,  # noqa: E402
                             add_test_options, ci, group, mean, pct, scored_tasks, test_note,
                             test_title, throughput, train)


def plot(rows: list[dict], path: Path, title: str, label: str) -> None:
    import matplotlib.pyplot as plt

    by = group(rows, lambda r: r["domain"])
    langs = sorted(by, key=lambda d: (by[d][0]["seen_script"] is False, by[d][0]["script"], d))
    meta = [100 * mean(r["acc"] for r in by[d]) for d in langs]
    base = [100 * mean(r["tfidf"] for r in by[d]) for d in langs]
    colors = ["tab:blue" if by[d][0]["seen_script"] else "tab:orange" for d in langs]
    fig, ax = plt.subplots(figsize=(max(8, 0.28 * len(langs)), 4.2))
    x = range(len(langs))
    ax.bar(x, meta, color=colors, label=f"{label} (blue: seen script, orange: unseen)")
    ax.scatter(x, base, color="black", marker="_", s=120, label="TF-IDF support-only", zorder=3)
    ax.axhline(100 / 7, color="grey", lw=0.8, ls=":", label="chance")
    ax.set_xticks(list(x))
    ax.set_xticklabels([f"{d} ({by[d][0]['family'][:10]})" for d in langs], rotation=90,
                       fontsize=7)
    ax.set_ylabel("accuracy %")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    FIGURES.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--overrides", nargs="*", default=[])
    ap.add_argument("--name", default="language_sib200")
    ap.add_argument("--learner", default="protonet", choices=list(LEARNER_LABELS))
    add_test_options(ap)
    args = ap.parse_args()
    result_name = args.result_name or args.name
    preset, label = f"sib200-{args.learner}-7w5s", LEARNER_LABELS[args.learner]
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    out = WORK / args.name
    overrides = [f"steps={args.steps}", f"val_every={max(args.steps // 5, 1)}",
                 f"checkpoint_every={max(args.steps // 5, 1)}", "test_tasks=100", *args.overrides]
    res = train(preset, out, overrides, args.threads)
    import yaml

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    tput = throughput(out, cfg["meta_batch"])
    summary_rows, per_lang_rows, all_rows = [], [], {}
    for k in (5, 1):
        rows, _ = scored_tasks(out, args.tasks, seed=1000, overrides=[f"task.k_shot={k}",
                                                                    *args.test_overrides])
        all_rows[k] = rows
        seen = [r for r in rows if r["seen_script"]]
        unseen = [r for r in rows if not r["seen_script"]]
        for method, key in ((f"{label} (meta-learned)", "acc"), ("TF-IDF support-only", "tfidf")):
            summary_rows.append([f"7-way {k}-shot", method, pct(ci(r[key] for r in rows)),
                                 pct(ci(r[key] for r in seen)), pct(ci(r[key] for r in unseen))])
        diff = ci(r["acc"] - r["tfidf"] for r in rows)
        diff_u = ci(r["acc"] - r["tfidf"] for r in unseen)
        summary_rows.append([f"7-way {k}-shot", "difference (points, paired)",
                             f"{100 * diff['mean']:+.1f} ± {100 * diff['ci95']:.1f}",
                             "", f"{100 * diff_u['mean']:+.1f} ± {100 * diff_u['ci95']:.1f}"])
    for d, rs in sorted(group(all_rows[5], lambda r: r["domain"]).items(),
                        key=lambda kv: (not kv[1][0]["seen_script"], kv[1][0]["script"], kv[0])):
        r0 = rs[0]
        one = group(all_rows[1], lambda r: r["domain"]).get(d, [])
        per_lang_rows.append([d, r0["language"], r0["script"], r0["family"],
                              "yes" if r0["seen_script"] else "no", len(rs),
                              f"{100 * mean(r['acc'] for r in rs):.1f}",
                              f"{100 * mean(r['tfidf'] for r in rs):.1f}",
                              f"{100 * mean(r['acc'] for r in one):.1f}",
                              f"{100 * mean(r['tfidf'] for r in one):.1f}"])
    fig = f"{result_name}_by_language.png"
    plot(all_rows[5], FIGURES / fig, "SIB-200 held-out languages, 7-way 5-shot (grouped by "
         "seen/unseen script, then script)", label)
    train_row = [preset, res["steps"], cfg["meta_batch"], round(res["train_seconds"] / 60, 1),
                 round(tput, 2), res["peak_rss_mib"], cfg["model"]["name"]]
    tables = [
        {"title": "Meta-test accuracy % ± 95% CI on held-out languages",
         "columns": ["setting", "method", "all languages", "seen script", "unseen script"],
         "rows": summary_rows,
         "notes": f"{args.tasks} meta-test episodes per setting (the same episodes for both "
                  "methods; 10 queries per topic), drawn from the 43 meta-test languages' SIB-200 "
                  f"test sentences (never seen in any language during meta-training). One {label} "
                  "model meta-trained on 5-shot episodes is tested at 5 and 1 shots. TF-IDF: "
                  "character n-grams (1-4, char_wb, sublinear tf) fit on the support set alone, "
                  "nearest centroid by cosine. Differences are paired per episode."
                  + test_note(args.test_overrides)},
        {"title": "Per language (accuracy %, mean over its episodes)",
         "columns": ["language", "name", "script", "family", "script seen", "episodes (5-shot)",
                     f"{label} 5-shot", "TF-IDF 5-shot", f"{label} 1-shot", "TF-IDF 1-shot"],
         "rows": per_lang_rows, "notes": "Sorted by seen/unseen script, then script."},
        {"title": "Meta-training",
         "columns": ["preset", "outer steps", "meta-batch", "train minutes", "tasks/s",
                     "peak RSS MiB", "encoder"],
         "rows": [train_row],
         "notes": "tasks/s: meta-batch / median outer-step time without meta-validation. Peak "
                  "RSS: the training process (data, model, Adam state). " + SHARED_NOTE},
    ]
    write_result(result_name, "SIB-200 cross-lingual few-shot topic classification"
                 + test_title(args.test_overrides), tables,
                 time.perf_counter() - t0, topic="language",
                 question="Does meta-learning on many languages beat a support-only TF-IDF "
                          "classifier on few-shot topic classification in languages (and "
                          "scripts) never seen in meta-training?",
                 figures=[fig], run_config=cfg, meta_val_best=res.get("meta_val_best"))


if __name__ == "__main__":
    main()
