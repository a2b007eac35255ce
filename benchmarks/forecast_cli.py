"""A `metaphi forecast` command as a user runs it, with its per-method table: the numbers the
README quotes come from the command it shows.

    python benchmarks/forecast_cli.py --name forecast_m3_cli_all -- m3 --methods all
    python benchmarks/forecast_cli.py --name forecast_m3_cli_default -- m3

The command runs in its own process with a fresh output folder under benchmarks/_work/; with
``--existing DIR`` the results of a finished run of the same command are read instead (its
wall time is the run's own "total" timing).
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

WORK = Path(__file__).resolve().parent / "_work"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True, help="results name")
    ap.add_argument("--existing", type=Path, help="a finished run folder of the same command")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="-- then the `metaphi forecast` arguments")
    a = ap.parse_args()
    args = [x for x in a.args if x != "--"]
    out = a.existing or WORK / a.name
    command = "metaphi forecast " + " ".join(map(shlex.quote, args)) + f" --out {out}"
    t0 = time.perf_counter()
    if a.existing is None:
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "metaphi", "forecast", *args, "--out", str(out),
                        "--no-progress"], check=True)
    res = json.loads((out / "results.json").read_text())
    wall = res["timings"].get("total", time.perf_counter() - t0)
    metrics = res["metrics"]
    rows = sorted(([m, *(round(v["Average"][k], 3) for k in ("sMAPE", "MAPE", "MASE", "OWA"))]
                   for m, v in metrics.items()), key=lambda r: r[1])
    write_result(a.name, f"metaphi forecast {' '.join(args)}: average over the subsets",
                 [{"title": f"`{command}`", "columns": ["method", "sMAPE", "MAPE", "MASE", "OWA"],
                   "rows": rows,
                   "notes": "Averages weighted by series x horizon, as in the competitions."}],
                 wall, topic="forecasting", cli_command=command,
                 question="What does the README's forecasting command give?",
                 notes=f"Wall time {wall / 60:.0f} min on this machine's 2 cores"
                       + (" (the run shared the machine with other jobs, niced)"
                          if a.existing else ""))


if __name__ == "__main__":
    main()
