"""``metaphi forecast``: forecast a built-in dataset or a user's long-format file.

  metaphi forecast DATA --out DIR                      fit and forecast in one go (scored)
  metaphi forecast fit DATA --out MODEL_DIR            meta-train and save the model
  metaphi forecast predict MODEL_DIR DATA --out DIR    forecast other series with a saved model

DATA is a built-in dataset (m3, tourism, m1, or a subset such as m3-monthly) or a CSV/Parquet
file with columns unique_id, ds, y. A forecast writes ``forecasts.csv`` (one row per series and
horizon step with its timestamp, one column per method, plus the held-out truth; with
``--future`` the steps after the end of the data), ``results.json`` (every metric per subset and
the weighted average, timings) and ``forecasts_<subset>.png`` (history, the meta-learner, the
best base forecaster and the truth for a sample of series, on the series' own dates).

Work is done in chunks cached under ``DIR/cache`` (or ``--cache-dir``): a run that was killed
resumes where it stopped when started again with the same data and options (fit removes its
default cache once the model is saved).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from ..files import atomic_write_bytes
from ..runs.config import ConfigError
from .base import ALL_METHODS, DEFAULT_METHODS
from .config import ForecastOptions
from .data import builtin_names, is_builtin, load_sets
from .fforma import ERRORS

# options that a saved model fixes (predict) and those only a forecast uses (fit)
_MODEL_OPTIONS = ("methods", "meta", "stack", "holdout_origins", "neural_steps", "ensemble",
                  "nbeats_g", "fforma_error", "neural_loss", "fallback")
_FORECAST_ONLY = ("future", "stack", "plot_series", "nbeats_g")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "forecast", help="forecast a built-in dataset (m3, tourism, m1, ...) or a CSV/Parquet "
        "file; `forecast fit` / `forecast predict` save a model and reuse it",
        usage="metaphi forecast [fit | predict MODEL_DIR] DATA --out DIR [options]",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("args", nargs="+", metavar="DATA | fit DATA | predict MODEL_DIR DATA",
                   help=f"built-in dataset ({', '.join(builtin_names())}) or a long-format "
                        "CSV/Parquet file with columns unique_id, ds, y")
    p.add_argument("--out", required=True, help="output folder (fit: the model's folder)")
    p.add_argument("--horizon", type=int, help="forecast horizon (a file: required unless --freq "
                   "has a standard one; predict: default the model's)")
    p.add_argument("--freq", help="frequency of a file's series: any pandas offset alias (MS, "
                   "QS-DEC, W-SUN, D, h, 15min ...); checked against the dates, and sets the "
                   "season length (MS: 12, QS: 4, W: 52, D: 7, h: 24)")
    p.add_argument("--season-length", type=int, help="season length (overrides --freq)")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help=f"base forecasters, from {ALL_METHODS}, or the pools 'default' (fast: "
                        f"{' '.join(DEFAULT_METHODS)}) and 'all' (adds AutoETS and AutoARIMA, "
                        "10-100x slower)")
    p.add_argument("--meta", nargs="+", default=None, choices=["fforma", "neural", "none"],
                   help="meta-learners to run (default: fforma)")
    p.add_argument("--fallback", choices=["error", "mean"], default=None,
                   help="fewer than 10 series for FFORMA: stop with an error (default), or use "
                        "the mean of the base forecasters instead")
    p.add_argument("--stack", action="store_true",
                   help="with --meta fforma neural: also FFORMA over the base forecasters plus "
                        "the neural one (one more neural fit)")
    p.add_argument("--future", action="store_true",
                   help="forecast the next --horizon values after the end of a file's series "
                        "(nothing is held out or scored; the meta-learners still train on each "
                        "series' own temporal holdout)")
    p.add_argument("--holdout-origins", type=int, default=None, metavar="N",
                   help="task augmentation for FFORMA: a temporal holdout at N origins, h apart, "
                        "per series (one more round of base-forecaster fits per origin; "
                        "default: 1)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-series", type=int, help="first N series of each subset (quick runs)")
    p.add_argument("--plot-series", type=int, default=None, help="series per PNG (default: 6)")
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
    p.add_argument("--fforma-error", choices=ERRORS, default=None,
                   help="holdout error FFORMA minimises: owa (the paper's, default), or smape / "
                        "mape for data scored by that metric alone")
    p.add_argument("--neural-loss", nargs="+", default=None, metavar="LOSS",
                   help="training loss of the neural forecaster: mae, smape, mape or mase; with "
                        "--ensemble one member per lookback and loss (default: mae for one "
                        "model; smape mape mase for the ensemble, N-BEATS' M3 recipe)")
    p.add_argument("--cache-dir", default=None,
                   help="where the chunks of finished work are kept (default: OUT/cache); a "
                        "rerun reuses them and fits only what is missing")
    p.add_argument("--n-jobs", type=int, default=None,
                   help="processes for the base forecasters and the neural ensemble's members "
                        "(default: all cores)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="series per unit of resumable work (default: 500)")
    p.add_argument("--backend", choices=["local", "dask"], default=None,
                   help="where the base forecasters run: this machine (default) or a Dask "
                        "cluster through statsforecast's Fugue backend (--dask-address)")
    p.add_argument("--dask-address", default=None, metavar="tcp://HOST:PORT",
                   help="the Dask scheduler for --backend dask")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--debug", action="store_true",
                   help="show the Python traceback of an error (also METAPHI_DEBUG=1)")
    p.set_defaults(func=run)
    return p


def _mode(args: list[str]) -> tuple[str, str, str | None]:
    """(``forecast`` | ``fit`` | ``predict``, DATA, MODEL_DIR) from the positional arguments."""
    if args[0] == "fit":
        if len(args) != 2:
            raise ValueError("usage: metaphi forecast fit DATA --out MODEL_DIR [options]")
        return "fit", args[1], None
    if args[0] == "predict":
        if len(args) != 3:
            raise ValueError("usage: metaphi forecast predict MODEL_DIR DATA --out DIR "
                             "[--horizon H] [options]")
        return "predict", args[2], args[1]
    if len(args) != 1:
        raise ValueError(f"unexpected arguments {args[1:]}: give one DATA, or `fit DATA`, or "
                         "`predict MODEL_DIR DATA`")
    return "forecast", args[0], None


def _given(args: argparse.Namespace, names) -> list[str]:
    return ["--" + k.replace("_", "-") for k in names
            if getattr(args, k, None) not in (None, False)]


def _prepare_out(out: str) -> Path:
    """The output folder, created and checked writable before any work."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} is a file; give a folder (it is created if needed)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {path}: cannot create the folder ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"--out {path}: the folder is not writable")
    return path


def run(args: argparse.Namespace) -> int:
    debug = getattr(args, "debug", False) or os.environ.get("METAPHI_DEBUG") not in (None, "", "0")
    try:
        mode, data, model_dir = _mode(args.args)
        opts = ForecastOptions.from_args({k: v for k, v in vars(args).items() if v is not None})
        if mode == "predict" and _given(args, _MODEL_OPTIONS):
            raise ValueError(f"{', '.join(_given(args, _MODEL_OPTIONS))}: a saved model fixes "
                             "its base forecasters and meta-learners; leave these out with "
                             "predict (fit another model to change them)")
        if mode == "fit" and _given(args, _FORECAST_ONLY):
            raise ValueError(f"{', '.join(_given(args, _FORECAST_ONLY))}: not options of fit "
                             "(give --future and --plot-series to predict)")
        if mode == "predict" and not Path(model_dir).is_dir():
            raise ValueError(f"MODEL_DIR {model_dir} is not a folder with a saved model (make "
                             "one with `metaphi forecast fit DATA --out MODEL_DIR`)")
        out = _prepare_out(args.out)
        cache = Path(opts.cache_dir) if opts.cache_dir else out / "cache"
        progress = not args.no_progress
        if mode == "fit":
            return _fit(data, opts, out, cache, progress)
        return _forecast(mode, data, model_dir, opts, out, cache, progress)
    except (ConfigError, ValueError, OSError) as e:
        if debug:
            raise
        print(f"metaphi forecast: error: {e}", file=sys.stderr)
        return 2


def _neural_config(opts: ForecastOptions, sets):
    """The neural forecaster's config from the options (one, or one per subset)."""
    from .neural import NeuralConfig

    losses = tuple(opts.neural_loss or ())
    workers = None if opts.n_jobs == -1 else opts.n_jobs  # None: all cores
    if opts.nbeats_g is not None:
        if opts.ensemble or losses or opts.neural_steps is not None:
            raise ValueError("--nbeats-g sets the whole neural ensemble; leave out "
                             "--ensemble, --neural-loss and --neural-steps")
        return {s.name: NeuralConfig.nbeats_g(s.name, bags=opts.nbeats_g, seed=opts.seed,
                                              workers=workers) for s in sets}
    if opts.ensemble:
        cfg = NeuralConfig.nbeats_ensemble(seed=opts.seed, workers=workers,
                                           **({"losses": losses} if losses else {}))
    elif len(losses) > 1:
        raise ValueError(f"--neural-loss got {len(losses)} losses: several losses make an "
                         "ensemble (one member each), so add --ensemble or give one loss")
    else:
        cfg = NeuralConfig(seed=opts.seed, **({"loss": losses[0]} if losses else {}))
    if opts.neural_steps is not None:
        cfg = cfg.updated(pretrain_steps=opts.neural_steps,
                          meta_steps=max(1, opts.neural_steps // 10))
    return cfg


def _meta(opts: ForecastOptions) -> tuple[str, ...]:
    return tuple(m for m in opts.meta if m != "none")


def _fit(data: str, opts: ForecastOptions, out: Path, cache: Path, progress: bool) -> int:
    from .model import FFORMA

    meta = _meta(opts)
    if not meta:
        raise ValueError("--meta none: a saved model needs a meta-learner (fforma, neural)")
    sets = (load_sets(data, opts.horizon, max_series=opts.max_series) if is_builtin(data) else
            load_sets(data, opts.horizon, opts.season_length, opts.freq, future=True,
                      max_series=opts.max_series))
    neural = _neural_config(opts, sets) if "neural" in meta else None
    if isinstance(neural, dict):
        raise ValueError("--nbeats-g gives each subset its own settings; fit takes one neural "
                         "config (use --ensemble)")
    model = FFORMA(methods=opts.methods, freq=opts.freq, season_length=opts.season_length,
                   neural=neural, fforma="fforma" in meta, fforma_error=opts.fforma_error,
                   holdout_origins=opts.holdout_origins, seed=opts.seed,
                   fallback=opts.fallback,
                   n_jobs=opts.n_jobs, cache_dir=cache, chunk_size=opts.chunk_size,
                   backend=opts.backend, dask_address=opts.dask_address, progress=progress)
    model.fit_sets(sets)
    model.save(out)
    if opts.cache_dir is None:  # the model folder stays small; the chunks served a resume
        shutil.rmtree(cache, ignore_errors=True)
    what = [] if model.weights is None else ["FFORMA"]
    what += ["the neural forecaster"] if model.networks else []
    print(f"fitted {' and '.join(what) or 'the mean of the base forecasters'} on "
          f"{sum(len(s) for s in sets)} series ({', '.join(s.name for s in sets)}; base "
          f"forecasters {' '.join(model.methods)}); saved to {out}")
    if "fallback" in model.logs:
        print(f"note: {model.logs['fallback']}")
    return 0


def _forecast(mode: str, data: str, model_dir: str | None, opts: ForecastOptions, out: Path,
              cache: Path, progress: bool) -> int:
    from .evaluate import evaluate_forecasters, score
    from .model import FFORMA, prepared_for_scoring

    truth = not opts.future
    if mode == "predict":
        model = FFORMA.load(model_dir, n_jobs=opts.n_jobs, cache_dir=cache,
                            chunk_size=opts.chunk_size, backend=opts.backend,
                            dask_address=opts.dask_address, progress=progress)
        sets = model.load_data(data, opts.horizon, opts.season_length, opts.freq,
                               future=opts.future, max_series=opts.max_series)
        logs = {"model": str(model_dir), "trained_on": model.trained_on}
        fc = model.forecast_sets(sets, logs)
        metrics = score(prepared_for_scoring(sets), fc) if truth else {}
        methods = list(dict.fromkeys(k for f in fc.values() for k in f))
        timings: dict[str, float] = {}
    else:
        sets = load_sets(data, opts.horizon, opts.season_length, opts.freq, future=opts.future,
                         max_series=opts.max_series)
        cfg = _neural_config(opts, sets) if "neural" in _meta(opts) else None
        ev = evaluate_forecasters(
            sets, opts.methods, meta=_meta(opts), neural_config=cfg, cache_dir=cache,
            seed=opts.seed, progress=progress, stack_neural=opts.stack, truth=truth,
            holdout_origins=opts.holdout_origins, fforma_error=opts.fforma_error,
            fallback=opts.fallback, n_jobs=opts.n_jobs, chunk_size=opts.chunk_size,
            backend=opts.backend, dask_address=opts.dask_address)
        fc, metrics, methods, logs, timings = (ev.forecasts, ev.metrics, ev.methods, ev.logs,
                                               ev.timings)
    write_outputs(out, data, sets, fc, metrics, methods, logs, timings, opts, truth)
    return 0


def best_base(sets, fc, metrics: dict, logs: dict, methods: list[str]) -> str:
    """The base forecaster to show beside the meta-learner: the best-scored one, or (nothing
    scored) the one FFORMA weighs most on these series, else the first."""
    base = [k for k in methods if k in ALL_METHODS]
    if metrics:
        key = "OWA" if all("OWA" in metrics[k]["Average"] for k in base) else "sMAPE"
        return min(base, key=lambda k: _finite(metrics[k]["Average"].get(key)))
    w = logs.get("fforma_mean_weights")
    if w:
        total = {k: sum(v.get(k, 0.0) for v in w.values()) for k in base}
        return max(base, key=lambda k: total[k])
    return base[0]


def _finite(v) -> float:
    return float(v) if v is not None and np.isfinite(v) else math.inf


def _json_safe(obj):
    """Plain JSON: non-finite numbers as null, numpy values as Python ones."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return str(obj)


def write_outputs(out: Path, data: str, sets, fc, metrics, methods, logs, timings,
                  opts: ForecastOptions, truth: bool) -> None:
    """forecasts.csv, results.json, the PNGs and the summary on stdout."""
    from .model import forecast_frame
    from .plots import plot_forecasts

    frame = forecast_frame(sets, fc, truth=truth)
    if "subset" not in frame.columns:
        frame.insert(0, "subset", sets[0].name)
    atomic_write_bytes(out / "forecasts.csv", frame.to_csv(index=False).encode())
    record = {"data": data, "methods": methods, "metrics": metrics, "timings": timings,
              "logs": logs, "seed": opts.seed}
    atomic_write_bytes(out / "results.json",
                       (json.dumps(_json_safe(record), indent=2) + "\n").encode())
    best = best_base(sets, fc, metrics, logs, methods)
    for s in sets:
        shown = [k for k in ("FFORMA", "NBeats-MAML") if k in fc[s.name]]
        shown = (shown or ["Mean"]) + [best]
        plot_forecasts(s, fc[s.name], out / f"forecasts_{s.name}.png", n=opts.plot_series,
                       seed=opts.seed, methods=shown, labels={best: f"{best} (best base)"})
    if not truth:
        print(f"forecast the next {sets[0].h} values of {sum(len(s) for s in sets)} series with "
              f"{', '.join(methods)}")
    else:
        avg = {k: v["Average"] for k, v in metrics.items()}
        key = "OWA" if all(v.get("OWA") is not None for v in avg.values()) else "sMAPE"
        print(f"{'method':<24}" + "".join(f"{m:>9}" for m in ("sMAPE", "MAPE", "MASE", "OWA")))
        for k in sorted(avg, key=lambda k: _finite(avg[k].get(key))):
            print(f"{k:<24}" + "".join(f"{avg[k].get(m, float('nan')):9.3f}"
                                       for m in ("sMAPE", "MAPE", "MASE", "OWA")))
    print(f"wrote {out / 'forecasts.csv'}, {out / 'results.json'} and {len(sets)} PNG(s)")


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (``python -m metaphi.forecasting.cli``)."""
    parser = argparse.ArgumentParser(prog="metaphi")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
