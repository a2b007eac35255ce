"""Omniglot few-shot classification: meta-test accuracy ± 95% CI over 1000 episodes (Vinyals
split, rotations as classes, 28x28), with wall-clock training time and time to 98% meta-val
accuracy, beside the published numbers.

    METAPHI_DATA=/path/to/data python benchmarks/omniglot.py --presets omniglot-protonet-5w1s \
        [--steps 3000 | --steps omniglot-protonet-5w1s=10000 omniglot-protonet-5w5s=2000] [--threads 2]

Each preset is a real `metaphi train` run (folders under benchmarks/_work/omniglot/); --steps
caps the outer steps where the full protocol does not fit this machine (the table says so).
A preset written PRESET+TAG is a variant with its own folder and its own overrides
(--overrides PRESET+TAG:key=value), e.g. the protonet presets with 5-way meta-train episodes
(or task.meta_train_classes=trainval: meta-train on train+val classes, as Snell et al. did):
    --presets omniglot-protonet-5w1s+5way --overrides \
        omniglot-protonet-5w1s+5way:task.train_n_way=null omniglot-protonet-5w1s+5way:task.n_query=15
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from metaphi.runs import get_preset, train_run, validate_config  # noqa: E402
from metaphi.runs.config import apply_overrides  # noqa: E402

PUBLISHED = {  # accuracy %, 5w1s / 5w5s / 20w1s / 20w5s (../shared/reference/published_results.md)
    "protonet": (98.8, 99.7, 96.0, 98.9), "maml": (98.7, 99.9, 95.8, 98.9),
    "fomaml": (98.3, 99.2, 89.4, 97.9), "metasgd": (99.53, 99.93, 95.93, 98.97),
    "matchingnet": (98.1, 98.9, 93.8, 98.5), "anil": (None, None, 96.2, 98.0),
    "reptile": (97.68, 99.48, 89.43, 97.12),
}
COLUMN = {"5w1s": 0, "5w5s": 1, "20w1s": 2, "20w5s": 3}
STEPS_RULE = {  # --trainval-steps: (row label, how the notes say the step count was chosen)
    "best": ("train run's best", "the number of steps at which the train-classes run of the "
             "same preset had its best meta-validation accuracy"),
    "full": ("full schedule", "the preset's full schedule of outer steps (the paper's)"),
}


def time_to(metrics: Path, threshold: float) -> tuple[int | None, float | None]:
    for line in metrics.read_text().splitlines():
        r = json.loads(line)
        if r.get("val_metric", -1) >= threshold:
            return r["step"] + 1, r["seconds"]
    return None, None


def check_same_run(out: Path, cfg) -> None:
    """A run folder holds one configuration: reusing it for another would report its numbers
    under the wrong protocol."""
    if not (out / "config.yaml").exists():
        return
    # validated, so that fields added to the config since the run was made take their defaults
    saved = validate_config(yaml.safe_load((out / "config.yaml").read_text())).model_dump(mode="json")
    want = cfg.model_dump(mode="json")
    for k in ("steps", "device", "loader_workers"):  # what a resumed run may change
        saved.pop(k, None)
        want.pop(k, None)
    if saved != want:
        diff = sorted(k for k in set(saved) | set(want) if saved.get(k) != want.get(k))
        raise SystemExit(f"{out} holds a run with another configuration (differs in {diff}); "
                         "name this variant PRESET+TAG or pass --work to use another folder")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["omniglot-protonet-5w1s"])
    ap.add_argument("--steps", nargs="+", default=[], metavar="[PRESET=]N",
                    help="cap on outer steps (budget on this machine), for all presets or per "
                         "preset; a finished run with fewer steps is trained longer")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--overrides", nargs="*", default=[], metavar="[PRESET:]KEY=VALUE",
                    help="config overrides, for all presets or (PRESET:KEY=VALUE) for one")
    ap.add_argument("--work", default=str(Path(__file__).resolve().parent / "_work" / "omniglot"))
    ap.add_argument("--name", default="omniglot",
                    help="results/<name>.json (e.g. omniglot_gpu for the runs made on an accelerator)")
    ap.add_argument("--trained-on", default=None, metavar="MACHINE",
                    help="the run folders were meta-trained on MACHINE (e.g. an accelerator "
                         "session whose time ran out before the meta-test) and are finished "
                         "here: the table says so and its train minutes are MACHINE's")
    ap.add_argument("--trainval-steps", choices=["best", "full"], default="best",
                    help="how the train+val rows' step count was chosen: the train-classes run's "
                         "best meta-val step, or the preset's full schedule (where the "
                         "train-classes run was cut and has no best step to take)")
    ap.add_argument("--note", default="", help="provenance to add to the table's notes (e.g. "
                    "that a run folder was continued from another run with identical episodes)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows, runs = [], {}
    n_trainval = 0  # rows meta-trained on train+val classes
    for entry in args.presets:
        name, _, tag = entry.partition("+")
        caps = dict(a.split("=", 1) if "=" in a else ("*", a) for a in args.steps)
        cap = caps.get(entry, caps.get("*"))
        over = [o.split(":", 1)[-1] for o in args.overrides
                if ":" not in o.split("=", 1)[0] or o.startswith(entry + ":")]
        over += [f"steps={cap}"] if cap else []
        cfg = validate_config(apply_overrides(get_preset(name), over))
        out = Path(args.work) / entry
        check_same_run(out, cfg)
        res = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else None
        if res is None or res["steps"] < cfg.steps:
            # resumes a killed run, or trains a finished one longer (same tasks, same schedule)
            res = train_run(cfg, out, resume=(out / "checkpoint.pt").exists(), progress=False)
        learner, setting = name.split("-")[1], name.split("-")[2]
        pub = PUBLISHED.get(learner, (None,) * 4)[COLUMN[setting]]
        full = get_preset(name)["steps"]
        step98, sec98 = time_to(out / "metrics.jsonl", 0.98)
        mt = res["meta_test"]
        t = cfg.task
        train = f"{t.train_n_way or t.n_way}-way, {t.n_query} queries"
        trainval = t.meta_train_classes == "trainval"
        if trainval:
            train += ", train+val classes"
            n_trainval += 1
        rows.append([learner + (f" [{tag}]" if tag else ""), setting, train, f"{100 * mt['mean']:.2f} ± {100 * mt['ci95']:.2f}",
                     pub if pub is not None else "–",
                     f"{res['steps']} of {full}" + (f" ({STEPS_RULE[args.trainval_steps][0]})"
                                                    if trainval else ""),
                     round(res["train_seconds"] / 60, 1),
                     "– (no meta-val)" if trainval else
                     f"step {step98}, {sec98 / 60:.1f} min" if step98 else "not reached",
                     mt["tasks"]])
        runs[entry] = res
        print(entry, rows[-1], flush=True)
    where = args.trained_on or (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                                else None)
    finished_here = (f" Meta-trained (with its meta-validation) on {args.trained_on}; the "
                     "meta-test of the best φ ran afterwards from the run's checkpoint on the "
                     "machine above." if args.trained_on else "")
    write_result(
        args.name, "Omniglot few-shot classification (Vinyals split, Conv-4)"
        + (f", on {where}" if where else "")
        + (", meta-trained on train+val classes" if n_trainval == len(rows) else ""),
        [{"title": "Meta-test accuracy % ± 95% CI; best φ chosen on meta-validation"
                   + (" (train+val rows: φ of the last step)" if n_trainval else ""),
          "columns": ["learner", "setting", "meta-train episodes", "accuracy %", "published %", "outer steps run",
                      "train minutes", "time to 98% meta-val", "meta-test episodes"],
          "rows": rows,
          "notes": "Published: the papers' tables (see ../shared/reference/published_results.md; "
                   "– where it has no row). A [tag] row is a variant of the preset, with the "
                   "overrides given for PRESET+tag in the command. "
                   "'outer steps run' below the preset's full budget means the run was cut to "
                   f"what {'the accelerator session' if where else 'this 2-core CPU'} allows; "
                   "its learning curve is in benchmarks/figures/ "
                   "(<preset>-learning_curve.png)." + finished_here
                   + (" A 'train+val classes' row meta-trains on the split's trainval list "
                      "(1200 characters x 4 rotations), as Snell et al. (2017) did for their "
                      f"published models, for {STEPS_RULE[args.trainval_steps][1]}; with the "
                      "validation classes in meta-training nothing is left to choose φ, so the "
                      "last step's φ is meta-tested." if n_trainval else "")
                   + (f" {args.note}" if args.note else "")}],
        time.perf_counter() - t0, runs=runs, threads=args.threads, trained_on=where,
        topic="omniglot")


if __name__ == "__main__":
    main()
