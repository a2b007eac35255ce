"""Forecasting transfer matrix and cross-frequency meta-training: MAML on N-BEATS meta-trained
on the series of one frequency subset of M3 or Tourism (a domain) and meta-tested on the
meta-test series of every domain; one more row meta-trained on the yearly and quarterly series
of both datasets and meta-tested on the monthly ones, beside the rows trained on the target.

    flock /work/notes/cpu.lock nice -n 5 python benchmarks/forecast_transfer.py [--steps 1000] \
        [--workers 2]

Rows are the `forecast-maml-<row>` presets (metaphi.runs.task_presets.FORECAST_ROWS); the
`forecast` task source splits each domain's series 70/10/20 into meta-train / meta-val /
meta-test series with a fixed seed, so every cell is meta-tested on series no row saw. Each
cell forecasts every meta-test series of its column once (4 steps: the first 4 values of the
competition's test period) after the inner loop on 8 support windows of its history; the
support windows of a series are the same for every row, so rows are compared series by series.
Beside each cell: Naive (the last value repeated) and φ without the inner loop.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402
from task_runs import WORK, ci, fmt, parallel, train_rows  # noqa: E402

from metaphi.forecasting.metrics import smape  # noqa: E402
from metaphi.runs.task_presets import FORECAST_DOMAINS, FORECAST_ROWS  # noqa: E402


def run_dir(row: str) -> Path:
    return WORK / "forecast_transfer" / f"forecast-maml-{row}"


def score_row(row: str) -> tuple[str, dict[str, dict[str, np.ndarray]]]:
    """Per-series sMAPE and scaled MAE of a row's φ on each domain's meta-test series
    (adapted, unadapted, Naive)."""
    import torch

    torch.set_num_threads(1)
    from metaphi.forecasting.tasks import domain_source
    from metaphi.runs.run import prepare_test
    from metaphi.tasks.sources import task_rng

    cfg, learner, _, seed = prepare_test(run_dir(row), "cpu")
    out: dict[str, dict[str, np.ndarray]] = {}
    for col in FORECAST_DOMAINS:
        src = domain_source(col, "test", cfg.task)
        got: dict[str, list] = {k: [] for k in ("maml", "no_inner", "naive", "y")}
        for i in range(len(src)):
            t = src.task(i, task_rng(seed, "test", 0, i))
            got["maml"].append(learner.adapt(t.support_x, t.support_y)(t.query_x)[0])
            got["no_inner"].append(learner.adapt(t.support_x, t.support_y, steps=0)(t.query_x)[0])
            got["naive"].append(t.query_x[0, -1].expand(t.query_y.shape[-1]))
            got["y"].append(t.query_y[0])
        arr = {k: torch.stack(v).detach().double().numpy() for k, v in got.items()}
        y = arr.pop("y")
        # sMAPE is scale-free: the same on scaled windows as on the series
        out[col] = {**{f"smape/{k}": smape(y, v) for k, v in arr.items()},
                    **{f"mae/{k}": np.mean(np.abs(v - y), axis=-1) for k, v in arr.items()}}
    return row, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", nargs="+", default=list(FORECAST_ROWS))
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--name", default="forecast_transfer")
    args = ap.parse_args()
    t0 = time.perf_counter()
    seconds = train_rows("forecast_transfer", {r: f"forecast-maml-{r}" for r in args.rows},
                         args.steps, args.workers)
    got = dict(parallel(score_row, [(r,) for r in args.rows], args.workers))
    R, C = args.rows, list(FORECAST_DOMAINS)
    S = np.array([[got[r][c]["smape/maml"].mean() for c in C] for r in R])
    half = np.array([[ci(got[r][c]["smape/maml"])["ci95"] for c in C] for r in R])
    # each column relative to the row trained on that domain (1.0 on the diagonal)
    diag = {c: got[c][c]["smape/maml"].mean() for c in C if c in got}
    rel = np.array([[S[i, j] / diag[c] if c in diag else np.nan for j, c in enumerate(C)]
                    for i in range(len(R))])
    rows, details = [], {}
    for r in R:
        for c in C:
            g = got[r][c]
            kind = "in-domain" if FORECAST_ROWS[r] == (c,) else (
                "cross-domain" if c not in FORECAST_ROWS[r] else "in mixture")
            vs = (ci(g["smape/maml"] - got[c][c]["smape/maml"]) if c in got and r != c
                  else None)
            rows.append([r, c, kind, fmt(ci(g["smape/maml"])),
                         "—" if vs is None else f"{vs['mean']:+.2f} ± {vs['ci95']:.2f}",
                         fmt(ci(g["smape/no_inner"])), fmt(ci(g["smape/naive"])),
                         fmt(ci(g["mae/maml"]), 3), len(g["smape/maml"])])
            details[f"{r}->{c}"] = {k: ci(v) for k, v in g.items()}
            print(rows[-1], flush=True)
    monthly = [c for c in C if c.endswith("monthly")]
    cross = [[c, fmt(ci(got["yearly+quarterly"][c]["smape/maml"])),
              fmt(ci(got[c][c]["smape/maml"])),
              fmt(ci(got["yearly+quarterly"][c]["smape/maml"] - got[c][c]["smape/maml"])),
              fmt(ci(got["yearly+quarterly"][c]["smape/naive"]))]
             for c in monthly if "yearly+quarterly" in got and c in got]
    figs = Path(__file__).resolve().parent / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    from metaphi.plots.domains import transfer_matrix

    transfer_matrix({"sMAPE % after the inner loop": S}, R, C, figs / f"{args.name}.png",
                    ci={"sMAPE % after the inner loop": half}, label="sMAPE % (lower is better)",
                    title="MAML on N-BEATS: meta-train domain (rows) x meta-test domain "
                          "(columns), 4-step forecasts of unseen series")
    transfer_matrix({"sMAPE / sMAPE of the row trained on the column's domain": rel}, R, C,
                    figs / f"{args.name}_relative.png", label="ratio (1 = trained on target)",
                    fmt="{:.2f}", title="The cost of meta-training on another domain")
    setup = (f"MAML (second order, inner lr 0.01, 2 inner steps at meta-training, 3 at "
             f"meta-test) on N-BEATS (3 generic blocks of 2 layers, 128 units), MAE loss on "
             f"windows divided by their input's mean absolute value, 12 input values -> 4, "
             f"8 support windows per series among its 40 most recent, Adam 1e-3, meta-batch "
             f"16 series, {args.steps} outer steps per row, φ chosen on 300 meta-val tasks "
             f"every 250 steps (meta-val series of the row's own domains). Series split "
             f"70/10/20 per domain (split seed 0). sMAPE is computed per series on its 4 "
             f"forecasts (scale-free); MAE is on the scaled windows. Naive = last value; "
             f"'no inner loop' = φ's forecast without adaptation. Rows run two at a time, one "
             f"thread each; wall times measured on a 2-core machine.")
    write_result(
        args.name, "Forecasting transfer matrix: M3 and Tourism frequency subsets as domains",
        [{"title": "sMAPE % ± 95% CI over each column's meta-test series (every series once, "
                   "4-step forecasts); 'vs trained on target' = paired difference to the row "
                   "meta-trained on the column's domain",
          "columns": ["meta-train", "meta-test", "kind", "sMAPE", "vs trained on target",
                      "sMAPE, no inner loop", "sMAPE, Naive", "scaled MAE", "series"],
          "rows": rows, "notes": setup},
         {"title": "Cross-frequency meta-training: yearly + quarterly series of M3 and Tourism "
                   "-> monthly series, against MAML meta-trained on the target",
          "columns": ["meta-test", "yearly+quarterly", "trained on target",
                      "difference (paired)", "Naive"],
          "rows": cross, "notes": "Negative differences: the cross-frequency φ forecasts "
                                  "better than the one meta-trained on the target domain."}],
        time.perf_counter() - t0, topic="forecasting",
        question="How well does a forecaster meta-trained on one frequency or dataset transfer "
                 "to another, and can yearly and quarterly series teach monthly forecasting?",
        figures=[f"{args.name}.png", f"{args.name}_relative.png"], details=details,
        train_seconds=seconds, rows_domains={r: list(FORECAST_ROWS[r]) for r in R},
        steps=args.steps)


if __name__ == "__main__":
    main()
