"""Few-shot language identification on UDHR (20-way, languages never seen in meta-training) and
cross-domain relation classification on FewRel (meta-train wiki+nyt+semeval, meta-test pubmed,
5-way), each against the support-only TF-IDF nearest-centroid baseline on the same episodes.

    flock /work/notes/cpu.lock nice -n 5 env METAPHI_DATA=/path/to/data \\
        python benchmarks/language_fewshot.py udhr [--steps 400] [--tasks 1000]
    flock /work/notes/cpu.lock nice -n 5 env METAPHI_DATA=/path/to/data \\
        python benchmarks/language_fewshot.py fewrel [--steps 400] [--tasks 1000]

One model per benchmark (meta-trained at the preset's shots) is meta-tested at 1 and 5 shots:
ProtoNet, or with ``--learner protonet_tfidf`` ProtoNet + TF-IDF (results
``language_<bench>_protonet_tfidf``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402
from language_common import (LEARNER_LABELS, SHARED_NOTE, WORK, ci, pct,  # noqa: E402
                             add_test_options, scored_tasks, test_note, test_title,
                             throughput, train)

BENCH = {
    "udhr": {
        "ways": 20,
        "title": "UDHR few-shot language identification on unseen languages",
        "question": "Does a meta-learned encoder identify languages never seen in "
                    "meta-training from 1 or 5 lines better than support-only TF-IDF?",
        "notes": "74 meta-test varieties (55 languages) never seen in meta-training, in any "
                 "variety; an example is one line of the Declaration (>= 20 characters); 10 "
                 "queries per language.",
    },
    "fewrel": {
        "ways": 5,
        "title": "FewRel cross-domain relation classification (wiki+nyt+semeval to pubmed)",
        "question": "Does meta-learning on general-domain relations beat support-only TF-IDF "
                    "on biomedical relations (FewRel 2.0's domain shift)?",
        "notes": "Meta-train: 44 relations of wiki, nyt and semeval (14 more held out for "
                 "meta-validation); meta-test: the 10 pubmed relations, 10 queries each. "
                 "Entities are marked [E1] .. [/E1], [E2] .. [/E2]. For reference only (not "
                 "comparable: pretrained BERT, hidden test set): FewRel 2.0's BERT-PAIR "
                 "reaches 56.25% at 5-way 1-shot on pubmed.",
    },
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bench", choices=list(BENCH))
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--overrides", nargs="*", default=[])
    ap.add_argument("--learner", default="protonet", choices=list(LEARNER_LABELS))
    add_test_options(ap)
    args = ap.parse_args()
    b = BENCH[args.bench]
    name = f"language_{args.bench}" + ("" if args.learner == "protonet" else f"_{args.learner}")
    preset = f"{args.bench}-{args.learner}-{b['ways']}w1s"  # meta-trained 1-shot
    label = LEARNER_LABELS[args.learner]
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    out = WORK / name
    every = max(args.steps // 5, 1)
    res = train(preset, out, [f"steps={args.steps}", f"val_every={every}",
                                   f"checkpoint_every={every}", "test_tasks=100",
                                   *args.overrides], args.threads)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    rows = []
    for k in (1, 5):
        scored, _ = scored_tasks(out, args.tasks, seed=1000, overrides=[f"task.k_shot={k}",
                                                                    *args.test_overrides])
        meta, base = ci(r["acc"] for r in scored), ci(r["tfidf"] for r in scored)
        diff = ci(r["acc"] - r["tfidf"] for r in scored)
        rows.append([f"{b['ways']}-way {k}-shot", pct(meta), pct(base),
                     f"{100 * diff['mean']:+.1f} ± {100 * diff['ci95']:.1f}",
                     "yes" if meta["mean"] - meta["ci95"] > base["mean"] + base["ci95"] else "no"])
    tput = throughput(out, cfg["meta_batch"])
    tables = [
        {"title": "Meta-test accuracy % ± 95% CI",
         "columns": ["setting", f"{label} (meta-learned)", "TF-IDF support-only",
                     "difference (paired)", "CIs apart"],
         "rows": rows,
         "notes": f"{args.tasks} meta-test episodes per setting, the same for both methods. " +
                  b["notes"] + " One model, meta-trained at the preset's shots, tested at 1 "
                  "and 5 shots." + test_note(args.test_overrides)},
        {"title": "Meta-training",
         "columns": ["preset", "outer steps", "meta-batch", "train minutes", "tasks/s",
                     "peak RSS MiB", "encoder"],
         "rows": [[preset, res["steps"], cfg["meta_batch"],
                   round(res["train_seconds"] / 60, 1), round(tput, 2), res["peak_rss_mib"],
                   cfg["model"]["name"]]],
         "notes": SHARED_NOTE},
    ]
    title = (b["title"] + ("" if args.learner == "protonet" else f", {label}")
             + test_title(args.test_overrides))
    write_result(args.result_name or name, title, tables, time.perf_counter() - t0,
                 topic="language", question=b["question"], run_config=cfg,
                 meta_val_best=res.get("meta_val_best"))


if __name__ == "__main__":
    main()
