"""Fill the base-forecaster cache (benchmarks/_work/) for M3 and Tourism: test and holdout runs.

forecast_m3_tourism.py does the same first; this lets the slow part run on its own. Forecasts
already cached are reused, so adding a forecaster to the list fits only that one.
Run: nice -n 10 python benchmarks/forecast_base_cache.py
"""
from __future__ import annotations

import time
from pathlib import Path

from metaphi.forecasting.base import ALL_METHODS, run_base
from metaphi.forecasting.data import load_builtin

WORK = Path(__file__).resolve().parent / "_work"

if __name__ == "__main__":
    t0 = time.perf_counter()
    for ds in ("m3", "tourism"):
        for s in load_builtin(ds):
            for part in (s.holdout(), s):
                _, sec = run_base(part, ALL_METHODS, cache_dir=WORK)
                print(f"{part.name} n={len(part)} len0={len(part.y[0])}: {sec:.1f} s", flush=True)
    print(f"total {time.perf_counter() - t0:.1f} s")
