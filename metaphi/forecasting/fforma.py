"""Meta-learner A: feature-based forecast combination (FFORMA, Montero-Manso et al., 2020).

Meta-training: on each training series a temporal holdout (the last ``h`` history values) scores
every base forecaster, giving an error matrix ``E`` (series x forecasters). A LightGBM model maps
series features to one score per forecaster; softmax turns the scores into combination weights
``w``, and the custom objective is FFORMA's: the expected error ``sum_k w_k E_k`` of the
forecaster chosen with probabilities ``w``, minimised per series.

``n_models`` boosters with different seeds (and validation splits) are averaged, which steadies
the weights of a meta-learner trained on a few thousand noisy holdouts. Meta-test: features of
the full history -> weights -> weighted average of the base forecasts.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import mape_nonzero, mase, smape


ERRORS = ("owa", "smape", "mape")
MIN_SERIES = 10  # meta-training rows (series x holdout origins) FFORMA needs


def relative_errors(truth: list[np.ndarray], forecasts: dict[str, np.ndarray],
                    histories: list[np.ndarray], m: int, methods: list[str],
                    reference: str = "Naive2", error: str = "owa") -> np.ndarray:
    """Per-series error of each method relative to the reference (Naive2) averaged over the
    subset. ``error="owa"`` (FFORMA's): ``(sMAPE / mean sMAPE_ref + MASE / mean MASE_ref) / 2``;
    ``"smape"`` or ``"mape"``: that metric alone over its reference mean, for data scored by it.

    Dividing by subset means rather than per-series values keeps series where Naive2 happens to be
    perfect from producing infinities; MASE values are capped to keep a few series with a
    near-zero in-sample scale from dominating the objective.
    """
    if error not in ERRORS:
        raise ValueError(f"FFORMA error must be one of {ERRORS}, got {error!r}")
    Y = np.vstack(truth)
    ref = forecasts[reference] if reference in forecasts else forecasts[methods[0]]
    if error != "owa":
        metric = smape if error == "smape" else mape_nonzero
        r = max(float(np.mean(metric(Y, ref))), 1e-8)
        return np.column_stack([metric(Y, forecasts[k]) / r for k in methods])
    s_ref = max(float(np.mean(smape(Y, ref))), 1e-8)
    m_ref_all = mase(Y, ref, histories, m)
    cap = np.nanpercentile(m_ref_all[np.isfinite(m_ref_all)], 99) * 5 if np.isfinite(
        m_ref_all).any() else 100.0
    m_ref = max(float(np.mean(np.clip(np.nan_to_num(m_ref_all, posinf=cap), 0, cap))), 1e-8)
    cols = []
    for k in methods:
        s = smape(Y, forecasts[k])
        q = np.clip(np.nan_to_num(mase(Y, forecasts[k], histories, m), nan=cap, posinf=cap), 0, cap)
        cols.append(0.5 * (s / s_ref + q / m_ref))
    return np.column_stack(cols)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class WeightLearner:
    """FFORMA's meta-learner: gradient-boosted trees mapping series features to per-series
    combination weights (the forecaster on DataFrames is :class:`metaphi.forecasting.FFORMA`).

    ``num_threads`` (per booster) defaults to 1: the meta-training sets are small (thousands of
    rows), and OpenMP threads that busy-wait on a shared, oversubscribed machine make it far
    slower; ``fit(..., n_jobs=k)`` trains up to k of the ``n_models`` boosters side by side
    instead, which gives the same boosters.

    ``fit(X, E)`` with features ``X`` (n, d) and holdout errors ``E`` (n, K);
    ``weights(X)`` -> (n, K) softmax weights; ``combine(forecasts, X)`` -> (n, h).
    """

    def __init__(self, methods: list[str], n_estimators: int = 400, learning_rate: float = 0.05,
                 num_leaves: int = 15, min_data_in_leaf: int = 20, feature_fraction: float = 0.8,
                 bagging_fraction: float = 0.8, valid_fraction: float = 0.1,
                 early_stopping: int = 40, seed: int = 0, num_threads: int = 1,
                 n_models: int = 1) -> None:
        if n_models < 1:
            raise ValueError(f"n_models must be >= 1, got {n_models}")
        self.n_models = int(n_models)
        self.methods = list(methods)
        self.params: dict[str, Any] = {
            "num_class": len(methods), "learning_rate": learning_rate, "num_leaves": num_leaves,
            "min_data_in_leaf": min_data_in_leaf, "min_sum_hessian_in_leaf": 1e-3,
            "feature_fraction": feature_fraction, "bagging_fraction": bagging_fraction,
            "bagging_freq": 1, "seed": seed, "deterministic": True, "verbosity": -1,
            "num_threads": num_threads}
        self.n_estimators = n_estimators
        self.valid_fraction = valid_fraction
        self.early_stopping = early_stopping
        self.seed = seed
        self.boosters: list[Any] = []
        self.best_iterations: list[int] = []

    @staticmethod
    def _objective(errors: np.ndarray):
        def fobj(preds: np.ndarray, data) -> tuple[np.ndarray, np.ndarray]:
            w = _softmax(preds.reshape(errors.shape[0], -1, order="F") if preds.ndim == 1 else preds)
            expected = np.sum(w * errors, axis=1, keepdims=True)
            grad = w * (errors - expected)
            # The exact diagonal Hessian w(e - L)(1 - 2w) can be negative; its magnitude (floored)
            # gives Newton steps of the right size without flipping their direction.
            hess = np.maximum(np.abs(grad * (1 - 2 * w)), 1e-6)
            if preds.ndim == 1:
                return grad.ravel(order="F"), hess.ravel(order="F")
            return grad, hess
        return fobj

    @staticmethod
    def _expected_error(errors: np.ndarray):
        def feval(preds: np.ndarray, data):
            w = _softmax(preds.reshape(errors.shape[0], -1, order="F") if preds.ndim == 1 else preds)
            return "expected_error", float(np.mean(np.sum(w * errors, axis=1))), False
        return feval

    def fit(self, X: np.ndarray, errors: np.ndarray, n_jobs: int = 1,
            progress: Callable[[int], None] | None = None) -> "WeightLearner":
        """Train the boosters (``n_jobs`` at a time); ``progress(trees)`` is told each round's
        trees, and the rounds early stopping skipped when a booster ends."""
        X = np.asarray(X, dtype=float)
        E = np.asarray(errors, dtype=float)
        if E.shape != (X.shape[0], len(self.methods)):
            raise ValueError(f"errors must have shape (n_series, n_methods) = "
                             f"{(X.shape[0], len(self.methods))}, got {E.shape}")
        if not np.isfinite(E).all():
            raise ValueError("holdout errors contain NaN or inf; check the base forecasts")
        seeds = [self.seed + i for i in range(self.n_models)]
        if n_jobs > 1 and self.n_models > 1:
            from concurrent.futures import ThreadPoolExecutor  # LightGBM releases the GIL

            with ThreadPoolExecutor(min(n_jobs, self.n_models)) as pool:
                fitted = list(pool.map(lambda s: self._fit_one(X, E, s, progress), seeds))
        else:
            fitted = [self._fit_one(X, E, s, progress) for s in seeds]
        self.boosters = [b for b, _ in fitted]
        self.best_iterations = [it for _, it in fitted]
        return self

    def _fit_one(self, X: np.ndarray, E: np.ndarray, seed: int,
                 progress: Callable[[int], None] | None = None) -> tuple[Any, int]:
        import lightgbm as lgb

        rng = np.random.default_rng(seed)
        n = X.shape[0]
        perm = rng.permutation(n)
        n_val = int(round(self.valid_fraction * n)) if n >= 50 else 0
        val, tr = perm[:n_val], perm[n_val:]
        if len(tr) < MIN_SERIES:
            raise ValueError(f"FFORMA needs at least {MIN_SERIES} training series, got "
                             f"{len(tr)}; use more series or --meta none")
        # small meta-training sets: leaves must still be able to split
        params = dict(self.params, objective=self._objective(E[tr]), feature_pre_filter=False,
                      seed=seed,
                      min_data_in_leaf=int(min(self.params["min_data_in_leaf"],
                                               max(2, len(tr) // 10))))
        dtrain = lgb.Dataset(X[tr], label=np.zeros(len(tr)), free_raw_data=False)
        kw: dict[str, Any] = {}
        if n_val:
            dval = lgb.Dataset(X[val], label=np.zeros(n_val), reference=dtrain)
            params["metric"] = "None"
            # feval sees the validation predictions, so it needs the validation errors
            kw = {"valid_sets": [dval], "valid_names": ["val"],
                  "feval": self._expected_error(E[val]),
                  "callbacks": [lgb.early_stopping(self.early_stopping, verbose=False)]}
        if progress is not None:
            K = len(self.methods)
            kw["callbacks"] = kw.get("callbacks", []) + [lambda env: progress(K)]
        booster = lgb.train(params, dtrain, num_boost_round=self.n_estimators, **kw)
        if progress is not None:
            progress(len(self.methods) * (self.n_estimators - booster.current_iteration()))
        return booster, booster.best_iteration or self.n_estimators

    # saving without pickle: LightGBM's text format and JSON ---------------------------------
    def save(self, folder: str | Path) -> dict[str, Any]:
        """Write each booster as LightGBM's text model (``fforma_<i>.txt``) into ``folder``;
        returns the JSON-able settings :meth:`load` needs."""
        folder = Path(folder)
        files = []
        for i, b in enumerate(self.boosters):
            name = f"fforma_{i}.txt"
            (folder / name).write_text(b.model_to_string(num_iteration=-1))
            files.append(name)
        return {"methods": self.methods, "params": {k: v for k, v in self.params.items()},
                "n_estimators": self.n_estimators, "valid_fraction": self.valid_fraction,
                "early_stopping": self.early_stopping, "seed": self.seed,
                "n_models": self.n_models, "best_iterations": self.best_iterations,
                "files": files}

    @classmethod
    def load(cls, folder: str | Path, meta: dict[str, Any]) -> "WeightLearner":
        import lightgbm as lgb

        folder = Path(folder)
        p = meta["params"]
        obj = cls(meta["methods"], n_estimators=meta["n_estimators"],
                  learning_rate=p["learning_rate"], num_leaves=p["num_leaves"],
                  min_data_in_leaf=p["min_data_in_leaf"], feature_fraction=p["feature_fraction"],
                  bagging_fraction=p["bagging_fraction"], valid_fraction=meta["valid_fraction"],
                  early_stopping=meta["early_stopping"], seed=meta["seed"],
                  num_threads=p["num_threads"], n_models=meta["n_models"])
        obj.boosters = [lgb.Booster(model_str=(folder / f).read_text()) for f in meta["files"]]
        obj.best_iterations = [int(i) for i in meta["best_iterations"]]
        if len(obj.boosters) != obj.n_models or len(obj.best_iterations) != obj.n_models:
            raise ValueError(f"{folder}: the saved FFORMA lists {obj.n_models} boosters but "
                             f"has {len(obj.boosters)} files / {len(obj.best_iterations)} "
                             "iteration counts")
        return obj

    def weights(self, X: np.ndarray) -> np.ndarray:
        """``(n, K)`` combination weights: the mean of the boosters' softmax weights."""
        if not self.boosters:
            raise RuntimeError("call fit() before weights()")
        X = np.asarray(X, dtype=float)
        return np.mean([_softmax(b.predict(X, raw_score=True, num_iteration=it).reshape(len(X), -1))
                        for b, it in zip(self.boosters, self.best_iterations)], axis=0)

    def combine(self, forecasts: dict[str, np.ndarray], X: np.ndarray,
                w: np.ndarray | None = None) -> np.ndarray:
        """Weighted combination of the base forecasts (``{method: (n, h)}``) with the weights
        of ``X`` (or the given weights ``w``)."""
        w = self.weights(X) if w is None else w
        F = np.stack([forecasts[k] for k in self.methods], axis=1)  # (n, K, h)
        return np.einsum("nk,nkh->nh", w, F)

    def select(self, forecasts: dict[str, np.ndarray], X: np.ndarray,
               w: np.ndarray | None = None) -> np.ndarray:
        """The single forecaster with the largest weight per series."""
        k = (self.weights(X) if w is None else w).argmax(axis=1)
        F = np.stack([forecasts[m] for m in self.methods], axis=1)
        return F[np.arange(len(k)), k]


def holdout_best(forecasts: dict[str, np.ndarray], holdout_errors: np.ndarray,
                 methods: list[str]) -> np.ndarray:
    """Per series, the forecaster with the lowest error on that series' own temporal holdout."""
    k = holdout_errors.argmin(axis=1)
    F = np.stack([forecasts[m] for m in methods], axis=1)
    return F[np.arange(len(k)), k]


# statsforecast's published M3/M4 baseline: the plain mean of these four automatic models.
STATS_ENSEMBLE = ("ETS", "ARIMA", "CES", "DOTM")


def mean_combination(forecasts: dict[str, np.ndarray], methods: list[str]) -> np.ndarray:
    return np.mean(np.stack([forecasts[m] for m in methods], axis=0), axis=0)
