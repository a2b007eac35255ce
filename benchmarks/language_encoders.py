"""Meta-training throughput (tasks/s) and peak memory of the text encoders on SIB-200 7-way
5-shot episodes (105 sentences of up to 256 bytes a task), with ProtoNet and ANIL.

    flock /work/notes/cpu.lock nice -n 5 env METAPHI_DATA=/path/to/data \\
        python benchmarks/language_encoders.py [--steps 40]

Each configuration is a short `metaphi train` run in its own process (peak RSS by wait4);
tasks/s is the meta-batch over the median outer step (no meta-validation). Run it alone on the
machine: the numbers are timings.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402
from language_common import WORK, throughput, train  # noqa: E402

ENCODERS = {
    "ngram_bag (preset: 64-d + 4096 lexical)": [],
    "ngram_bag (64-d, no lexical)": ["model.lexical=0", "model.center=false"],
    "byte_cnn": ["model={name: byte_cnn}"],
    "text_transformer (2 layers, 128-d)": ["model={name: text_transformer}",
                                           "task.max_len=128"],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--learners", nargs="+", default=["protonet", "anil"])
    ap.add_argument("--name", default="language_encoders")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = []
    for learner in args.learners:
        for i, (label, ov) in enumerate(ENCODERS.items()):
            out = WORK / args.name / f"{learner}_{i}"
            res = train(f"sib200-{learner}-7w5s", out, [
                f"steps={args.steps}", f"val_every={args.steps}", "val_tasks=10",
                "test_tasks=10", f"checkpoint_every={args.steps}", *ov], args.threads)
            rows.append([learner, label, round(throughput(out, 4), 2), res["peak_rss_mib"],
                         round(res["train_seconds"] / 60, 2)])
    write_result(args.name, "Text encoders: meta-training throughput and memory", [
        {"title": "SIB-200 7-way 5-shot, meta-batch 4",
         "columns": ["learner", "encoder", "tasks/s", "peak RSS MiB", "train minutes"],
         "rows": rows,
         "notes": f"{args.steps} outer steps each, bytes (max_len 256; the transformer 128), "
                  f"{args.threads} threads. Peak RSS includes the loaded SIB-200 data (~0.6 "
                  "GiB). Run alone on the machine (no other benchmark or test at the same "
                  "time): the numbers are timings."}],
        time.perf_counter() - t0, topic="language",
        question="How fast do the text encoders meta-train on CPU, and how much memory do "
                 "they take?")


if __name__ == "__main__":
    main()
