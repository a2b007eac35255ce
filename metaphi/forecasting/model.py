"""FFORMA as a forecaster on long-format data, statsforecast-style: fit once, forecast later.

>>> model = FFORMA(freq="MS").fit(train_df, h=12)   # doctest: +SKIP
>>> fc = model.predict(new_df)                      # doctest: +SKIP
>>> model.save("runs/model"); FFORMA.load("runs/model").predict(new_df)  # doctest: +SKIP

``fit`` meta-trains the feature-based combination on temporal holdouts of the training series
(and, with ``neural=``, the neural forecaster on their histories); ``predict`` forecasts the
``h`` steps after the end of each series of any collection, seen or not (transfer), with the
base forecasters fitted on those series and the weights the meta-learner gives them. Data is a
DataFrame (``unique_id``, ``ds``, ``y``), a CSV/Parquet path or a built-in dataset name.

A saved model is a folder without pickles: ``model.json`` (settings, the base-forecaster list,
what it was trained on), LightGBM's text models ``fforma_<i>.txt`` and the neural members'
weights ``neural_<i>.safetensors``. ``model.json`` is written last, so a folder without it is
not a (complete) model.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_write_bytes
from .base import CHUNK_SIZE, DEFAULT_METHODS, BaseForecasts, resolve_jobs, resolve_methods
from .data import SeriesSet, is_builtin, load_sets
from .evaluate import (_fit_fforma, _fforma_estimate, _neural_ms, _Prepared, check_fforma_rows,
                       collect, fforma_rows, plan_sets)
from .features import FEATURE_NAMES
from .fforma import ERRORS, MIN_SERIES, WeightLearner, mean_combination
from .neural import NeuralConfig, NeuralEnsemble, fit_neural
from .progress import Progress

FORMAT = "metaphi.forecasting.FFORMA"
VERSION = 1


class FFORMA:
    """Feature-based forecast model averaging (Montero-Manso et al., 2020) on DataFrames.

    ``methods``: the base forecasters (default: the fast pool, :data:`base.DEFAULT_METHODS`;
    ``["all"]`` for every one). ``fforma=False`` leaves out the combination (a model of the
    neural forecaster alone). ``freq`` / ``season_length`` describe the training data (as in
    :func:`metaphi.forecasting.data.validate_long`). ``neural``: also train the neural
    forecaster (a :class:`NeuralConfig`, or True for the default one); its forecasts and their
    equal-weight mean with FFORMA's come as extra columns. ``fallback="mean"``: with fewer than
    10 series, forecast the mean of the base forecasters instead of stopping with an error.
    ``n_jobs`` / ``backend`` / ``dask_address`` / ``cache_dir`` / ``chunk_size``: where and how
    the base forecasters run (see :class:`metaphi.forecasting.base.BaseForecasts`).
    """

    def __init__(self, methods: list[str] | None = None, freq: str | None = None,
                 season_length: int | None = None, neural: NeuralConfig | bool | None = None,
                 fforma: bool = True, fforma_error: str = "owa", holdout_origins: int = 1,
                 n_models: int = 5, seed: int = 0, fallback: str = "error", n_jobs: int = -1,
                 cache_dir: str | Path | None = None, chunk_size: int = CHUNK_SIZE,
                 backend: str = "local", dask_address: str | None = None,
                 progress: bool = False) -> None:
        self.methods = resolve_methods(methods or DEFAULT_METHODS)
        if fforma_error not in ERRORS:
            raise ValueError(f"fforma_error must be one of {ERRORS}, got {fforma_error!r}")
        if fallback not in ("error", "mean"):
            raise ValueError(f"fallback must be 'error' or 'mean', got {fallback!r}")
        if not isinstance(holdout_origins, int) or holdout_origins < 1:
            raise ValueError(f"holdout_origins must be an integer >= 1, got {holdout_origins!r}")
        self.freq, self.season_length = freq, season_length
        self.neural = NeuralConfig() if neural is True else (neural or None)
        self.fforma = bool(fforma)
        self.fforma_error, self.holdout_origins = fforma_error, holdout_origins
        self.n_models, self.seed, self.fallback = int(n_models), int(seed), fallback
        self.run = dict(n_jobs=n_jobs, cache_dir=cache_dir, chunk_size=chunk_size,
                        backend=backend, dask_address=dask_address)
        BaseForecasts(self.methods, None, n_jobs, chunk_size, backend, dask_address)  # checks
        self.progress = progress
        self.weights: WeightLearner | None = None
        self.networks: list[NeuralEnsemble] = []
        self.trained_on: list[dict[str, Any]] = []
        self.logs: dict[str, Any] = {}

    # fitting -------------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return bool(self.trained_on)

    def _plan(self, methods: list[str] | None = None) -> BaseForecasts:
        run_methods = list(methods or self.methods)
        if "Naive2" not in run_methods:
            run_methods.append("Naive2")  # the reference of the holdout errors
        return BaseForecasts(run_methods, **self.run)

    def fit(self, data, h: int | None = None, max_series: int | None = None) -> "FFORMA":
        """Meta-train on ``data``'s series (all of each history; a built-in dataset's official
        test values are not used). ``h``: the horizon of the temporal holdouts (default: the
        dataset's own, or the M4 horizon of ``freq``)."""
        sets = (load_sets(data, h, max_series=max_series) if is_builtin(data) else
                load_sets(data, h, self.season_length, self.freq, future=True,
                          max_series=max_series))
        return self.fit_sets(sets)

    def fit_sets(self, sets: list[SeriesSet]) -> "FFORMA":
        """:meth:`fit` on loaded :class:`SeriesSet`s (their ``test`` values are not used)."""
        sets = [SeriesSet(s.name, s.ids, s.y, s.h, s.m, None, s.ds, None, s.freq) for s in sets]
        use_fforma = self.fforma
        if use_fforma and fforma_rows(sets, self.holdout_origins) < MIN_SERIES:
            if self.fallback == "error":
                check_fforma_rows(sets, self.holdout_origins, "the training data")
            use_fforma = False
            self.logs["fallback"] = (f"fewer than {MIN_SERIES} series: forecasts are the mean "
                                     "of the base forecasters")
        plan = self._plan()
        planned = plan_sets(plan, sets, self.holdout_origins, test=False, holdouts=use_fforma)
        parallel = resolve_jobs(self.run["n_jobs"])
        with Progress(self.progress, "fit") as bar:
            bar.add(plan.estimate())
            if use_fforma:
                bar.add(_fforma_estimate(sum(len(s) for s in sets) * self.holdout_origins,
                                         self.methods, parallel, self.n_models))
            if self.neural is not None:
                bar.add(sum(_neural_ms(self.neural, len(s)) for s in sets))
            bar.stage("base forecasters and features")
            plan.run(bar)
            timings: dict[str, float] = {}
            prep = collect(plan, planned, timings, error_methods=self.methods,
                           error=self.fforma_error)
            self.weights = None
            if use_fforma:
                bar.stage("FFORMA")
                self.weights = _fit_fforma(prep, self.methods, self.seed, self.n_models,
                                           parallel, bar)
                self.logs["fforma_best_iterations"] = self.weights.best_iterations
            self.networks = []
            if self.neural is not None:
                bar.stage("neural forecaster")
                for i, s in enumerate(sets):
                    if any(n.h == s.h and n.m == s.m for n in self.networks):
                        continue  # one network per (h, m): subsets that share them share it
                    same = [t.y[k] for t in sets if (t.h, t.m) == (s.h, s.m) for k in range(len(t))]
                    net, _, log = fit_neural(same, s.h, s.m, self.neural.updated(
                        seed=self.neural.seed + i), progress=False)
                    self.networks.append(net)
                    self.logs[f"neural h={s.h} m={s.m}"] = log
                    bar(_neural_ms(self.neural, len(same)))
        self.logs["timings"] = timings
        self.trained_on = [{"name": s.name, "n_series": len(s), "h": s.h, "m": s.m,
                            "freq": s.freq} for s in sets]
        return self

    # forecasting ---------------------------------------------------------------------------
    @property
    def horizon(self) -> int | None:
        """The training horizon, where the training data had one."""
        hs = {t["h"] for t in self.trained_on}
        return hs.pop() if len(hs) == 1 else None

    def _defaults(self) -> tuple[int | None, str | None]:
        """Season length and frequency of new data when the caller gives neither: the training
        data's, where it had one."""
        ms = {t["m"] for t in self.trained_on}
        fs = {t["freq"] for t in self.trained_on}
        return (ms.pop() if len(ms) == 1 else None), (fs.pop() if len(fs) == 1 else None)

    def _network(self, s: SeriesSet) -> NeuralEnsemble:
        for n in self.networks:
            if n.h == s.h and n.m == s.m:
                return n
        have = ", ".join(f"h={n.h} m={n.m}" for n in self.networks)
        raise ValueError(f"{s.name}: the model's neural forecaster was trained for {have}, not "
                         f"h={s.h} m={s.m}; forecast with one of those, or fit a model on "
                         "series like these")

    def forecast_sets(self, sets: list[SeriesSet], logs: dict | None = None
                      ) -> dict[str, dict[str, np.ndarray]]:
        """``{subset: {method: (n, h)}}`` for the histories of ``sets``: every base forecaster,
        ``Mean``, ``FFORMA`` and ``FFORMA-select`` (and the neural columns); ``logs`` (if given)
        gets FFORMA's mean weights per subset."""
        if not self.fitted:
            raise RuntimeError("fit() or load() the model before forecasting")
        for s in sets:
            if self.networks:
                self._network(s)  # before any fitting
        plan = self._plan()
        handles = [plan.add(s) for s in sets]
        out: dict[str, dict[str, np.ndarray]] = {}
        with Progress(self.progress, "forecast") as bar:
            bar.add(plan.estimate())
            if self.networks:
                bar.add(sum(len(s) * 2.0 * len(self._network(s).members) for s in sets))
            bar.stage("base forecasters and features")
            plan.run(bar)
            bar.stage("combination")
            for s, handle in zip(sets, handles):
                base, X, _, _ = plan.get(handle)
                fc = {k: base[k] for k in self.methods}
                fc["Mean"] = mean_combination(base, self.methods)
                if self.weights is not None:
                    w = self.weights.weights(X)
                    fc["FFORMA"] = self.weights.combine(base, X, w)
                    fc["FFORMA-select"] = self.weights.select(base, X, w)
                    if logs is not None:
                        logs.setdefault("fforma_mean_weights", {})[s.name] = dict(
                            zip(self.methods, np.round(w.mean(axis=0), 4).tolist()))
                if self.networks:
                    net = self._network(s)
                    fc.update(net.forecast(s.y))
                    bar(len(s) * 2.0 * len(net.members))
                    if "FFORMA" in fc:
                        fc["FFORMA & NBeats-MAML mean"] = 0.5 * (fc["FFORMA"] + fc["NBeats-MAML"])
                if "Naive2" in base and "Naive2" not in fc:
                    fc["Naive2"] = base["Naive2"]  # OWA's reference, for scoring
                out[s.name] = fc
        return out

    def load_data(self, data, h: int | None = None, season_length: int | None = None,
                  freq: str | None = None, future: bool = True,
                  max_series: int | None = None) -> list[SeriesSet]:
        """``data`` as :class:`SeriesSet`s for forecasting: ``h`` defaults to the training
        horizon, the season length and frequency to the training data's (user files)."""
        m0, f0 = self._defaults()
        if is_builtin(data):  # scored on its official test values (future: an error)
            return load_sets(data, h, future=future, max_series=max_series)
        if season_length is None and freq is None:
            season_length, freq = m0, f0
        return load_sets(data, h if h is not None else self.horizon, season_length, freq,
                         future=future, max_series=max_series)

    def predict(self, data, h: int | None = None, season_length: int | None = None,
                freq: str | None = None):
        """Forecasts of the ``h`` steps after the end of every series in ``data`` (a
        DataFrame, a file or a built-in dataset, whose official test values are then what is
        forecast): a DataFrame with ``unique_id``, ``ds`` and one column per method, FFORMA
        first."""
        sets = self.load_data(data, h, season_length, freq, future=not is_builtin(data))
        return forecast_frame(sets, self.forecast_sets(sets))

    # saving --------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        return {"methods": self.methods, "freq": self.freq, "season_length": self.season_length,
                "neural": None if self.neural is None else self.neural.model_dump(mode="json"),
                "fforma": self.fforma,
                "fforma_error": self.fforma_error, "holdout_origins": self.holdout_origins,
                "n_models": self.n_models, "seed": self.seed, "fallback": self.fallback,
                "chunk_size": self.run["chunk_size"]}

    def save(self, folder: str | Path) -> Path:
        """Write the fitted model into ``folder`` (created; files of an earlier model there are
        replaced)."""
        from safetensors.torch import save_file

        from .. import __version__

        if not self.fitted:
            raise RuntimeError("fit() the model before saving it")
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{folder} is a file; give a folder for the model")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.json").unlink(missing_ok=True)  # incomplete until written again
        weights = self.weights.save(folder) if self.weights is not None else None
        nets = []
        for i, net in enumerate(self.networks):
            tensors, meta = net.state()
            save_file(tensors, str(folder / f"neural_{i}.safetensors"))
            nets.append({"file": f"neural_{i}.safetensors", **meta})
        record = {"format": FORMAT, "version": VERSION, "metaphi": __version__,
                  "settings": self.settings(), "trained_on": self.trained_on,
                  "features": FEATURE_NAMES, "fforma": weights, "neural": nets,
                  "logs": {k: v for k, v in self.logs.items() if k != "timings"}}
        atomic_write_bytes(folder / "model.json",  # written last: a folder without it is no model
                           (json.dumps(record, indent=2, default=str) + "\n").encode())
        return folder

    @classmethod
    def load(cls, folder: str | Path, **run: Any) -> "FFORMA":
        """A saved model; ``run`` overrides where the base forecasters run (``n_jobs``,
        ``backend``, ``dask_address``, ``cache_dir``, ``progress``)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        path = folder / "model.json"
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder with a saved model (from "
                                    "`metaphi forecast fit` or FFORMA.save)")
        if not path.exists():
            raise ValueError(f"{folder} has no model.json: it is not a saved model, or its "
                             "saving was interrupted; fit it again")
        try:
            record = json.loads(path.read_text())
            if record.get("format") != FORMAT:
                raise ValueError(f"format {record.get('format')!r} is not {FORMAT!r}")
            if int(record.get("version", -1)) > VERSION:
                raise ValueError(f"it was saved by a newer metaphi (model format "
                                 f"{record['version']}, this one reads {VERSION})")
            if record["features"] != FEATURE_NAMES:
                raise ValueError("its series features differ from this metaphi's")
            st = record["settings"]
            model = cls(methods=st["methods"], freq=st["freq"],
                        season_length=st["season_length"],
                        neural=None if st["neural"] is None else NeuralConfig(**st["neural"]),
                        fforma=st["fforma"],
                        fforma_error=st["fforma_error"], holdout_origins=st["holdout_origins"],
                        n_models=st["n_models"], seed=st["seed"], fallback=st["fallback"],
                        **{"chunk_size": st["chunk_size"], **run})
            if record["fforma"] is not None:
                model.weights = WeightLearner.load(folder, record["fforma"])
            model.networks = [NeuralEnsemble.from_state(load_file(str(folder / n["file"])), n)
                              for n in record["neural"]]
            model.trained_on = list(record["trained_on"])
            model.logs = dict(record.get("logs", {}))
        except (KeyError, TypeError, ValueError, OSError) as e:
            raise ValueError(f"{path}: cannot load the model ({type(e).__name__}: {e})") from None
        if not model.trained_on:
            raise ValueError(f"{path}: the model lists no training data")
        return model


def forecast_frame(sets: list[SeriesSet], forecasts: dict[str, dict[str, np.ndarray]],
                   truth: bool = False):
    """Long-format forecasts: ``unique_id``, ``ds`` (the steps' timestamps), ``subset`` and
    ``step`` where there are several subsets, ``y`` (with ``truth``), one column per method."""
    import pandas as pd

    frames = []
    for s in sets:
        n, h = len(s), s.h
        cols: dict[str, Any] = {}
        if len(sets) > 1:
            cols["subset"] = s.name
        cols["unique_id"] = np.repeat(np.asarray(s.ids, dtype=object), h)
        cols["ds"] = (np.concatenate(s.test_ds) if s.test_ds is not None
                      else np.tile(np.arange(1, h + 1), n))
        cols["step"] = np.tile(np.arange(1, h + 1), n)
        if truth and s.test is not None:
            cols["y"] = np.concatenate(s.test)
        fc = forecasts[s.name]
        order = [k for k in ("FFORMA",) if k in fc] + [k for k in fc if k != "FFORMA"]
        for k in order:
            cols[k] = np.asarray(fc[k]).ravel()
        frames.append(pd.DataFrame(cols))
    return pd.concat(frames, ignore_index=True)


def prepared_for_scoring(sets: list[SeriesSet]) -> list[_Prepared]:
    """``sets`` in the form :func:`metaphi.forecasting.evaluate.score` takes."""
    return [_Prepared(s, None, None, None, None, None) for s in sets]
