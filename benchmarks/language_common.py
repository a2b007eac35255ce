"""Shared parts of the language benchmarks (language_*.py): a `metaphi train` run in a child
process (its peak memory read with wait4), meta-training throughput from the run's metrics,
per-task meta-test scores with their domains, the support-only TF-IDF baseline on the same
tasks, and per-group summaries."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "language"
FIGURES = HERE / "figures"
# the meta-learned learners these benchmarks compare with the support-only baseline
LEARNER_LABELS = {"protonet": "ProtoNet", "protonet_tfidf": "ProtoNet + TF-IDF"}
SHARED_NOTE = ("Wall times and throughput were measured on a shared 2-core machine (other "
               "sessions' jobs ran at the same time), so they are upper bounds; budgets are in "
               "outer steps.")


def train(preset: str, out: Path, overrides: list[str], threads: int = 2) -> dict[str, Any]:
    """`metaphi train PRESET` in a child process (reused when ``out`` holds a finished run
    with the same overrides); returns results.json plus ``peak_rss_mib`` (the child's peak
    resident memory) and ``wall_seconds``."""
    out = Path(out)
    stamp = out / "bench.json"
    if (out / "results.json").exists() and stamp.exists():
        saved = json.loads(stamp.read_text())
        if saved.get("overrides") == overrides and saved.get("preset") == preset:
            return {**json.loads((out / "results.json").read_text()), **saved}
    cmd = [sys.executable, "-m", "metaphi", "train", preset, "--out", str(out), "--no-progress",
           "--threads", str(threads), *overrides]
    print(" ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"training {preset} failed (exit {proc.returncode})")
    info = {"preset": preset, "overrides": overrides, "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "wall_seconds": round(time.perf_counter() - t0, 1)}
    stamp.write_text(json.dumps(info))
    return {**json.loads((out / "results.json").read_text()), **info}


def add_test_options(ap: Any) -> None:
    """``--test-overrides`` (config overrides for meta-testing only: the trained run is reused)
    and ``--result-name`` (where those results go)."""
    ap.add_argument("--test-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overrides at meta-test only, e.g. learner.weight_per_task=support_loo")
    ap.add_argument("--result-name", help="results name (default: the run's name)")


def test_note(overrides: list[str]) -> str:
    """What the notes say about ``--test-overrides``."""
    return (f" Meta-tested with {', '.join(overrides)} (the trained run unchanged)."
            if overrides else "")


def test_title(overrides: list[str]) -> str:
    """What a title adds for ``--test-overrides`` (titles are unique across results)."""
    return f", meta-tested with {', '.join(overrides)}" if overrides else ""


def throughput(run_dir: Path, meta_batch: int) -> float:
    """Meta-training tasks per second: the meta-batch over the median time of an outer step
    without meta-validation."""
    recs = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    dts = [b["seconds"] - a["seconds"] for a, b in zip(recs, recs[1:]) if "val_metric" not in b]
    return meta_batch / statistics.median(dts) if dts else float("nan")


def scored_tasks(run_dir: Path, n_tasks: int, seed: int, overrides: list[str] | None = None,
                 baseline: bool = True) -> tuple[list[dict], Any]:
    """Per meta-test task: the learner's accuracy, the support-only TF-IDF nearest-centroid
    accuracy on the same task, and the task's metadata. Returns (rows, splits)."""
    import torch

    from metaphi.baselines import tfidf_scores
    from metaphi.loops.evaluate import task_scores
    from metaphi.runs.build import build_sources
    from metaphi.runs.predict import text_tokenizer
    from metaphi.runs.run import load_run
    from metaphi.tasks.sources import fixed_tasks

    cfg, learner = load_run(run_dir, "cpu", overrides=overrides)
    splits = build_sources(cfg)
    tasks = list(fixed_tasks(splits.test, seed, "test", n_tasks))
    with torch.no_grad():
        scores = task_scores(learner, tasks)
    rows = [{"acc": m, **{k: v for k, v in t.meta.items() if k != "classes"}}
            for (m, _), t in zip(scores, tasks)]
    if baseline:
        tok = text_tokenizer(cfg)
        for r, b in zip(rows, tfidf_scores(tasks, tok.decode)):
            r["tfidf"] = b
    return rows, splits


def ci(values: Iterable[float]) -> dict[str, float]:
    from metaphi.loops.evaluate import mean_ci95

    return mean_ci95(values)


def pct(s: dict[str, float]) -> str:
    return f"{100 * s['mean']:.1f} ± {100 * s['ci95']:.1f}"


def group(rows: list[dict], key: Callable[[dict], Any]) -> dict[Any, list[dict]]:
    out: dict[Any, list[dict]] = {}
    for r in rows:
        out.setdefault(key(r), []).append(r)
    return out


def mean(values: Iterable[float]) -> float:
    v = list(values)
    return float(np.mean(v)) if v else float("nan")
