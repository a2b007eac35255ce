"""How `metaphi forecast` scales with the number of series on one machine: 1k, 10k, 100k random
walks (length 60, monthly dates, horizon 6), the default command, wall time and peak memory.

Each size is a fresh run of the CLI in its own process (new output folder, empty cache):

    metaphi forecast DATA.csv --horizon 6 --freq MS --out OUT --no-progress

Peak memory is the largest sum of the resident memory of the run's processes (the CLI and its
worker processes), sampled every 0.2 s, and the largest single process' peak (getrusage).
Growth is the ratio of wall times between consecutive sizes divided by the ratio of sizes (1.0:
linear). Run alone on a quiet machine (every core is used):

    python benchmarks/forecast_scale.py                      # 1k, 10k, 100k (~40 min, 2 cores)
    python benchmarks/forecast_scale.py --sizes 1000 10000   # the issue's 10k target

Quick check of the script (not written to results/):
    python benchmarks/forecast_scale.py --sizes 200 --dry-run
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

WORK = Path(__file__).resolve().parent / "_work" / "scale"
LENGTH, HORIZON = 60, 6


def make_data(path: Path, n: int, seed: int = 0) -> None:
    """``n`` random walks of length 60 on month-start dates, a long-format CSV."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    y = 100 + np.cumsum(rng.normal(0, 1, (n, LENGTH)), axis=1)
    dates = pd.date_range("2015-01-01", periods=LENGTH, freq="MS").strftime("%Y-%m-%d")
    pd.DataFrame({"unique_id": np.repeat([f"s{i}" for i in range(n)], LENGTH),
                  "ds": np.tile(dates, n), "y": y.ravel().round(4)}).to_csv(path, index=False)


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p] + p.children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_one(csv: Path, out: Path, extra: list[str]) -> dict:
    """One CLI run: wall seconds, peak memory of the process tree and of one process."""
    cmd = [sys.executable, "-m", "metaphi", "forecast", str(csv), "--horizon", str(HORIZON),
           "--freq", "MS", "--out", str(out), "--no-progress", *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    output, _ = proc.communicate()
    wall = time.perf_counter() - t0
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-3000:]}")
    res = json.loads((out / "results.json").read_text())
    avg = res["metrics"]["FFORMA"]["Average"]
    # stage names carry the data's name (rw_<n>); one name per stage lines the sizes up
    stages = {k.replace(csv.stem, "data"): round(v, 1) for k, v in res["timings"].items()}
    return {"wall_seconds": round(wall, 1), "peak_tree_mb": round(peak[0] / 2**20),
            "peak_process_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
            "fforma_smape": round(avg["sMAPE"], 3), "stages": stages, "command": " ".join(cmd)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", type=int, default=[1000, 10000, 100000])
    ap.add_argument("--work", type=Path, default=WORK, help="data and run folders")
    ap.add_argument("--keep", action="store_true", help="keep the run folders")
    ap.add_argument("--dry-run", action="store_true", help="print, do not write results/")
    ap.add_argument("extra", nargs="*", help="more options for `metaphi forecast` (after --)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    rows, runs = [], {}
    prev = None
    for n in args.sizes:
        csv = args.work / f"rw_{n}.csv"
        if not csv.exists():
            make_data(csv, n)
        out = args.work / f"out_{n}"
        shutil.rmtree(out, ignore_errors=True)
        r = run_one(csv, out, args.extra)
        runs[n] = r
        growth = None if prev is None else round((r["wall_seconds"] / prev[1]) / (n / prev[0]), 2)
        prev = (n, r["wall_seconds"])
        rows.append([n, r["wall_seconds"], round(r["wall_seconds"] / n * 1000, 2),
                     r["peak_tree_mb"], r["peak_process_mb"], growth, r["fforma_smape"]])
        print(f"{n} series: {r['wall_seconds']} s, peak {r['peak_tree_mb']} MB (all processes), "
              f"FFORMA sMAPE {r['fforma_smape']}", flush=True)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    table = {"title": "metaphi forecast on N random walks (length 60, horizon 6, monthly), "
                      "default settings",
             "columns": ["series", "wall s", "ms per series", "peak MB (all processes)",
                         "peak MB (one process)", "growth vs previous (1 = linear)",
                         "FFORMA sMAPE"],
             "rows": rows,
             "notes": "One fresh CLI run per size (empty cache): loading and checking the CSV, "
                      "base forecasters on the test and holdout histories, features, FFORMA "
                      "(5 boosters), scoring, CSV/JSON/PNG outputs."}
    stages = {"title": "Seconds per stage (results.json timings)",
              "columns": ["stage"] + [str(n) for n in args.sizes],
              "rows": [[k] + [runs[n]["stages"].get(k) for n in args.sizes]
                       for k in runs[args.sizes[-1]]["stages"]]}
    if args.dry_run:
        print(json.dumps({"tables": [table, stages]}, indent=1))
        return
    write_result("forecast_scale", "Forecasting: scale of `metaphi forecast` with the number of "
                 "series", [table, stages], time.perf_counter() - t_all,
                 notes=f"{os.cpu_count()} cores; base forecasters: the default pool.",
                 topic="forecasting", order=42, runs=runs)


if __name__ == "__main__":
    main()
