"""``metaphi forecast``: forecast a built-in dataset or a user's long-format file.

Writes ``forecasts.csv`` (one row per series and horizon step, one column per method, plus the
held-out truth; with ``--future`` the steps after the end of the data), ``results.json`` (every
metric per subset and the weighted average, timings) and ``forecasts_<subset>.png`` (history,
forecasts and truth for a sample of series).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .base import ALL_METHODS, DEFAULT_METHODS
from .data import builtin_names, load_builtin, load_user
from .fforma import ERRORS


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "forecast", help="forecast a built-in dataset (m3, tourism, m1, ...) or a CSV/Parquet file",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help=f"built-in dataset ({', '.join(builtin_names())}) or a long-format "
                                "CSV/Parquet file with columns unique_id, ds, y")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--horizon", type=int, help="forecast horizon (required for a file)")
    p.add_argument("--freq", help="frequency of a file's series: Y, Q, M, W, D or H")
    p.add_argument("--season-length", type=int, help="season length (overrides --freq)")
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, metavar="METHOD",
                   help=f"base forecasters, from {ALL_METHODS} (default: %(default)s)")
    p.add_argument("--meta", nargs="+", default=["fforma"], choices=["fforma", "neural", "none"],
                   help="meta-learners to run (default: fforma)")
    p.add_argument("--stack", action="store_true",
                   help="with --meta fforma neural: also FFORMA over the base forecasters plus "
                        "the neural one (one more neural fit)")
    p.add_argument("--future", action="store_true",
                   help="forecast the next --horizon values after the end of a file's series "
                        "(nothing is held out or scored; the meta-learners still train on each "
                        "series' own temporal holdout)")
    p.add_argument("--holdout-origins", type=int, default=1, metavar="N",
                   help="task augmentation for FFORMA: a temporal holdout at N origins, h apart, "
                        "per series (one more round of base-forecaster fits per origin; "
                        "default: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-series", type=int, help="first N series of each subset (quick runs)")
    p.add_argument("--plot-series", type=int, default=6, help="series per PNG (default: 6)")
    p.add_argument("--neural-steps", type=int, default=None,
                   help="pretraining steps of the neural forecaster (default: its config)")
    p.add_argument("--ensemble", action="store_true",
                   help="neural forecaster as an N-BEATS-style ensemble: one member per lookback "
                        "(2..7 horizons) and loss (sMAPE, MAPE, MASE), median forecast, members "
                        "trained on all cores (18x the cost of one model)")
    p.add_argument("--nbeats-g", type=int, default=None, metavar="BAGS",
                   help="neural forecaster with N-BEATS-G's published settings for each subset "
                        "of a built-in dataset (30 blocks of 512, batch 1024, the paper's "
                        "iterations and losses; lookbacks 2..7 x BAGS seeds, the paper's 10)")
    p.add_argument("--fforma-error", choices=ERRORS, default="owa",
                   help="holdout error FFORMA minimises: owa (the paper's, default), or smape / "
                        "mape for data scored by that metric alone")
    p.add_argument("--neural-loss", nargs="+", default=None, metavar="LOSS",
                   help="training loss of the neural forecaster: mae, smape, mape or mase; with "
                        "--ensemble one member per lookback and loss (default: mae for one "
                        "model; smape mape mase for the ensemble, N-BEATS' M3 recipe)")
    p.add_argument("--cache-dir", default=None, help="cache base forecasts here for reruns")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from .evaluate import evaluate
    from .neural import NeuralConfig
    from .plots import plot_forecasts

    try:
        if args.data.lower() in builtin_names():
            if args.future:
                raise ValueError("--future forecasts beyond the end of a user's file; the "
                                 "built-in datasets are scored on their official test values")
            sets = load_builtin(args.data, max_series=args.max_series)
        else:
            if args.horizon is None:
                raise ValueError("--horizon is required for a user file")
            one = load_user(args.data, args.horizon, args.season_length, args.freq,
                            holdout=not args.future)
            if args.max_series:
                one = one.subset(range(min(args.max_series, len(one))))
            sets = [one]
        meta = tuple(m for m in args.meta if m != "none")
        losses = tuple(args.neural_loss or ())
        if args.ensemble:
            cfg = NeuralConfig.nbeats_ensemble(seed=args.seed, **({"losses": losses} if losses
                                                                  else {}))
        elif len(losses) > 1:
            raise ValueError(f"--neural-loss got {len(losses)} losses: several losses make an "
                             "ensemble (one member each), so add --ensemble or give one loss")
        else:
            cfg = NeuralConfig(seed=args.seed, **({"loss": losses[0]} if losses else {}))
        if args.neural_steps is not None:
            cfg.pretrain_steps = args.neural_steps
            cfg.meta_steps = max(1, args.neural_steps // 10)
        if args.nbeats_g is not None:
            if args.ensemble or losses or args.neural_steps is not None:
                raise ValueError("--nbeats-g sets the whole neural ensemble; leave out "
                                 "--ensemble, --neural-loss and --neural-steps")
            cfg = {s.name: NeuralConfig.nbeats_g(s.name, bags=args.nbeats_g, seed=args.seed)
                   for s in sets}
        ev = evaluate(sets, list(args.methods), meta=meta, neural_config=cfg,
                      cache_dir=args.cache_dir, seed=args.seed, progress=not args.no_progress,
                      stack_neural=args.stack, truth=not args.future,
                      holdout_origins=args.holdout_origins, fforma_error=args.fforma_error)
    except (ValueError, FileNotFoundError) as e:
        print(f"metaphi forecast: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(ev, out / "forecasts.csv")
    (out / "results.json").write_text(json.dumps({
        "data": args.data, "methods": ev.methods, "metrics": ev.metrics, "timings": ev.timings,
        "logs": ev.logs, "seed": args.seed}, indent=2, default=str) + "\n")
    avg = {k: v["Average"] for k, v in ev.metrics.items()}
    key = "OWA" if all("OWA" in v for v in avg.values()) else "sMAPE"
    best = sorted(avg, key=lambda k: avg[k][key])
    for s in sets:
        shown = [k for k in best if k in ev.forecasts[s.name]][:3]
        shown += [k for k in ("FFORMA", "NBeats-MAML", "Theta") if k in ev.forecasts[s.name]
                  and k not in shown][:max(1, 4 - len(shown))]
        plot_forecasts(s, ev.forecasts[s.name], out / f"forecasts_{s.name}.png",
                       n=args.plot_series, seed=args.seed, methods=shown)
    if args.future:
        print(f"forecast the next {sets[0].h} values of {len(sets[0])} series with "
              f"{', '.join(ev.methods)}")
    else:
        print(f"{'method':<24}" + "".join(f"{m:>9}" for m in ("sMAPE", "MAPE", "MASE", "OWA")))
        for k in best:
            print(f"{k:<24}" + "".join(f"{avg[k].get(m, float('nan')):9.3f}"
                                       for m in ("sMAPE", "MAPE", "MASE", "OWA")))
    print(f"wrote {out / 'forecasts.csv'}, {out / 'results.json'} and {len(sets)} PNG(s)")
    return 0


def write_csv(ev, path: Path) -> None:
    import pandas as pd

    frames = []
    for s in ev.sets:
        n, h = len(s), s.h
        cols = {"subset": s.name, "unique_id": np.repeat(s.ids, h),
                "step": np.tile(np.arange(1, h + 1), n)}
        if s.test_ds is not None:
            cols["ds"] = np.concatenate(s.test_ds)
        if s.test is not None:
            cols["y"] = np.concatenate(s.test)
        for k, f in ev.forecasts[s.name].items():
            cols[k] = np.asarray(f).ravel()
        frames.append(pd.DataFrame(cols))
    pd.concat(frames, ignore_index=True).to_csv(path, index=False)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (``python -m metaphi.forecasting.cli``)."""
    parser = argparse.ArgumentParser(prog="metaphi")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
