"""The named stanzas of the training loops, each on its own, and what they guarantee together:
non-finite training stops before φ changes, metrics logs are trimmed on resume, the best φ is
kept by the learner's own order, unfinished runs are tested from their last checkpoint."""
import json
import math

import numpy as np
import pytest
import torch

from metaphi.cli import main
from metaphi.learners import MAML
from metaphi.loops import train as T
from metaphi.loops.checkpoint import load_checkpoint
from metaphi.loops.population import PopulationOptions, _Average, _log_row, _read_state
from metaphi.models import mlp
from metaphi.tasks import SinusoidSource

SMALL = ["val_every=10", "val_tasks=10", "test_tasks=20", "checkpoint_every=10", "meta_batch=4",
         "--no-progress"]


def _learner(**kw):
    torch.manual_seed(0)
    return MAML(mlp(1, (8,), 1), loss="mse", **kw)


def test_metrics_log_keeps_the_lines_before_the_checkpoint(tmp_path):
    path = tmp_path / "m.jsonl"
    log = T.MetricsLog(path)
    for s in range(5):
        log.write({"step": s})
    log.close()
    T.MetricsLog(path, keep_before_step=3).close()
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [0, 1, 2]
    T.MetricsLog(path).close()  # a fresh run starts an empty log
    assert path.read_text() == ""


def test_keep_best_follows_the_metric_direction():
    learner, state = _learner(), T.TrainState()
    T._keep_best(learner, state, 0.5, 10)
    T._keep_best(learner, state, 0.7, 20)  # MSE: lower is better
    assert (state.best_value, state.best_step) == (0.5, 10)
    T._keep_best(learner, state, 0.2, 30)
    assert state.best_step == 30 and state.best_params.keys() == learner.state_dict().keys()


def test_restore_starts_fresh_without_a_checkpoint_or_resume(tmp_path):
    learner = _learner()
    opt = torch.optim.Adam(learner.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    opts = T.TrainOptions(steps=4, meta_batch=2, checkpoint_every=2, progress=False)
    assert T._restore(learner, opt, sched, tmp_path, opts, T.DistContext()).step == 0
    T.meta_train(learner, SinusoidSource(5, 5), None, opt, sched, tmp_path, opts)
    opts.resume = True
    again = _learner()
    opt2 = torch.optim.Adam(again.parameters())
    state = T._restore(again, opt2, torch.optim.lr_scheduler.LambdaLR(opt2, lambda _: 1.0),
                       tmp_path, opts, T.DistContext())
    assert state.step == 4
    for k, v in learner.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)


def test_outer_step_refuses_a_non_finite_loss_before_phi_changes():
    learner = _learner(inner_lr=1e30)  # the inner step overflows
    opt = torch.optim.SGD(learner.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    tasks = [SinusoidSource(5, 5).sample(np.random.default_rng(i)) for i in range(2)]
    with pytest.raises(T.NonFiniteError, match="diverged at step 3"):
        T._outer_step(learner, tasks, opt, sched, 3,
                      T.TrainOptions(steps=5, meta_batch=2), T.DistContext())
    for k, v in learner.state_dict().items():
        assert torch.equal(before[k], v), k
    with pytest.raises(T.NonFiniteError):
        T.check_finite({"loss": float("nan")}, [], 0)
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([0.0, float("inf")])
    with pytest.raises(T.NonFiniteError):
        T.check_finite({"loss": 1.0}, [p], 0)


def test_a_diverging_run_is_a_clear_error_and_keeps_its_last_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "sinusoid-maml-5shot", "--out", str(out), "steps=20", *SMALL]) == 0
    good = load_checkpoint(out / "checkpoint.pt")
    assert main(["train", "sinusoid-maml-5shot", "--out", str(tmp_path / "inf"), "steps=20",
                 "learner.inner_lr=1e30", *SMALL]) == 2
    err = capsys.readouterr().err
    assert "diverged at step 0" in err and "learner.inner_lr" in err
    assert not (tmp_path / "inf" / "results.json").exists()
    assert load_checkpoint(out / "checkpoint.pt")["step"] == good["step"]
    # an infinite value in a config is refused before any work
    assert main(["train", "sinusoid-maml-5shot", "--out", str(tmp_path / "inf2"),
                 "meta_optimizer.lr=.inf", *SMALL]) == 2
    assert "meta_optimizer.lr" in capsys.readouterr().err
    assert not (tmp_path / "inf2").exists()


def test_an_unfinished_run_is_tested_from_its_last_checkpoint_and_says_so(tmp_path, capsys,
                                                                          monkeypatch):
    import metaphi.runs.run as run_mod

    out = tmp_path / "run"
    assert main(["train", "sinusoid-fomaml-5shot", "--out", str(out), "steps=20", *SMALL]) == 0
    meta_train = run_mod.meta_train

    def stop_at_35(*a, **kw):
        def on_step(step, record):
            if step == 35:
                raise KeyboardInterrupt
        a[-1].on_step = on_step
        return meta_train(*a, **kw)

    monkeypatch.setattr(run_mod, "meta_train", stop_at_35)
    with pytest.raises(KeyboardInterrupt):  # resumed for 40 steps, killed after step 30's save
        main(["train", "sinusoid-fomaml-5shot", "--out", str(out), "steps=40", "--resume", *SMALL])
    capsys.readouterr()
    assert main(["test", str(out), "--json", "--no-progress", "--tasks", "10"]) == 0
    captured = capsys.readouterr()
    res = json.loads(captured.out)
    assert not res["finished"] and res["step"] == 30 and "not finished" in res["note"]
    assert (out / "test_seed1_step30.json").exists()
    # the number of meta-test tasks may change on resume
    monkeypatch.setattr(run_mod, "meta_train", meta_train)
    assert main(["train", "sinusoid-fomaml-5shot", "--out", str(out), "steps=40", "--resume",
                 *SMALL, "test_tasks=15"]) == 0
    assert json.loads((out / "results.json").read_text())["meta_test"]["tasks"] == 15
    assert main(["test", str(out), "--json", "--no-progress", "--tasks", "0"]) == 2


def test_population_stanzas(tmp_path):
    class Opt:
        best, evaluations, spread = ([0.0], 1.5), 4, None

    row = _log_row(Opt(), 3, [1, 2, 3, 4], [1.0, float("nan"), 2.0, float("inf")], 0.01)
    assert (row["non_finite"], row["best_fitness"], row["worst_fitness"]) == (2, 1.0, 2.0)
    assert row["mean_fitness"] == 1.5 and row["popsize"] == 4 and row["best_so_far"] == 1.5
    avg = _Average(2)
    for g in range(5):
        avg.add(g, np.array([float(g)]))
    assert avg.n == 3 and avg.value()[0] == pytest.approx(3.0)
    assert _Average(None).value() is None
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"generation": g}) + "\n"
                                                    for g in range(4)))
    state, rows = _read_state(tmp_path, {}, PopulationOptions(5))
    assert state is None and rows == []  # a fresh run starts a fresh log
    assert math.isfinite(len(rows))


def test_a_wall_time_budget_ends_training_like_a_last_step(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "sinusoid-maml-5shot", "--out", str(out), "steps=100000",
                 "max_seconds=1", *SMALL]) == 0
    res = json.loads((out / "results.json").read_text())
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert 0 < res["steps"] < 100000 and len(rows) == res["steps"]
    assert "val_metric" in rows[-1]  # validated at the last step it took
    assert load_checkpoint(out / "checkpoint.pt")["step"] == res["steps"]
