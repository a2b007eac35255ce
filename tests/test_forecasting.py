"""Tests for metaphi.forecasting on small generated series (metrics against hand computation)."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from metaphi.forecasting.data import SeriesSet, validate_long
from metaphi.forecasting.features import FEATURE_NAMES, feature_matrix
from metaphi.forecasting.fforma import WeightLearner, relative_errors
from metaphi.forecasting.metrics import (mape, mase, naive2, owa, score_subset, seasonality_test,
                                         smape, weighted_average)


# metrics -----------------------------------------------------------------------------------------

def test_smape_mape_by_hand():
    y, f = np.array([100.0, 200.0]), np.array([110.0, 180.0])
    # 200*10/210 = 9.5238095, 200*20/380 = 10.5263158 -> mean 10.0250627
    assert smape(y, f)[0] == pytest.approx(10.0250627, abs=1e-6)
    assert mape(y, f)[0] == pytest.approx(10.0)  # 10% and 10%
    assert smape(np.zeros(3), np.zeros(3))[0] == 0.0


def test_mase_by_hand():
    hist = np.array([10.0, 12.0, 11.0, 15.0])
    y, f = np.array([20.0, 20.0]), np.array([5.0, 35.0])
    # lag-1 in-sample MAE = (2 + 1 + 4) / 3 = 7/3; forecast MAE = 15 -> 45/7
    assert mase(y, f, [hist], 1)[0] == pytest.approx(45 / 7)
    # lag-2: |11-10|, |15-12| -> 2; forecast MAE 15 -> 7.5
    assert mase(y, f, [hist], 2)[0] == pytest.approx(7.5)


def test_owa_and_weighted_average_by_hand():
    assert owa(10.0, 2.0, 20.0, 4.0) == pytest.approx(0.5)
    per = {"a": {"sMAPE": 10.0, "MAPE": 12.0, "MASE": 1.0, "_naive2": {"sMAPE": 20.0, "MASE": 2.0}},
           "b": {"sMAPE": 4.0, "MAPE": 6.0, "MASE": 3.0, "_naive2": {"sMAPE": 8.0, "MASE": 2.0}}}
    avg = weighted_average(per, {"a": 10, "b": 30})  # e.g. 5 series x h=2 and 5 x h=6
    assert avg["sMAPE"] == pytest.approx((10 * 10 + 4 * 30) / 40)  # 5.5
    assert avg["MASE"] == pytest.approx((1 * 10 + 3 * 30) / 40)  # 2.5
    # Naive2 averages: sMAPE 11, MASE 2 -> OWA = (5.5/11 + 2.5/2) / 2 = 0.875
    assert avg["OWA"] == pytest.approx(0.875)


def test_naive2_seasonal_and_not():
    s = np.array([0.8, 1.2, 0.9, 1.1])
    x = 100 * np.tile(s, 6)  # exact multiplicative seasonality, constant level
    assert seasonality_test(x, 4)
    np.testing.assert_allclose(naive2(x, 6, 4), 100 * s[np.arange(24, 30) % 4], rtol=1e-9)
    rng = np.random.default_rng(0)
    noise = 50 + rng.normal(0, 1, 40)
    assert naive2(noise, 3, 1).tolist() == [noise[-1]] * 3


def test_score_subset_owa_of_naive2_is_one():
    rng = np.random.default_rng(1)
    hist = [50 + rng.normal(0, 3, 30) for _ in range(5)]
    test = [50 + rng.normal(0, 3, 4) for _ in range(5)]
    n2 = np.vstack([naive2(h, 4, 1) for h in hist])
    assert score_subset(test, n2, hist, 1, n2)["OWA"] == pytest.approx(1.0)


# data validation ---------------------------------------------------------------------------------

def _long(n_series=3, n=20):
    return pd.DataFrame([(f"s{i}", t, float(10 + i + t)) for i in range(n_series) for t in range(n)],
                        columns=["unique_id", "ds", "y"])


def test_validate_ok_and_holdout():
    s = validate_long(_long(), h=4, m=1)
    assert s.ids == ["s0", "s1", "s2"] and len(s.y[0]) == 16 and s.test[0].tolist() == [26, 27, 28, 29]


def test_holdouts_at_several_origins():
    lengths = [20, 14, 11]  # h = 3: first-holdout histories 17, 11, 8 (the shortest: 8)
    s = SeriesSet("x", ["a", "b", "c"], [np.arange(n, dtype=float) for n in lengths], 3, 1)
    first, second, third = s.holdouts(3)
    assert first.y[0].tolist() == list(range(17)) and first.test[0].tolist() == [17, 18, 19]
    # origin 2 cuts 6 values: only series keeping >= 8 of history stay (a: 14, b: 8; not c: 5)
    assert second.ids == ["a", "b"]
    assert second.y[1].tolist() == list(range(8)) and second.test[1].tolist() == [8, 9, 10]
    assert second.test[0].tolist() == [14, 15, 16]
    assert third.ids == ["a"] and third.y[0].tolist() == list(range(11))
    assert len(s.holdouts(10)) == 4  # origin 5 would leave a with 5 < 8 values: the list ends
    with pytest.raises(ValueError, match="origins must be >= 1"):
        s.holdouts(0)


def test_fforma_trains_on_holdouts_at_several_origins(monkeypatch):
    from metaphi.forecasting import evaluate as E

    fitted = []
    real_fit = E.WeightLearner.fit
    monkeypatch.setattr(E.WeightLearner, "fit", lambda self, X, err, **kw: fitted.append(len(X)) or
                        real_fit(self, X, err, **kw))
    mixed = SeriesSet("mix", [f"s{i}" for i in range(6)],
                      [_toy_sets(n=1, length=n).y[0] for n in (20, 20, 28, 28, 36, 36)], 4, 4,
                      [np.zeros(4)] * 6)
    ev = E.evaluate_forecasters([mixed], methods=["Naive", "SeasonalNaive"], meta=("fforma",),
                    holdout_origins=3, progress=False)
    # h = 4, shortest first-holdout history 16: origins 2 and 3 cut 8 and 12 values and keep
    # the series with at least 16 left, the 28s and 36s
    assert fitted == [6 + 4 + 4]
    assert "HoldoutBest" in ev.forecasts["mix"]
    fitted.clear()
    source = SeriesSet("src", [f"a{i}" for i in range(10)],
                       [_toy_sets(n=1, length=n).y[0] for n in (20,) * 5 + (28,) * 5], 4, 4)
    ev = E.evaluate_forecasters([mixed], methods=["Naive", "SeasonalNaive"], meta=(), zero_shot=("fforma",),
                    sources={"src": [source]}, holdout_origins=2, progress=False)
    assert fitted == [10 + 5]  # the zero-shot source's holdouts at 2 origins; no target fit
    assert "FFORMA zero-shot (src)" in ev.metrics
    ev = E.evaluate_forecasters([mixed], methods=["Naive", "SeasonalNaive"], meta=(), progress=False)
    assert "HoldoutBest" not in ev.forecasts["mix"] and "Mean" in ev.forecasts["mix"]
    with pytest.raises(ValueError, match="holdout_origins must be an integer >= 1"):
        E.evaluate_forecasters([mixed], methods=["Naive"], holdout_origins=0, progress=False)
    with pytest.raises(ValueError, match="stack_neural"):
        E.evaluate_forecasters([mixed], methods=["Naive"], meta=("fforma", "neural"), stack_neural=True,
                   holdout_origins=2, progress=False)


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d.assign(y=d["y"].where(~((d.unique_id == "s1") & (d.ds == 5)))), "s1"),
    (lambda d: d.assign(y=d["y"].astype(object).where(
        ~((d.unique_id == "s2") & (d.ds == 3)), "abc")), "is not a number"),
    (lambda d: pd.concat([d, d[(d.unique_id == "s0") & (d.ds == 7)]]), "duplicate"),
    (lambda d: d[~((d.unique_id == "s2") & (d.ds > 8))], "too short"),
    (lambda d: d.drop(columns=["ds"]), "unique_id, ds, y"),
])
def test_validate_errors_name_the_series(mutate, needle):
    with pytest.raises(ValueError) as e:
        validate_long(mutate(_long()), h=4, m=1)
    msg = str(e.value)
    assert needle in msg
    if needle == "is not a number":
        assert "'s2'" in msg and "abc" in msg
    if needle == "duplicate":
        assert "'s0'" in msg
    if needle == "too short":
        assert "'s2'" in msg


# FFORMA ------------------------------------------------------------------------------------------

def _two_types(n: int, rng: np.random.Generator, length: int = 40) -> tuple[list[np.ndarray], np.ndarray]:
    """Type 0: strong linear trend (drift wins); type 1: noise around a level (mean-type wins)."""
    out, kind = [], rng.integers(0, 2, n)
    t = np.arange(length)
    for k in kind:
        if k == 0:
            out.append(100 + rng.uniform(2, 4) * t + rng.normal(0, 1, length))
        else:
            out.append(100 + rng.normal(0, 10, length))
    return out, kind


def _simple_forecasts(hist: list[np.ndarray], h: int) -> dict[str, np.ndarray]:
    """Naive, drift and global-mean forecasts (numpy; keeps the test fast and exact)."""
    naive = np.vstack([np.full(h, x[-1]) for x in hist])
    drift = np.vstack([x[-1] + (x[-1] - x[0]) / (len(x) - 1) * np.arange(1, h + 1) for x in hist])
    mean = np.vstack([np.full(h, x.mean()) for x in hist])
    return {"Naive": naive, "Drift": drift, "Mean": mean, "Naive2": naive}


def test_relative_errors_by_hand():
    truth = [np.array([2.0, 4.0]), np.array([0.0, 10.0])]
    hist = [np.array([1.0, 2.0, 3.0]), np.array([5.0, 6.0, 7.0])]
    fc = {"Naive2": np.array([[1.0, 1.0], [5.0, 5.0]]), "A": np.array([[2.0, 2.0], [1.0, 9.0]])}
    # MAPE skips the zero truth: Naive2 (50 + 75) / 2 = 62.5 and 50; A 25 and 10
    ref = (62.5 + 50) / 2
    assert np.allclose(relative_errors(truth, fc, hist, 1, ["A", "Naive2"], error="mape"),
                       [[25 / ref, 62.5 / ref], [10 / ref, 50 / ref]])
    s_ref = np.mean(smape(np.vstack(truth), fc["Naive2"]))
    assert np.allclose(relative_errors(truth, fc, hist, 1, ["A"], error="smape")[:, 0],
                       smape(np.vstack(truth), fc["A"]) / s_ref)
    with pytest.raises(ValueError, match="FFORMA error must be one of"):
        relative_errors(truth, fc, hist, 1, ["A"], error="rmse")


def test_fforma_learns_which_forecaster_to_trust():
    rng = np.random.default_rng(0)
    h, methods = 6, ["Naive", "Drift", "Mean"]
    train, _ = _two_types(300, rng)
    hold_hist, hold_truth = [x[:-h] for x in train], [x[-h:] for x in train]
    E = relative_errors(hold_truth, _simple_forecasts(hold_hist, h), hold_hist, 1, methods)
    model = WeightLearner(methods, seed=0).fit(feature_matrix(hold_hist, 1, h), E)
    test, kind = _two_types(100, rng)
    W = model.weights(feature_matrix(test, 1, h))
    assert W.shape == (100, 3) and np.allclose(W.sum(1), 1)
    assert W[kind == 0, 1].mean() > 0.7  # trending series trust drift
    assert W[kind == 1, 2].mean() > 0.7  # noisy level series trust the mean
    # the learned combination beats the plain mean of the forecasters on held-out series
    th, tt = [x[:-h] for x in test], [x[-h:] for x in test]
    fc = _simple_forecasts(th, h)
    comb = model.combine(fc, feature_matrix(th, 1, h))
    plain = np.mean([fc[k] for k in methods], axis=0)
    assert smape(np.vstack(tt), comb).mean() < smape(np.vstack(tt), plain).mean()
    # a bag of boosters averages their weights; each one is the single model of its seed
    Xt = feature_matrix(test, 1, h)
    bag = WeightLearner(methods, seed=0, n_models=3).fit(feature_matrix(hold_hist, 1, h), E)
    singles = [WeightLearner(methods, seed=s).fit(feature_matrix(hold_hist, 1, h), E).weights(Xt)
               for s in range(3)]
    np.testing.assert_allclose(bag.weights(Xt), np.mean(singles, axis=0), rtol=1e-12)
    np.testing.assert_allclose(singles[0], W, rtol=1e-12)
    assert not np.allclose(singles[0], singles[1])
    with pytest.raises(ValueError, match="n_models"):
        WeightLearner(methods, n_models=0)


def test_features_are_finite_and_scale_free():
    rng = np.random.default_rng(3)
    x = 50 + np.cumsum(rng.normal(0, 1, 60))
    F1 = feature_matrix([x], 12, 6)
    F2 = feature_matrix([x * 1000], 12, 6)
    assert F1.shape == (1, len(FEATURE_NAMES)) and np.isfinite(F1).all()
    np.testing.assert_allclose(F1, F2, rtol=1e-6, atol=1e-9)


# neural ------------------------------------------------------------------------------------------

def test_neural_global_forecaster_learns_seasonality():
    import torch

    from metaphi.forecasting.neural import NeuralConfig, NeuralForecaster

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    t = np.arange(60)
    hist = [100 + 20 * np.sin(2 * np.pi * (t + rng.integers(12)) / 12) + rng.normal(0, 1, 60)
            for _ in range(40)]
    h = 6
    cfg = NeuralConfig(lookback=3, width=32, blocks=2, pretrain_steps=250, batch_size=64,
                       lr=3e-3, meta_steps=5, meta_batch=4, seed=0)
    model = NeuralForecaster(h, cfg).fit([x[:-h] for x in hist], progress=False)
    assert model.log["meta_loss_first"] >= 0
    truth = np.vstack([x[-h:] for x in hist])
    naive = np.vstack([np.full(h, x[-h - 1]) for x in hist])
    for adapt in (False, True):
        f = model.forecast([x[:-h] for x in hist], adapt=adapt)
        assert f.shape == (40, h) and np.isfinite(f).all()
        assert smape(truth, f).mean() < 0.5 * smape(truth, naive).mean()


def test_window_losses_by_hand():
    import torch

    from metaphi.forecasting.neural import window_loss

    x = torch.tensor([[1.0, 2.0, 1.0, 2.0]])  # lag-1 diffs 1,1,1 -> scale 1; lag-2 diffs 0,0 -> 0.01
    y = torch.tensor([[2.0, 4.0]])
    p = torch.tensor([[1.0, 5.0]])
    assert float(window_loss("mae", p, y, x, 1)) == pytest.approx(1.0)
    assert float(window_loss("smape", p, y, x, 1)) == pytest.approx((2 / 3 + 2 / 9) / 2)
    assert float(window_loss("mape", p, y, x, 1)) == pytest.approx((1 / 2 + 1 / 4) / 2)
    # a zero target has no percentage error: it adds nothing (not a huge clamped weight)
    y0 = torch.tensor([[0.0, 4.0]])
    assert float(window_loss("mape", p, y0, x, 1)) == pytest.approx((0 + 1 / 4) / 2)
    assert float(window_loss("mase", p, y, x, 1)) == pytest.approx(1.0)
    assert float(window_loss("mase", p, y, x, 2)) == pytest.approx(100.0)  # flat: scale floor
    assert float(window_loss("mase", p, y, x, 12)) == pytest.approx(1.0)  # too short: lag 1


def _toy_sets(n=12, length=40, h=4):
    rng = np.random.default_rng(1)
    t = np.arange(length)
    ys = [50 + 5 * np.sin(2 * np.pi * (t + i) / 4) + rng.normal(0, 1, length) for i in range(n)]
    return SeriesSet("toy", [f"s{i}" for i in range(n)], ys, h, 4)


def test_neural_ensemble_is_the_median_of_its_members():
    from metaphi.forecasting.neural import NeuralConfig, fit_forecast

    s = _toy_sets()
    cfg = NeuralConfig(width=16, blocks=2, pretrain_steps=20, batch_size=32, meta_steps=2,
                       meta_batch=2, lookbacks=(2, 3), losses=("smape", "mase"), seed=5)
    members = cfg.members()
    assert [(c.lookback, c.loss, c.seed) for c in members] == [
        (2, "smape", 5), (2, "mase", 6), (3, "smape", 7), (3, "mase", 8)]
    fc, log = fit_forecast(s, s, cfg, progress=False)
    singles = [fit_forecast(s, s, c, progress=False)[0] for c in members]
    for k in ("NBeats-global", "NBeats-MAML"):
        np.testing.assert_allclose(fc[k], np.median([f[k] for f in singles], axis=0))
    assert [m["loss"] for m in log["members"]] == ["smape", "mase", "smape", "mase"]
    # two worker processes give the same numbers as one
    fc2, _ = fit_forecast(s, s, cfg.updated(workers=2), progress=False)
    np.testing.assert_allclose(fc2["NBeats-MAML"], fc["NBeats-MAML"])


def test_neural_fit_skips_maml_when_no_series_has_a_support_window():
    from metaphi.forecasting.neural import NeuralConfig, NeuralForecaster

    h = 6  # series of 12 values: windows to pretrain on, but none before a held-out query
    hist = [np.arange(12.0) + i for i in range(5)]
    model = NeuralForecaster(h, NeuralConfig(width=8, blocks=1, pretrain_steps=3, meta_steps=5))
    model.fit(hist, progress=False)
    assert model.log["meta_train_series"] == 0 and "meta_loss_first" not in model.log
    assert np.isfinite(model.forecast(hist)).all()


def test_zero_shot_meta_learners_and_their_mean():
    from metaphi.forecasting.evaluate import evaluate_forecasters as evaluate
    from metaphi.forecasting.neural import NeuralConfig

    target, source = _toy_sets(n=12).holdout(), _toy_sets(n=12, length=36)
    cfg = NeuralConfig(width=8, blocks=1, pretrain_steps=5, batch_size=16, meta_steps=2,
                       meta_batch=2)
    ev = evaluate([target], methods=["Naive", "SeasonalNaive"], meta=("fforma",),
                  zero_shot=("fforma", "neural"), sources={"src": [source]}, neural_config=cfg,
                  progress=False)
    fc = ev.forecasts[target.name]
    assert "NBeats-MAML" not in fc  # no in-dataset neural fit: only "fforma" is in meta
    np.testing.assert_allclose(fc["FFORMA & NBeats-MAML mean zero-shot (src)"],
                               0.5 * (fc["FFORMA zero-shot (src)"]
                                      + fc["NBeats-MAML zero-shot (src)"]))
    assert "FFORMA & NBeats-MAML mean zero-shot (src)" in ev.metrics
    with pytest.raises(ValueError, match="unknown meta-learner"):
        evaluate([target], methods=["Naive"], meta=("fforma",), zero_shot=("nbeats",),
                 sources={"src": [source]}, progress=False)


@pytest.mark.parametrize("change, needle", [
    ({"losses": ("rmse",)}, "losses.0: Input should be 'mae', 'smape', 'mape' or 'mase'"),
    ({"lookbacks": (0,)}, "lookbacks.0: Input should be greater than or equal to 1"),
    ({"losses": ("mae", "mase"), "workers": 0}, "workers: Input should be greater than or equal"),
    ({"meta_loss": "huber"}, "meta_loss: Input should be 'mae' or 'mse'"),
    ({"layers": 0}, "layers: Input should be greater than or equal to 1"),
    ({"max_epochs": 0}, "max_epochs: Input should be greater than 0"),
    ({"widht": 3}, "widht: unknown field")])
def test_neural_config_errors_name_the_field(change, needle):
    from metaphi.forecasting.neural import NeuralConfig
    from metaphi.runs.config import ConfigError

    with pytest.raises(ConfigError) as e:
        NeuralConfig(pretrain_steps=1, **change)
    assert str(e.value).startswith("invalid neural forecaster settings:\n")
    assert needle in str(e.value)
    cfg = NeuralConfig()
    with pytest.raises(ConfigError, match="batch_size: Input should be greater"):
        cfg.batch_size = 0  # assignments are checked too


def test_nbeats_g_settings_and_epoch_cap():
    import torch

    from metaphi.forecasting.neural import NeuralConfig, NeuralForecaster

    cfg = NeuralConfig.nbeats_g("tourism-monthly", bags=2, workers=1)
    members = cfg.members()
    assert len(members) == 6 * 1 * 2 and {c.loss for c in members} == {"mape"}
    assert (cfg.width, cfg.blocks, cfg.layers, cfg.batch_size, cfg.pretrain_steps, cfg.recent,
            cfg.max_epochs) == (512, 30, 2, 1024, 100, 20, None)
    m3 = NeuralConfig.nbeats_g("m3-monthly", bags=1, workers=1)
    assert (m3.layers, m3.pretrain_steps, set(m3.losses)) == (4, 10000, {"mase", "mape", "smape"})
    with pytest.raises(ValueError, match="no published N-BEATS-G settings"):
        NeuralConfig.nbeats_g("m4-daily")
    # the network has the configured depth; without an epoch cap every step runs
    small = NeuralConfig(width=8, blocks=2, layers=3, pretrain_steps=7, batch_size=8,
                         meta_steps=0, max_epochs=None, choose_steps=False)
    model = NeuralForecaster(4, small).fit([np.arange(12.0) + 10] * 3, progress=False)
    assert model.log["pretrain_steps"] == 7
    assert sum(isinstance(m, torch.nn.Linear) for m in model.net.blocks[0].mlp) == 3
    capped = NeuralForecaster(4, small.updated(max_epochs=1.0)).fit(
        [np.arange(12.0) + 10] * 3, progress=False)
    assert capped.log["pretrain_steps"] == 3  # 3 series x 8 windows / batch 8


def test_evaluate_takes_a_neural_config_per_subset():
    from metaphi.forecasting.evaluate import evaluate_forecasters as evaluate
    from metaphi.forecasting.neural import NeuralConfig

    a = _toy_sets(n=8)
    b = SeriesSet("other", a.ids, a.y, a.h, a.m, test=a.test)
    cfgs = {"toy": NeuralConfig(width=8, blocks=1, pretrain_steps=3, batch_size=8, meta_steps=1,
                                meta_batch=2),
            "other": NeuralConfig(width=8, blocks=2, pretrain_steps=4, batch_size=8, meta_steps=1,
                                  meta_batch=2)}
    ev = evaluate([a.holdout(), b.holdout()], methods=["Naive"], meta=("neural",),
                  neural_config=cfgs, progress=False)
    assert ev.logs["neural toy"]["pretrain_steps"] == 3
    assert ev.logs["neural other"]["pretrain_steps"] == 4
    with pytest.raises(ValueError, match=r"no config for subset\(s\) \['other'\]"):
        evaluate([a.holdout(), b.holdout()], methods=["Naive"], meta=("neural",),
                 neural_config={"toy": cfgs["toy"]}, progress=False)


# CLI ---------------------------------------------------------------------------------------------

def _toy_csv(path, n_series=24, n=48):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_series):
        t = np.arange(n)
        y = 50 + 0.5 * t * (i % 2) + 8 * np.sin(2 * np.pi * t / 4) + rng.normal(0, 1, n)
        for d, v in zip(pd.date_range("2010-01-01", periods=n, freq="QS"), y):
            rows.append((f"id{i}", d.date().isoformat(), v))
    pd.DataFrame(rows, columns=["unique_id", "ds", "y"]).to_csv(path, index=False)


def _forecast_toy_csv(tmp_path, out_name: str, methods: list[str], *extra: str):
    """Write the toy CSV and run ``metaphi forecast`` on it with FFORMA; (csv, out, exit code)."""
    from metaphi.forecasting.cli import main

    csv = tmp_path / "toy.csv"
    _toy_csv(csv)
    out = tmp_path / out_name
    rc = main(["forecast", str(csv), "--out", str(out), "--horizon", "4", "--freq", "Q",
               "--methods", *methods, "--meta", "fforma", "--no-progress", *extra])
    return csv, out, rc


def test_cli_on_tiny_csv(tmp_path):
    _, out, rc = _forecast_toy_csv(tmp_path, "out", ["Naive", "SeasonalNaive", "RWD", "SES"],
                                   "--plot-series", "4")
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    for k in ("Naive", "SeasonalNaive", "FFORMA", "Mean", "HoldoutBest"):
        assert set(res["metrics"][k]) == {"toy", "Average"}
        assert set(res["metrics"][k]["Average"]) == {"sMAPE", "MAPE", "MASE", "OWA"}
    # seasonal data: the seasonal naive beats the naive forecast
    assert res["metrics"]["SeasonalNaive"]["toy"]["sMAPE"] < res["metrics"]["Naive"]["toy"]["sMAPE"]
    df = pd.read_csv(out / "forecasts.csv")
    assert len(df) == 24 * 4 and {"unique_id", "ds", "step", "y", "FFORMA"} <= set(df.columns)
    assert (out / "forecasts_toy.png").stat().st_size > 1000


def test_cli_holdout_origins(tmp_path, capsys):
    # equal-length series: a second origin would make every task shorter than the real ones,
    # so it keeps none and FFORMA is the one-origin model (the augmentation itself is tested
    # on series of mixed lengths above)
    _, out2, rc = _forecast_toy_csv(tmp_path, "out2", ["Naive", "SeasonalNaive"],
                                    "--holdout-origins", "2")
    _, out1, _ = _forecast_toy_csv(tmp_path, "out1", ["Naive", "SeasonalNaive"])
    assert rc == 0
    assert (pd.read_csv(out2 / "forecasts.csv")["FFORMA"].tolist()
            == pd.read_csv(out1 / "forecasts.csv")["FFORMA"].tolist())
    _, outm, rc = _forecast_toy_csv(tmp_path, "outm", ["Naive", "SeasonalNaive"],
                                    "--fforma-error", "mape")
    assert rc == 0 and json.loads((outm / "results.json").read_text())["metrics"]["FFORMA"]
    _, _, rc = _forecast_toy_csv(tmp_path, "bad", ["Naive"], "--holdout-origins", "0")
    err = capsys.readouterr().err
    assert rc == 2 and "--holdout-origins: Input should be greater than or equal to 1" in err


def test_cli_neural_ensemble(tmp_path):
    _, out, rc = _forecast_toy_csv(tmp_path, "ens", ["Naive", "SeasonalNaive"], "--meta",
                                   "fforma", "neural", "--ensemble", "--neural-steps", "3",
                                   "--n-jobs", "1")  # the worker pool: the test above
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    members = res["logs"]["neural toy"]["members"]
    assert len(members) == 18 and {m["loss"] for m in members} == {"smape", "mape", "mase"}
    assert {m["lookback"] for m in members} == {2, 3, 4, 5, 6, 7}
    for k in ("NBeats-global", "NBeats-MAML", "FFORMA & NBeats-MAML mean"):
        assert np.isfinite(res["metrics"][k]["Average"]["sMAPE"])


def test_cli_nbeats_g(tmp_path, capsys, monkeypatch):
    import metaphi.forecasting.evaluate as evaluate_mod
    from metaphi.forecasting.cli import main

    seen = []

    def fake_evaluate(sets, methods, neural_config=None, **kw):
        seen.append(neural_config)
        raise ValueError("stop here")

    monkeypatch.setattr(evaluate_mod, "evaluate_forecasters", fake_evaluate)
    rc = main(["forecast", "tourism", "--out", str(tmp_path / "t"), "--max-series", "2",
               "--meta", "neural", "--nbeats-g", "2", "--no-progress"])
    assert rc == 2 and "stop here" in capsys.readouterr().err
    cfgs = seen[0]
    assert sorted(cfgs) == ["tourism-monthly", "tourism-quarterly", "tourism-yearly"]
    assert [cfgs[k].pretrain_steps for k in sorted(cfgs)] == [100, 100, 30]
    assert all(len(c.members()) == 12 and c.blocks == 30 for c in cfgs.values())
    assert all(c.workers == (os.cpu_count() or 1) for c in cfgs.values())  # default: all cores
    main(["forecast", "tourism", "--out", str(tmp_path / "t1"), "--max-series", "2", "--meta",
          "neural", "--nbeats-g", "2", "--n-jobs", "1", "--no-progress"])
    assert all(c.workers == 1 for c in seen[1].values())  # --n-jobs sizes the member pool
    # a user's file has no published settings; mixing with --ensemble is refused
    _, _, rc = _forecast_toy_csv(tmp_path, "u", ["Naive"], "--meta", "neural", "--nbeats-g", "1")
    assert rc == 2 and "no published N-BEATS-G settings for 'toy'" in capsys.readouterr().err
    _, _, rc = _forecast_toy_csv(tmp_path, "v", ["Naive"], "--meta", "neural", "--nbeats-g", "1",
                                 "--ensemble")
    assert rc == 2 and "--nbeats-g sets the whole neural ensemble" in capsys.readouterr().err


def test_cli_neural_loss(tmp_path, capsys, monkeypatch):
    import metaphi.forecasting.evaluate as evaluate_mod

    seen = []

    def fake_evaluate(sets, methods, neural_config=None, **kw):  # the ensemble trains above
        seen.append(neural_config)
        raise ValueError("stop here")

    monkeypatch.setattr(evaluate_mod, "evaluate_forecasters", fake_evaluate)
    _, out, rc = _forecast_toy_csv(tmp_path, "mae", ["Naive"], "--meta", "neural", "--ensemble",
                                   "--neural-steps", "2", "--neural-loss", "mae", "mase")
    assert rc == 2 and "stop here" in capsys.readouterr().err
    members = seen[0].members()
    assert len(members) == 12 and {m.loss for m in members} == {"mae", "mase"}
    assert {m.pretrain_steps for m in members} == {2}
    _, _, rc = _forecast_toy_csv(tmp_path, "two", ["Naive"], "--meta", "neural",
                                 "--neural-loss", "mae", "mase")
    assert rc == 2 and "add --ensemble or give one loss" in capsys.readouterr().err
    _, _, rc = _forecast_toy_csv(tmp_path, "bad", ["Naive"], "--meta", "neural",
                                 "--neural-loss", "rmse")
    assert rc == 2 and ("--neural-loss.0: Input should be 'mae', 'smape', 'mape' or 'mase'"
                        in capsys.readouterr().err)


def test_cli_forecasts_beyond_the_end_of_the_data(tmp_path):
    csv, out, rc = _forecast_toy_csv(tmp_path, "future", ["Naive", "SeasonalNaive", "SES"],
                                     "--future", "--plot-series", "2")
    assert rc == 0
    df = pd.read_csv(out / "forecasts.csv", parse_dates=["ds"])
    hist = pd.read_csv(csv, parse_dates=["ds"])
    assert "y" not in df.columns and len(df) == 24 * 4
    one = df[df.unique_id == "id3"]
    last = hist[hist.unique_id == "id3"].ds.max()
    # the four quarters after the last observation
    assert list(one.ds) == list(pd.date_range(last, periods=5, freq="QS")[1:])
    naive = one["Naive"].to_numpy()
    assert np.allclose(naive, hist[hist.unique_id == "id3"].y.iloc[-1])
    assert np.isfinite(one["FFORMA"]).all()
    res = json.loads((out / "results.json").read_text())
    assert res["metrics"] == {} and "FFORMA" in res["methods"]
    assert (out / "forecasts_toy.png").stat().st_size > 1000


@pytest.mark.parametrize("ds, needle", [
    (pd.to_datetime(["2020-01-01", "2020-01-05", "2020-03-01", "2020-03-02"]), "regularly spaced"),
    (np.array([1, 2, 4, 5]), "evenly spaced"),
])
def test_future_timestamps_need_a_regular_spacing(ds, needle):
    from metaphi.forecasting.data import future_timestamps

    with pytest.raises(ValueError, match=needle):
        future_timestamps(np.asarray(ds), 2, "s")
    assert future_timestamps(np.array([3, 5, 7]), 2).tolist() == [9, 11]


def test_cli_reports_bad_input(tmp_path, capsys):
    from metaphi.forecasting.cli import main

    csv = tmp_path / "bad.csv"
    pd.DataFrame({"unique_id": ["a", "a", "b"], "ds": [1, 1, 1], "y": [1.0, 2.0, 3.0]}).to_csv(csv)
    rc = main(["forecast", str(csv), "--out", str(tmp_path / "o"), "--horizon", "2", "--freq", "M"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "bad.csv line 3 (series 'a'): duplicate timestamp ds=1 (also" in err
    assert main(["forecast", "m5", "--out", str(tmp_path / "o")]) == 2


def test_base_cache_fits_only_the_methods_it_lacks(tmp_path, monkeypatch):
    from metaphi.forecasting import base

    rng = np.random.default_rng(0)
    s = SeriesSet("toy", [f"s{i}" for i in range(4)],
                  [10 + np.sin(np.arange(24) * np.pi / 2) + rng.normal(0, 0.1, 24) for _ in range(4)],
                  4, 4)
    first, sec1 = base.run_base(s, ["Naive", "SES"], cache_dir=tmp_path, progress=False)
    fitted = []
    real_fit = base.compute_chunk
    monkeypatch.setattr(base, "compute_chunk", lambda ys, h, m, methods, *a, **k: (
        fitted.append(methods), real_fit(ys, h, m, methods, *a, **k))[1])
    both, sec2 = base.run_base(s, ["SES", "Theta", "Naive"], cache_dir=tmp_path, progress=False)
    assert fitted == [["Theta"]]
    assert list(both) == ["SES", "Theta", "Naive"] and sec2 > sec1
    np.testing.assert_array_equal(both["SES"], first["SES"])
    again, sec3 = base.run_base(s, ["Theta", "Naive"], cache_dir=tmp_path, progress=False)
    assert fitted == [["Theta"]] and sec3 == pytest.approx(sec2)
    np.testing.assert_array_equal(again["Theta"], both["Theta"])
    with pytest.raises(ValueError, match="choose from"):
        base.run_base(s, ["Thetta"], cache_dir=tmp_path)
