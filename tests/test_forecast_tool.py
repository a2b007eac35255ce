"""`metaphi forecast` as a tool: saved models, transfer, resumable chunks, a Dask cluster, pandas
frequencies and the errors that come before any fitting (tiny synthetic data throughout)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pandas as pd
import pytest

from metaphi.forecasting import base
from metaphi.forecasting.cli import main
from metaphi.forecasting.data import validate_long

FAST = ["Naive", "SeasonalNaive", "Naive2", "Theta"]


def _frame(n_series=16, n=40, freq="QS", start="2001-01-01", seed=0, m=4, fmt="%Y-%m-%d"):
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    dates = pd.date_range(start, periods=n, freq=freq).strftime(fmt)
    rows = [(f"id{i}", d, v) for i in range(n_series)
            for d, v in zip(dates, 50 + 0.4 * t * (i % 3) + 6 * np.sin(2 * np.pi * (t + i) / m)
                            + rng.normal(0, 1, n))]
    return pd.DataFrame(rows, columns=["unique_id", "ds", "y"])


def _csv(tmp_path, name="a.csv", **kw):
    path = tmp_path / name
    _frame(**kw).to_csv(path, index=False)
    return path


# saved models ------------------------------------------------------------------------------------

def test_save_load_gives_identical_forecasts(tmp_path):
    import torch

    from metaphi.forecasting import FFORMA
    from metaphi.forecasting.neural import NeuralConfig

    torch.set_num_threads(1)
    tiny = NeuralConfig(width=8, blocks=1, pretrain_steps=8, batch_size=16, meta_steps=2,
                        meta_batch=2, choose_steps=False)
    model = FFORMA(methods=FAST, freq="QS", neural=tiny, n_jobs=1).fit(_frame(), h=4)
    new = _frame(n_series=7, n=30, seed=3, start="1990-04-01")
    before = model.predict(new)
    folder = model.save(tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == [
        "fforma_0.txt", "fforma_1.txt", "fforma_2.txt", "fforma_3.txt", "fforma_4.txt",
        "model.json", "neural_0.safetensors"]
    record = json.loads((folder / "model.json").read_text())
    assert record["settings"]["methods"] == FAST and record["trained_on"][0]["h"] == 4
    after = FFORMA.load(folder).predict(new)
    pd.testing.assert_frame_equal(before, after, check_exact=True)
    # forecasts of the 4 quarters after each series' end, every method a column
    assert list(after.columns[:4]) == ["unique_id", "ds", "step", "FFORMA"]
    assert {"NBeats-MAML", "FFORMA & NBeats-MAML mean", "Theta"} <= set(after.columns)
    last = pd.Timestamp(new[new.unique_id == "id0"].ds.max())
    assert list(after[after.unique_id == "id0"].ds) == list(
        pd.date_range(last, periods=5, freq="QS")[1:])
    # a damaged or incomplete folder is refused with the file named
    (folder / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match="model.json: cannot load the model"):
        FFORMA.load(folder)
    (folder / "model.json").unlink()
    with pytest.raises(ValueError, match="has no model.json"):
        FFORMA.load(folder)


def test_transfer_through_the_cli(tmp_path, capsys):
    """Fit on a built-in dataset, forecast a user's file with the saved model (transfer)."""
    model = tmp_path / "model"
    assert main(["forecast", "fit", "m3-other", "--max-series", "24", "--out", str(model),
                 "--methods", *FAST, "--n-jobs", "1", "--no-progress"]) == 0
    assert "fitted FFORMA on 24 series" in capsys.readouterr().out
    assert not (model / "cache").exists()  # the model folder keeps only the model
    csv = _csv(tmp_path, n_series=9, n=36)
    out = tmp_path / "pred"
    assert main(["forecast", "predict", str(model), str(csv), "--horizon", "4", "--freq", "QS",
                 "--out", str(out), "--n-jobs", "1", "--no-progress"]) == 0
    df = pd.read_csv(out / "forecasts.csv", parse_dates=["ds"], float_precision="round_trip")
    assert len(df) == 9 * 4 and {"ds", "y", "FFORMA", "Theta"} <= set(df.columns)
    truth = _frame(n_series=9, n=36)
    assert df.ds.iloc[0] == pd.Timestamp(truth.ds.iloc[32])  # the held-out quarters' dates
    res = json.loads((out / "results.json").read_text())
    assert res["logs"]["trained_on"][0]["name"] == "m3-other"
    assert res["metrics"]["FFORMA"]["a"]["sMAPE"] < res["metrics"]["Naive"]["a"]["sMAPE"]
    assert (out / "forecasts_a.png").stat().st_size > 1000
    # the same forecasts as the Python API with the loaded model
    from metaphi.forecasting import FFORMA

    api = FFORMA.load(model, n_jobs=1)
    sets = api.load_data(csv, 4, freq="QS", future=False)
    np.testing.assert_array_equal(api.forecast_sets(sets)["a"]["FFORMA"].ravel(),
                                  df["FFORMA"].to_numpy())
    # beyond the end, with the saved model's options fixed
    assert main(["forecast", "predict", str(model), str(csv), "--horizon", "4", "--freq", "QS",
                 "--future", "--out", str(tmp_path / "fut"), "--n-jobs", "1",
                 "--no-progress"]) == 0
    fut = pd.read_csv(tmp_path / "fut" / "forecasts.csv", parse_dates=["ds"])
    assert "y" not in fut and fut.ds.min() > pd.Timestamp(truth.ds.max())
    assert main(["forecast", "predict", str(model), str(csv), "--horizon", "4", "--out",
                 str(tmp_path / "x"), "--methods", "all", "--no-progress"]) == 2
    assert "--methods: a saved model fixes" in capsys.readouterr().err


# scale: chunks, resume, one progress bar ---------------------------------------------------------

def _files(cache):
    return sorted(p.name for p in cache.glob("base-*.npz")) if cache.exists() else []


def test_a_killed_forecast_resumes_where_it_stopped(tmp_path, monkeypatch):
    csv = _csv(tmp_path, n_series=100, n=40)
    out = tmp_path / "out"
    # base forecasters only (--meta none): the chunks of their work are what is resumed
    args = ["forecast", str(csv), "--out", str(out), "--horizon", "4", "--freq", "QS",
            "--methods", "Naive", "Naive2", "Theta", "CES", "--meta", "none", "--chunk-size",
            "20", "--n-jobs", "1", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-m", "metaphi", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(_files(out / "cache")) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _files(out / "cache")
    total = 5  # chunks of 20 series
    assert 2 <= len(done) < total, done
    assert not (out / "forecasts.csv").exists()
    # started again, the run fits only the chunks it had not finished
    fitted = []
    real = base.compute_chunk
    monkeypatch.setattr(base, "compute_chunk", lambda ys, h, m, methods, *a, **k: (
        fitted.append(methods) if methods else None, real(ys, h, m, methods, *a, **k))[1])
    assert main(args) == 0
    assert len(fitted) == total - len(done)
    fitted.clear()
    # and its forecasts are those of a run never interrupted
    assert main(args[:3] + [str(tmp_path / "fresh")] + args[4:]) == 0
    assert len(fitted) == total
    pd.testing.assert_frame_equal(pd.read_csv(out / "forecasts.csv"),
                                  pd.read_csv(tmp_path / "fresh" / "forecasts.csv"))


def test_cache_writes_are_atomic_and_bad_entries_are_recomputed(tmp_path):
    from metaphi.forecasting.data import SeriesSet

    rng = np.random.default_rng(0)
    s = SeriesSet("t", [f"s{i}" for i in range(6)],
                  [50 + rng.normal(0, 1, 20).cumsum() for _ in range(6)], 3, 1)
    first, _ = base.run_base(s, ["Naive", "SES"], cache_dir=tmp_path, chunk=3, progress=False)
    files = _files(tmp_path)
    assert len(files) == 2 and not list(tmp_path.glob(".*"))  # no temporary file is left
    # a write killed half-way (a temp file of a dead process) and a truncated entry
    (tmp_path / f".{files[0]}.999999999.abcd.tmp").write_bytes(b"PK\x03\x04 partial")
    (tmp_path / "base_t_0123456789abcdef0123_1.tmp.npz").write_bytes(b"PK")  # old-style temp
    data = (tmp_path / files[1]).read_bytes()
    (tmp_path / files[1]).write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match=f"discarding the damaged cache file .*{files[1]}"):
        again, _ = base.run_base(s, ["Naive", "SES"], cache_dir=tmp_path, chunk=3,
                                 progress=False)
    for k in first:
        np.testing.assert_array_equal(again[k], first[k])
    assert _files(tmp_path) == files and not list(tmp_path.glob(".*.tmp"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all entries good again: read without a warning
        base.run_base(s, ["Naive", "SES"], cache_dir=tmp_path, chunk=3, progress=False)


def test_one_progress_bar_over_all_stages(tmp_path, capsys):
    csv = _csv(tmp_path, n_series=12, n=24)
    assert main(["forecast", str(csv), "--out", str(tmp_path / "o"), "--horizon", "4",
                 "--freq", "QS", "--methods", *FAST, "--n-jobs", "1"]) == 0
    bars = [b for line in capsys.readouterr().err.splitlines() for b in line.split("\r")
            if b.strip()]
    assert bars and all(b.startswith("forecast:") for b in bars)
    assert "100%" in bars[-1]
    assert any("base forecasters and features" in b for b in bars)


# beyond one machine ------------------------------------------------------------------------------

def test_dask_cluster_gives_the_single_process_numbers(tmp_path):
    import logging

    import distributed  # the test extra installs the dask extra: missing is a failure
    import fugue_dask  # noqa: F401
    csv = _csv(tmp_path, n_series=12, n=24)
    common = ["--horizon", "4", "--freq", "QS", "--methods", *FAST, "--no-progress"]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  host="127.0.0.1", protocol="tcp", dashboard_address=None,
                                  silence_logs=logging.ERROR) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        assert main(["forecast", str(csv), "--out", str(tmp_path / "dask"), "--backend", "dask",
                     "--dask-address", cluster.scheduler_address, *common]) == 0
    assert main(["forecast", str(csv), "--out", str(tmp_path / "local"), "--n-jobs", "1",
                 *common]) == 0
    a = pd.read_csv(tmp_path / "dask" / "forecasts.csv")
    b = pd.read_csv(tmp_path / "local" / "forecasts.csv")
    assert {"FFORMA", "Theta"} <= set(a.columns)
    pd.testing.assert_frame_equal(a, b, check_exact=True)


# the ecosystem's conventions ----------------------------------------------------------------------

@pytest.mark.parametrize("alias, m", [("MS", 12), ("ME", 12), ("M", 12), ("QS-DEC", 4), ("Q", 4),
                                      ("W-SUN", 52), ("D", 7), ("B", 5), ("h", 24), ("H", 24),
                                      ("15min", 96), ("YS", 1), ("A", 1), ("2MS", 6), ("5D", 1)])
def test_season_length_of_pandas_aliases(alias, m):
    from metaphi.forecasting.freq import season_length

    assert season_length(alias) == m


@pytest.mark.parametrize("freq, start", [("MS", "2000-01-01"), ("ME", "2000-01-31"),
                                         ("QS-DEC", "1999-12-01"), ("W-SUN", "2020-01-05"),
                                         ("h", "2020-01-01 00:00"), ("B", "2020-01-06")])
def test_any_pandas_frequency_is_checked_and_forecast_beyond(freq, start):
    from metaphi.forecasting.freq import season_length

    df = _frame(n_series=2, n=30, freq=freq, start=start, fmt="%Y-%m-%d %H:%M")
    s = validate_long(df, 3, freq=freq, holdout=False)
    assert s.m == season_length(freq)
    expect = pd.date_range(pd.Timestamp(df.ds.iloc[29]), periods=4, freq=freq)[1:]
    assert list(pd.DatetimeIndex(s.test_ds[0])) == list(expect)
    # the same dates under another frequency are refused, naming the series and row
    wrong = "h" if freq == "B" else "D"
    with pytest.raises(ValueError, match=r"row 2 \(series 'id0'\): ds .* is not the next"):
        validate_long(df, 3, freq=wrong, holdout=False)


def test_mixed_date_formats_that_read_unambiguously_are_accepted():
    df = _frame(n_series=2, n=12, freq="MS")
    df.loc[3, "ds"] = df.loc[3, "ds"] + " 00:00:00"
    df.loc[5, "ds"] = pd.Timestamp(df.loc[5, "ds"]).strftime("%d %B %Y")  # "01 June 2001"
    s = validate_long(df, 2, holdout=False)  # frequency inferred: monthly
    assert s.freq == "MS" and s.m == 12 and len(s.ds[0]) == 12
    df.loc[7, "ds"] = "08/03/2001"  # month-first and day-first read differently
    with pytest.raises(ValueError, match=r"row 8 \(series 'id0'\): ds '08/03/2001' is ambiguous"):
        validate_long(df, 2, holdout=False)


# clear errors before any fitting -----------------------------------------------------------------

def _no_fitting(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("fitting started before the input was checked")

    monkeypatch.setattr(base, "compute_chunk", refuse)


@pytest.mark.parametrize("change, extra, needle", [
    (None, ["--max-series", "0"], "--max-series: Input should be greater than or equal to 1"),
    (None, ["--season-length", "-12"], "--season-length: Input should be greater than or equal"),
    (None, ["--freq", "QX"], "--freq: 'QX' is not a pandas offset alias"),
    (None, ["--backend", "dask"], "--backend dask needs the scheduler's address"),
    (lambda d: d.assign(y=5.0), [], "every series is constant"),
    (lambda d: d.drop(index=7), ["--freq", "QS"],
     r"a.csv line 9 \(series 'id0'\): ds 2003-01-01 after 2002-07-01 is not the next 'QS' step"),
    (lambda d: d.drop(index=5 * 24 + 7), [],  # frequency inferred from the first series
     r"a.csv line 129 \(series 'id5'\): ds 2003-01-01 after 2002-07-01 is not the next"),
    (None, ["--freq", "MS"], r"a.csv line 3 \(series 'id0'\): ds 2001-04-01 after 2001-01-01"),
    (lambda d: d.assign(ds=d.ds.where(d.index != 9, "soon")), [],
     r"a.csv line 11 \(series 'id0'\): ds 'soon' is not a date"),
    (lambda d: d[d.unique_id.isin(["id0", "id1", "id2"])], [],
     "FFORMA needs at least 10 series to meta-train on; the data .a. has 3"),
])
def test_bad_input_is_an_error_before_fitting(tmp_path, capsys, monkeypatch, change, extra,
                                              needle):
    df = _frame(n_series=12, n=24)
    (change or (lambda d: d))(df).to_csv(tmp_path / "a.csv", index=False)
    _no_fitting(monkeypatch)
    rc = main(["forecast", str(tmp_path / "a.csv"), "--out", str(tmp_path / "o"), "--horizon",
               "4", "--methods", *FAST, "--no-progress", *extra])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert re.search(needle, err), err
    assert err.startswith("metaphi forecast: error: ")


def test_out_that_is_a_file_is_refused_untouched(tmp_path, capsys, monkeypatch):
    _csv(tmp_path)
    (tmp_path / "taken").write_text("keep me")
    _no_fitting(monkeypatch)
    assert main(["forecast", str(tmp_path / "a.csv"), "--out", str(tmp_path / "taken"),
                 "--horizon", "4", "--no-progress"]) == 2
    assert f"--out {tmp_path / 'taken'} is a file" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "keep me"


def test_too_few_series_fall_back_to_the_mean_when_asked(tmp_path, capsys):
    df = _frame(n_series=4, n=24)
    df.to_csv(tmp_path / "few.csv", index=False)
    assert main(["forecast", str(tmp_path / "few.csv"), "--out", str(tmp_path / "o"),
                 "--horizon", "4", "--methods", *FAST, "--fallback", "mean", "--n-jobs", "1",
                 "--no-progress"]) == 0
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert "FFORMA" not in res["metrics"] and "Mean" in res["metrics"]
    assert "FFORMA left out" in res["logs"]["fallback"]
