"""M3 (3003 series) and Tourism (1311 series): every base forecaster and both meta-learners,
in-dataset and zero-shot (meta-trained on the other dataset), beside the published numbers.

Run (about two hours on 2 cores the first time, most of it AutoARIMA and AutoCES; base forecasts
are cached in benchmarks/_work/ and a rerun takes about 10 minutes):
    nice -n 10 python benchmarks/forecast_m3_tourism.py
Quick smoke run (not written to results/):  python benchmarks/forecast_m3_tourism.py --max-series 20
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from metaphi.forecasting.base import ALL_METHODS  # noqa: E402
from metaphi.forecasting.data import load_builtin  # noqa: E402
from metaphi.forecasting.evaluate import evaluate_forecasters  # noqa: E402
from metaphi.forecasting.fforma import ERRORS  # noqa: E402
from metaphi.forecasting.neural import NeuralConfig  # noqa: E402

WORK = Path(__file__).resolve().parent / "_work"

# Published numbers (not measured here): M3 sMAPE Yearly/Quarterly/Monthly/Other/Average, and
# Tourism MAPE Yearly/Quarterly/Monthly/Average; None where a paper gives no value.
PUBLISHED_M3 = {
    "Naive2 (M3 paper)": [17.88, 9.95, 16.91, 6.30, 15.47],
    "Theta (M3 winner)": [16.90, 8.96, 13.85, 4.41, 13.01],
    "DOTM (Fiorucci et al.)": [15.94, 9.28, 13.74, 4.58, 12.90],
    "EXP (Spiliotis et al.)": [16.39, 8.98, 13.43, 5.46, 12.71],
    "statsforecast ensemble": [None, None, None, None, 12.63],
    "N-BEATS-I+G (ensemble of 180)": [15.93, 8.84, 13.11, 4.24, 12.37],
    "N-BEATS zero-shot from M4": [15.09, 9.09, 13.19, None, 12.39],
    "N-BEATS zero-shot from FRED": [16.47, 9.08, 13.31, None, 12.62],
}
PUBLISHED_TOURISM = {
    "SeasonalNaive (Athanasopoulos et al.)": [None, None, None, 21.25],
    "Theta": [None, None, None, 20.88],
    "ForecastPro": [None, None, None, 19.84],
    "N-BEATS-G": [None, None, None, 18.47],
    "N-BEATS-I+G": [None, None, None, 18.52],
    "N-BEATS zero-shot from M4": [None, None, None, 18.82],
    "N-BEATS zero-shot from FRED": [None, None, None, 19.46],
}


def _r(v):
    return None if v is None else round(float(v), 3)


def tables_for(ev, label: str, main_metric: str, published: dict[str, list]) -> list[dict]:
    subsets = [s.name for s in ev.sets]
    cols = ["method"] + [s.split("-", 1)[1] for s in subsets] + ["Average"]
    rows = []
    order = sorted(ev.metrics, key=lambda k: ev.metrics[k]["Average"][main_metric])
    for k in order:
        rows.append([k] + [_r(ev.metrics[k][s][main_metric]) for s in subsets + ["Average"]])
    t_main = {"title": f"{label}: {main_metric} by subset (measured; sorted by average)",
              "columns": cols, "rows": rows,
              "notes": "Average weights each subset by series x horizon."}
    t_pub = {"title": f"{label}: published {main_metric} (from the papers, not measured here)",
             "columns": cols, "rows": [[k] + v for k, v in published.items()]}
    t_all = {"title": f"{label}: all metrics, weighted average (measured)",
             "columns": ["method", "sMAPE", "MAPE", "MASE", "OWA"],
             "rows": [[k] + [_r(ev.metrics[k]["Average"].get(m)) for m in
                             ("sMAPE", "MAPE", "MASE", "OWA")] for k in order]}
    return [t_main, t_pub, t_all]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--max-series", type=int, default=None)
    ap.add_argument("--pretrain-steps", type=int, default=None)
    ap.add_argument("--meta-steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ensemble", action="store_true",
                    help="neural forecaster = the N-BEATS-style ensemble of 18 members "
                         "(NeuralConfig.nbeats_ensemble), trained 2 at a time")
    ap.add_argument("--no-stack", action="store_true",
                    help="skip FFORMA+NBeats (FFORMA with the neural model as a base forecaster)")
    ap.add_argument("--datasets", nargs="+", choices=["M3", "Tourism"], default=["M3", "Tourism"],
                    help="targets to run (each still uses the other as its zero-shot source)")
    ap.add_argument("--tourism-losses", default="mape",
                    help="training losses of Tourism's neural ensemble, comma-separated (default: "
                         "N-BEATS' mape). mae won on Tourism's temporal holdout "
                         "(forecast_neural_validation.py) but lost on the test MAPE, 22.33 vs 21.34")
    ap.add_argument("--m3-bags", type=int, default=1,
                    help="seeds per (lookback, loss) pair of M3's neural ensemble (default 1: "
                         "18 members; N-BEATS used 10)")
    ap.add_argument("--tourism-nbeats-g", type=int, default=None, metavar="BAGS",
                    help="Tourism's neural ensemble with N-BEATS-G's published per-subset "
                         "settings (NeuralConfig.nbeats_g: 30 blocks of 512, batch 1024, 30/100/"
                         "100 iterations) and BAGS seeds per lookback (the paper's 10)")
    ap.add_argument("--no-neural-zero-shot", action="store_true",
                    help="zero-shot rows for FFORMA only (skips the neural fits on the source)")
    ap.add_argument("--fforma-error", choices=ERRORS, default="owa",
                    help="holdout error FFORMA minimises (default: the paper's OWA)")
    ap.add_argument("--name", default="forecast_m3_tourism", help="results/<name>.json")
    args = ap.parse_args()
    # one thread: the networks are small and the 2 cores are shared with the other jobs
    torch.set_num_threads(1)
    cfg = NeuralConfig(seed=args.seed)
    # N-BEATS trained its M3 ensemble on sMAPE, MAPE and MASE, its Tourism one on MAPE, the
    # dataset's metric: the same here, with 3 seeds per pair for Tourism to keep 18 members.
    ens = {"M3": NeuralConfig.nbeats_ensemble(bags=args.m3_bags, seed=args.seed, workers=2),
           "Tourism": NeuralConfig.nbeats_ensemble(losses=tuple(args.tourism_losses.split(",")),
                                                   bags=3, seed=args.seed, workers=2)}
    for c in (cfg, *ens.values()):
        if args.pretrain_steps is not None:
            c.pretrain_steps = args.pretrain_steps
        if args.meta_steps is not None:
            c.meta_steps = args.meta_steps
    neural = {name: ens[name] if args.ensemble else cfg for name in ens}
    if args.tourism_nbeats_g:
        neural["Tourism"] = {
            f"tourism-{s}": NeuralConfig.nbeats_g(f"tourism-{s}", bags=args.tourism_nbeats_g,
                                                  seed=args.seed, workers=2,
                                                  **({} if args.meta_steps is None
                                                     else {"meta_steps": args.meta_steps}))
            for s in ("yearly", "quarterly", "monthly")}
    t0 = time.perf_counter()
    m3 = load_builtin("m3", max_series=args.max_series)
    tourism = load_builtin("tourism", max_series=args.max_series)
    runs = {}
    for name, sets, src_name, src in (("M3", m3, "Tourism", tourism),
                                      ("Tourism", tourism, "M3", m3)):
        if name not in args.datasets:
            continue
        t = time.perf_counter()
        ev = evaluate_forecasters(
            sets, methods=ALL_METHODS, meta=("fforma", "neural"), sources={src_name: src},
            neural_config=neural[name], cache_dir=WORK, seed=args.seed, progress=True,
            stack_neural=not args.no_stack,
            zero_shot=("fforma",) if args.no_neural_zero_shot else None,
            fforma_error=args.fforma_error)
        runs[name] = (ev, time.perf_counter() - t)
        print(f"{name} done in {runs[name][1]:.0f} s", flush=True)
    wall = time.perf_counter() - t0
    tables = []
    timing = {}
    for name, (ev, secs) in runs.items():
        metric = "sMAPE" if name == "M3" else "MAPE"
        tables += tables_for(ev, name, metric, PUBLISHED_M3 if name == "M3" else PUBLISHED_TOURISM)
        base_fit = sum(v for k, v in ev.timings.items()
                       if k.startswith("base forecasters") and "source" not in k)
        cached = sum(v for k, v in ev.timings.items() if k.startswith("base forecasters"))
        timing[name] = {"this_run_seconds": round(secs, 1),
                        "base_forecaster_fit_seconds_when_cached": round(base_fit, 1),
                        "stages": {k: round(v, 1) for k, v in ev.timings.items()}}
        tables.append({
            "title": f"{name}: wall time (2 CPU cores, shared)",
            "columns": ["stage", "seconds"],
            "rows": [[k, round(v, 1)] for k, v in ev.timings.items()]
            + [["whole run = this run + fitting the cached base forecasters",
                round(secs + base_fit, 1)]],
            "notes": ("Base-forecaster rows give the seconds the fits took when the cache in "
                      "benchmarks/_work/ was filled (same machine, same code); on a rerun they "
                      f"are read from disk. Sum of cached fitting times incl. source data: "
                      f"{cached:.0f} s.")})
    # the settings an ensemble's members share (their lookback, loss and seed vary)
    per_member = ("lookback", "loss", "lookbacks", "losses", "bags")
    if args.tourism_nbeats_g:
        neural_desc = ("Tourism's neural ensemble (--tourism-nbeats-g): N-BEATS-G's published "
                       "per-subset settings, " + "; ".join(
                           f"{k}: {len(c.members())} members, lookbacks {c.lookbacks} (x h) x "
                           f"losses {c.losses} x {c.bags} seed(s), {c.pretrain_steps} steps of "
                           f"batch {c.batch_size}, windows ending in the last {c.recent} h, "
                           f"{c.blocks} blocks x {c.layers} layers of {c.width}"
                           for k, c in neural["Tourism"].items())
                       + "; each member meta-trained and adapted on its own, the forecast the "
                       "median over the members. ")
        shared = {k: v for k, v in neural["Tourism"]["tourism-monthly"].__dict__.items()
                  if k not in per_member + ("pretrain_steps", "recent", "seed")}
    elif args.ensemble:
        neural_desc = ("Neural ensemble (--ensemble): per dataset " + "; ".join(
            f"{name}: {len(c.members())} members, lookbacks {c.lookbacks} (x h) x losses "
            f"{c.losses} x {c.bags} seed(s)" for name, c in neural.items()
            if name in args.datasets)
            + ", each member a NeuralForecaster meta-trained and adapted on its own, the "
            "forecast the median over the members (the N-BEATS papers ensemble 180 models). ")
        shared = {k: v for k, v in neural["M3"].__dict__.items() if k not in per_member}
    else:
        neural_desc = "Single model, single seed; N-BEATS papers ensemble 180 models. "
        shared = cfg.__dict__
    notes = (
        "Base forecasters: statsforecast 2.1.1 (Naive, SeasonalNaive, RWD, SES, Holt, Damped, "
        "AutoETS = ETS, Theta, DynamicOptimizedTheta = DOTM, AutoCES = CES, AutoARIMA = ARIMA) "
        "plus Naive2 (own numpy code). "
        "Mean = plain mean of the 12 base forecasts; StatsEnsemble = plain mean of ETS, ARIMA, "
        "CES and DOTM (statsforecast's published ensemble); HoldoutBest = per series the "
        "forecaster with the lowest error on that series' own last-h holdout; FFORMA = LightGBM "
        "softmax weights trained on the dataset's temporal holdouts (32 numpy features), the "
        "mean of 5 boosters with different seeds and validation splits; FFORMA-select "
        "= its largest-weight forecaster. FFORMA+NBeats = FFORMA with NBeats-MAML as a 13th "
        "base forecaster (the neural model refitted on the holdout histories to get its holdout "
        "errors); FFORMA & NBeats-MAML mean = the equal-weight mean of the two forecasts, a rule "
        "fixed in advance. NBeats-global = one small N-BEATS-style network per "
        "frequency trained on windows of the training histories; NBeats-MAML = the same after "
        "MAML meta-training and per-series inner-loop adaptation on the series' own windows. "
        "'zero-shot (X)' = meta-trained only on dataset X's series (for the neural model: "
        "X's series of the same season length, cut into windows of the target's horizon). "
        + neural_desc + f"Neural config: {shared}.")
    if args.max_series:
        print(f"smoke run with --max-series {args.max_series}: not written to results/")
        for tb in tables:
            print(tb["title"])
            for row in tb["rows"][:30]:
                print("   ", row)
        return
    write_result(args.name,
                 f"Forecasting: {' and '.join(args.datasets)}, base forecasters vs meta-learners",
                 tables, wall, notes, topic="forecasting", timing=timing,
                 logs={k: {kk: str(vv) for kk, vv in ev.logs.items()} for k, (ev, _) in runs.items()})


if __name__ == "__main__":
    main()
