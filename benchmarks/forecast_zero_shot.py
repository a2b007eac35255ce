"""Zero-shot FFORMA: meta-train the combination on other datasets' series only and forecast a
dataset it never saw (issue 4, target: M3 sMAPE <= 12.6, N-BEATS trained on FRED 12.62).

Sources are M1 (1001 series, the M3 competition's predecessor), Tourism, and both together; the
targets are M3 and Tourism. The in-dataset FFORMA and the plain-mean ensembles are listed
beside them for reference. Base forecasts come from the cache in benchmarks/_work/ (M1's are
fitted on the first run, ~15 min on 2 cores).

With ``--neural`` the N-BEATS-style neural ensemble is also meta-trained on M1 alone and applied
to M3 (about 17 minutes on 2 cores), and the equal-weight mean of the two zero-shot
meta-learners is scored as well (the same fixed rule as the in-dataset "FFORMA & NBeats-MAML
mean"; nothing in it is fitted on M3).

With ``--holdout-origins 1 3`` each source's FFORMA is meta-trained once per number of temporal
holdout origins (task augmentation: more meta-training tasks from the same source series; the
row is named 'FFORMA zero-shot (SOURCE, N origins)' for N > 1). ``--targets``/``--sources``
narrow the plan, ``--no-in-dataset`` skips the target's own holdout fits (and the in-dataset
FFORMA row), ``--name`` names the results file.

``--pools all strong`` meta-trains each source's FFORMA once per pool of base forecasters
(``strong`` = Naive2, Theta, DOTM, ETS, CES and ARIMA: the statsforecast ensemble's members,
the M3 winner and the OWA reference). The protocol fixed before either was run on M3: the
pool with the lower OWA on M1 -> Tourism (the validation target) is the one applied to
M1 -> M3, once (a row named '..., pool strong' for the non-default pool).

``--shrink`` adds, for each zero-shot FFORMA row, its equal-weight mean with the statsforecast
ensemble ('... & StatsEnsemble mean'): FFORMA's per-series weights shrunk halfway to the
ensemble's equal weights, fixed in advance. The protocol fixed before it was run on M3: adopted
for M1 -> M3 only if on M1 -> Tourism (the validation target) it has both a lower MAPE and a
lower OWA than the zero-shot FFORMA alone.

Run: python benchmarks/forecast_zero_shot.py [--neural]
     python benchmarks/forecast_zero_shot.py --targets M3 --sources M1 --holdout-origins 1 3 \
         --no-in-dataset --name forecast_zero_shot_origins
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402
import torch  # noqa: E402
from forecast_m3_tourism import PUBLISHED_M3, PUBLISHED_TOURISM, WORK, _r  # noqa: E402

from metaphi.forecasting.base import ALL_METHODS  # noqa: E402
from metaphi.forecasting.data import load_builtin  # noqa: E402
from metaphi.forecasting.evaluate import evaluate_forecasters, score  # noqa: E402
from metaphi.forecasting.fforma import ERRORS  # noqa: E402
from metaphi.forecasting.neural import NeuralConfig  # noqa: E402

REFERENCE = ("FFORMA", "StatsEnsemble", "Theta")
POOLS = {"all": ALL_METHODS, "strong": ["Naive2", "Theta", "DOTM", "ETS", "CES", "ARIMA"]}


def shrink_to_ensemble(ev) -> None:
    """Add '<zero-shot FFORMA row> & StatsEnsemble mean' forecasts and their scores to ``ev``."""
    fc = ev.forecasts
    rows = [k for k in next(iter(fc.values())) if k.startswith("FFORMA zero-shot")]
    new = {name: {f"{k} & StatsEnsemble mean": 0.5 * (f[k] + f["StatsEnsemble"]) for k in rows}
           for name, f in fc.items()}
    for name, f in fc.items():
        f.update(new[name])
    # score only the new rows (Naive2 rides along: OWA is relative to it)
    scored = score([SimpleNamespace(s=s) for s in ev.sets],
                   {name: {**new[name], **{k: v for k, v in fc[name].items() if k == "Naive2"}}
                    for name in fc})
    ev.metrics.update({k: scored[k] for k in next(iter(new.values()))})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--neural", action="store_true",
                    help="also meta-train the neural ensemble on M1 alone and forecast M3")
    ap.add_argument("--pretrain-steps", type=int, default=2000)
    ap.add_argument("--meta-steps", type=int, default=100)
    ap.add_argument("--targets", nargs="+", default=["M3", "Tourism"], choices=["M3", "Tourism"])
    ap.add_argument("--sources", nargs="+", default=None, metavar="SOURCE",
                    help="only these sources (e.g. M1 M1+Tourism)")
    ap.add_argument("--holdout-origins", nargs="+", type=int, default=[1], metavar="N",
                    help="FFORMA's temporal holdouts per source series (one row per value)")
    ap.add_argument("--no-in-dataset", action="store_true",
                    help="skip the target's own holdout fits and the in-dataset FFORMA row")
    ap.add_argument("--pools", nargs="+", default=["all"], choices=sorted(POOLS),
                    help="pools of base forecasters FFORMA combines, one zero-shot row each")
    ap.add_argument("--fforma-error", choices=ERRORS, default="owa",
                    help="holdout error FFORMA minimises (default: the paper's OWA)")
    ap.add_argument("--shrink", action="store_true",
                    help="also score each zero-shot FFORMA's equal-weight mean with StatsEnsemble")
    ap.add_argument("--name", default="forecast_zero_shot")
    ap.add_argument("--max-series", type=int, default=None,
                    help="first N series of each subset (smoke runs; not for the table)")
    args = ap.parse_args()
    if any(n < 1 for n in args.holdout_origins):
        ap.error("--holdout-origins: each value must be >= 1")
    torch.set_num_threads(1)  # the ensemble trains 2 members at a time, one per core
    t0 = time.perf_counter()
    data = {name: load_builtin(name.lower(), max_series=args.max_series)
            for name in ("M3", "Tourism", "M1")}
    plan = {"M3": ("sMAPE", PUBLISHED_M3, {"Tourism": data["Tourism"], "M1": data["M1"],
                                           "M1+Tourism": data["M1"] + data["Tourism"]}),
            "Tourism": ("MAPE", PUBLISHED_TOURISM, {"M3": data["M3"], "M1": data["M1"],
                                                    "M1+M3": data["M1"] + data["M3"]})}
    plan = {t: plan[t] for t in args.targets}
    if args.sources:
        known = {src for _, _, srcs in plan.values() for src in srcs}
        if set(args.sources) - known:
            ap.error(f"--sources: {sorted(set(args.sources) - known)} are not sources of "
                     f"{args.targets}; choose from {sorted(known)}")
        plan = {t: (m, p, {k: v for k, v in srcs.items() if k in args.sources})
                for t, (m, p, srcs) in plan.items()}
    tables, timing = [], {}
    for target, (metric, published, sources) in plan.items():
        t = time.perf_counter()
        timing[target] = {}
        runs = [(n, pool) for pool in args.pools for n in args.holdout_origins]
        for i, (n, pool) in enumerate(runs):
            tag = (f", {n} origins" if n > 1 else "") + (f", pool {pool}" if pool != "all" else "")
            named = {f"{k}{tag}": v for k, v in sources.items()}
            meta = () if args.no_in_dataset or i else ("fforma",)
            ev_i = evaluate_forecasters(data[target], methods=POOLS[pool], meta=meta,
                                        zero_shot=("fforma",), sources=named, cache_dir=WORK,
                                        seed=0, progress=True, holdout_origins=n,
                                        fforma_error=args.fforma_error)
            timing[target].update({k: round(v, 1) for k, v in ev_i.timings.items()})
            if i == 0:
                ev = ev_i
            else:
                ev.metrics.update({k: v for k, v in ev_i.metrics.items() if "zero-shot" in k})
        if args.neural and target == "M3":
            cfg = NeuralConfig.nbeats_ensemble(seed=0, workers=2)
            cfg.pretrain_steps, cfg.meta_steps = args.pretrain_steps, args.meta_steps
            ev_n = evaluate_forecasters(data[target], methods=ALL_METHODS,
                                        meta=(),  # in-dataset: above
                                        zero_shot=("fforma", "neural"), sources={"M1": data["M1"]},
                                        neural_config=cfg, cache_dir=WORK, seed=0, progress=True)
            ev.metrics.update({k: v for k, v in ev_n.metrics.items() if "NBeats" in k})
            timing[target]["neural zero-shot from M1"] = round(
                ev_n.timings["neural zero-shot from M1"], 1)
        if args.shrink:
            shrink_to_ensemble(ev)
        print(f"{target} done in {time.perf_counter() - t:.0f} s", flush=True)
        subsets = [s.name for s in ev.sets]
        keep = [k for k in ev.metrics if k in REFERENCE or "zero-shot" in k]
        keep.sort(key=lambda k: ev.metrics[k]["Average"][metric])
        cols = ["method"] + [s.split("-", 1)[1] for s in subsets] + ["Average", "OWA"]
        tables.append({
            "title": f"{target}: zero-shot FFORMA, {metric} by subset (measured)",
            "columns": cols,
            "rows": [[k] + [_r(ev.metrics[k][s][metric]) for s in subsets + ["Average"]]
                     + [_r(ev.metrics[k]["Average"]["OWA"])] for k in keep],
            "notes": ("'FFORMA zero-shot (X)' = the LightGBM combination trained only on the "
                      "temporal holdouts of dataset X's series, then applied to the target's "
                      "base forecasts; 'NBeats-MAML zero-shot (M1)' = the 18-member neural "
                      "ensemble meta-trained on M1's histories only (same season length), and "
                      "'FFORMA & NBeats-MAML mean zero-shot (M1)' the equal-weight mean of the "
                      "two M1-trained meta-learners; FFORMA / StatsEnsemble / Theta are the "
                      "in-dataset references from the same base forecasts. Average weights each "
                      "subset by series x horizon."
                      + (" '... & StatsEnsemble mean' (--shrink) = the equal-weight mean of "
                         "that zero-shot FFORMA and the statsforecast ensemble (FFORMA's weights "
                         "shrunk halfway to equal weights; fixed in advance, nothing fitted on "
                         "the target)." if args.shrink else ""))})
        tables.append({"title": f"{target}: published zero-shot rows (not measured here)",
                       "columns": ["method", "Average"],
                       "rows": [[k, v[-1]] for k, v in published.items() if "zero-shot" in k]})
    neural_note = (f" Neural zero-shot (--neural): NeuralConfig.nbeats_ensemble (18 members), "
                   f"{args.pretrain_steps} pretraining + {args.meta_steps} MAML steps each."
                   if args.neural else "")
    write_result(args.name, "Forecasting: zero-shot FFORMA from other datasets"
                 + (f", {' / '.join(map(str, args.holdout_origins))} holdout origins"
                    if args.holdout_origins != [1] else "")
                 + (f", base-forecaster pools {' / '.join(args.pools)}"
                    if args.pools != ["all"] else "")
                 + (", and its mean with the statsforecast ensemble" if args.shrink else ""),
                 tables, time.perf_counter() - t0, topic="forecasting", timing=timing,
                 notes="Base forecasters as in the M3/Tourism table (statsforecast 2.1.1, 12 "
                       "methods); FFORMA = mean of 5 LightGBM boosters, seed 0, minimising "
                       f"the holdout {args.fforma_error.upper()}." + neural_note)


if __name__ == "__main__":
    main()
