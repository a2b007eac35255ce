"""Runs end to end: config validation, the CLI, the run folder, resume after SIGKILL, safety."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from metaphi.cli import main
from metaphi.loops.checkpoint import load_checkpoint, save_checkpoint
from metaphi.runs import ConfigError, PRESETS, load_run, validate_config
from metaphi.runs.config import apply_overrides

SMALL = ["steps=40", "val_every=20", "val_tasks=20", "test_tasks=50", "checkpoint_every=10",
         "meta_batch=4"]


SINE = {"task": {"source": "sinusoid"}, "learner": {"name": "maml"}}
OMNI = {"task": {"source": "omniglot", "n_way": 5}, "model": {"name": "conv4", "width": 4}}


def test_bad_field_names_field_and_allowed_values():
    with pytest.raises(ConfigError) as e:
        validate_config({**SINE, "learner": {"name": "mamll"}})
    msg = str(e.value)
    assert "learner.name" in msg and "'mamll'" in msg and "maml" in msg and "reptile" in msg
    with pytest.raises(ConfigError, match=r"learner\.inner_lr: Input should be greater than 0"):
        validate_config({**SINE, "learner": {"name": "maml", "inner_lr": -1}})
    with pytest.raises(ConfigError, match=r"meta_bach: unknown field"):
        validate_config({**SINE, "meta_bach": 3})
    with pytest.raises(ConfigError, match=r"learner\.name: 'protonet' cannot learn regression"):
        validate_config({**SINE, "learner": {"name": "protonet"}})
    omni = {**OMNI, "task": {**OMNI["task"], "train_n_way": 60}, "learner": {"name": "maml"}}
    with pytest.raises(ConfigError, match=r"task\.train_n_way: 'maml' has a 5-unit"):
        validate_config(omni)
    assert validate_config({**omni, "learner": {"name": "protonet"}}).task.train_n_way == 60
    with pytest.raises(ConfigError, match=r"task\.resample: 'sinusoid' has no option 'resample'"):
        validate_config({**SINE, "task": {"source": "sinusoid", "resample": "nearest"}})
    assert validate_config({**omni, "learner": {"name": "protonet"},
                            "task": {**omni["task"], "resample": "nearest"}}).task.resample == "nearest"
    with pytest.raises(ConfigError, match=r"model\.name: 'conv4' does not take vector inputs"):
        validate_config({**SINE, "model": {"name": "conv4"}})
    with pytest.raises(ConfigError, match=r"task\.source: missing; one of"):
        validate_config({"learner": {"name": "maml"}})
    with pytest.raises(ConfigError, match=r"task\.q_queries: renamed to task\.n_query"):
        validate_config({**SINE, "task": {"source": "sinusoid", "q_queries": 3}})
    with pytest.raises(ConfigError, match=r"fitness: for population meta-optimizers only"):
        validate_config({**SINE, "fitness": {"phi": "vector"}})


def test_learner_options_reach_the_learner_and_are_refused_where_they_do_not_apply():
    from metaphi.runs.build import build_learner

    cfg = validate_config({**OMNI, "learner": {"name": "matchingnet", "scale": 10,
                                               "learn_scale": True}})
    mn = build_learner(cfg)
    assert mn.learn_scale and dict(mn.named_parameters())["scale"].item() == 10  # meta-learned
    cfg = validate_config({**OMNI, "learner": {"name": "protonet", "distance": "cosine"}})
    assert build_learner(cfg).distance == "cosine"
    cfg = validate_config({**OMNI, "learner": {"name": "r2d2", "lam": 0.5, "learn_scale": False}})
    r2 = build_learner(cfg)
    assert abs(r2.log_lam.exp().item() - 0.5) < 1e-6 and not r2.learn_scale
    with pytest.raises(ConfigError, match=r"learner\.lam: 'protonet' has no option 'lam'; its "
                                          r"options: .*distance"):
        validate_config({**OMNI, "learner": {"name": "protonet", "lam": 0.5}})
    with pytest.raises(ConfigError, match=r"learner\.distance: 'maml' has no option 'distance'"):
        validate_config({**OMNI, "learner": {"name": "maml", "distance": "cosine"}})
    # an inner learning rate is not silently dropped by learners without an inner loop
    with pytest.raises(ConfigError, match=r"learner\.inner_lr: 'protonet' has no option"):
        validate_config({**OMNI, "learner": {"name": "protonet", "inner_lr": 0.1}})
    with pytest.raises(ConfigError, match=r"learner\.scale: Input should be greater than 0"):
        validate_config({**OMNI, "learner": {"name": "matchingnet", "scale": 0}})
    cfg = validate_config({**OMNI, "learner": {"name": "protonet", "batchnorm": "running",
                                               "batchnorm_tasks": 7}})
    pn = build_learner(cfg)
    assert pn.batchnorm == "running" and pn.batchnorm_tasks == 7
    with pytest.raises(ConfigError, match=r"learner\.batchnorm: 'maml' has no option"):
        validate_config({**OMNI, "learner": {"name": "maml", "batchnorm": "running"}})
    with pytest.raises(ConfigError, match=r"learner\.batchnorm: Input should be 'episode', "
                                          r"'running' or 'support'"):
        validate_config({**OMNI, "learner": {"name": "protonet", "batchnorm": "population"}})


def test_every_learners_options_defaults_are_its_constructors():
    """One default per option: the config's (options model) and the Python API's agree."""
    import inspect

    from metaphi.registry import LEARNERS

    for name in LEARNERS.names():
        entry = LEARNERS.get(name)
        sig = inspect.signature(entry.obj.__init__)
        for field, info in entry.options.model_fields.items():
            if field == "name":
                continue
            if field in sig.parameters:
                assert sig.parameters[field].default == info.get_default(), (name, field)
            else:  # passed through **kw to the parent class
                parent = inspect.signature(entry.obj.__mro__[1].__init__).parameters[field]
                assert parent.default == info.get_default(), (name, field)


def test_overrides_parse_yaml_values():
    d = apply_overrides({"learner": {"inner_lr": 0.01}}, ["learner.inner_lr=0.5", "steps=7",
                                                            "model.hidden=[8, 8]"])
    assert d == {"learner": {"inner_lr": 0.5}, "steps": 7, "model": {"hidden": [8, 8]}}
    with pytest.raises(ConfigError, match="field.sub=value"):
        apply_overrides({}, ["steps"])


def test_presets_are_valid_and_listed(capsys):
    for name in PRESETS:
        validate_config(PRESETS[name])
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for k in (5, 10, 20):
        for learner in ("maml", "fomaml", "metasgd", "anil", "reptile"):
            assert f"sinusoid-{learner}-{k}shot" in out


def test_train_writes_the_run_folder_and_test_reevaluates(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "sinusoid-maml-5shot", "--out", str(out), "--no-progress", *SMALL]) == 0
    for f in ("config.yaml", "metrics.jsonl", "learning_curve.png", "checkpoint.pt", "best.pt",
              "results.json", "sinusoid_fits.png"):
        assert (out / f).exists(), f
    res = json.loads((out / "results.json").read_text())
    assert res["metric"] == "mse" and res["meta_test"]["tasks"] == 50
    assert res["meta_test"]["mean"] > 0 and res["meta_test"]["ci95"] > 0
    assert "torch" in res["versions"] and res["train_seconds"] > 0
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(40))
    assert sum("val_metric" in r for r in rows) == 2
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["steps"] == 40 and cfg["task"]["k_shot"] == 5
    # a second train into the same folder must not clobber it
    assert main(["train", "sinusoid-maml-5shot", "--out", str(out), "--no-progress", *SMALL]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["test", str(out), "--tasks", "30", "--no-progress", "--json"]) == 0
    res2 = json.loads(capsys.readouterr().out)
    assert res2["meta_test"]["tasks"] == 30 and res2["seed"] == 1
    assert res2["meta_test"]["mean"] != res["meta_test"]["mean"]


def test_meta_training_improves_on_sinusoid(tmp_path):
    out = tmp_path / "run"
    main(["train", "sinusoid-maml-10shot", "--out", str(out), "--no-progress", "steps=300",
          "val_every=300", "val_tasks=100", "test_tasks=100", "checkpoint_every=300",
          "meta_batch=10", "meta_optimizer.lr=0.003"])
    res = json.loads((out / "results.json").read_text())
    # An untrained MLP predicting ~0 gets the signal variance (about 4.2); meta-learning must
    # clearly beat that after 300 steps.
    assert res["meta_test"]["mean"] < 2.5


def test_same_seed_same_numbers(tmp_path):
    r = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        main(["train", "sinusoid-fomaml-5shot", "--out", str(out), "--no-progress", *SMALL])
        r.append(json.loads((out / "results.json").read_text())["meta_test"]["mean"])
    main(["train", "sinusoid-fomaml-5shot", "--out", str(tmp_path / "other"), "--seed", "7",
          "--no-progress", *SMALL])
    other = json.loads((tmp_path / "other" / "results.json").read_text())["meta_test"]["mean"]
    assert r[0] == r[1] and other != r[0]


def _metrics_without_time(path: Path):
    rows = [json.loads(l) for l in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_sigkill_then_resume_gives_the_uninterrupted_numbers(tmp_path):
    args = ["sinusoid-maml-5shot", "steps=200", "val_every=50", "val_tasks=20",
            "test_tasks=50", "checkpoint_every=25", "meta_batch=4", "--no-progress"]
    full = tmp_path / "full"
    assert main(["train", *args, "--out", str(full)]) == 0

    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", "import torch,sys; torch.set_num_threads(1); "
           "from metaphi.cli import main; sys.exit(main())", "train", *args, "--out", str(killed)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 80:
            break
        if proc.poll() is not None:
            pytest.fail("the run ended before it could be killed")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists()
    done = len(metrics.read_text().splitlines())
    assert 75 <= done < 200, done
    assert main(["train", *args, "--out", str(killed), "--resume"]) == 0

    a = json.loads((full / "results.json").read_text())
    b = json.loads((killed / "results.json").read_text())
    assert a["meta_test"] == b["meta_test"]
    assert a["meta_val_best"] == b["meta_val_best"]
    assert _metrics_without_time(full / "metrics.jsonl") == _metrics_without_time(metrics)
    pa, pb = load_checkpoint(full / "best.pt"), load_checkpoint(killed / "best.pt")
    for k in pa["learner"]:
        assert torch.equal(pa["learner"][k], pb["learner"][k])


def test_resume_refuses_a_different_config(tmp_path):
    out = tmp_path / "run"
    main(["train", "sinusoid-maml-5shot", "--out", str(out), "--no-progress", *SMALL])
    with pytest.raises(ConfigError, match="config differs"):
        from metaphi.runs import train_run
        from metaphi.runs.presets import get_preset

        cfg = validate_config(apply_overrides(get_preset("sinusoid-maml-5shot"), SMALL + ["seed=3"]))
        train_run(cfg, out, resume=True, progress=False)


def _assert_same_run(a_dir: Path, b_dir: Path, steps: int) -> None:
    a = json.loads((a_dir / "results.json").read_text())
    b = json.loads((b_dir / "results.json").read_text())
    assert b["steps"] == steps and a["meta_test"] == b["meta_test"]
    assert (_metrics_without_time(a_dir / "metrics.jsonl")
            == _metrics_without_time(b_dir / "metrics.jsonl"))


def test_resume_with_more_steps_trains_a_run_longer(tmp_path):
    args = ["sinusoid-fomaml-5shot", "val_every=20", "val_tasks=20", "test_tasks=50",
            "checkpoint_every=10", "meta_batch=4", "--no-progress"]
    main(["train", *args, "steps=60", "--out", str(tmp_path / "straight")])
    main(["train", *args, "steps=40", "--out", str(tmp_path / "longer")])
    assert main(["train", *args, "steps=60", "--out", str(tmp_path / "longer"), "--resume"]) == 0
    _assert_same_run(tmp_path / "straight", tmp_path / "longer", steps=60)
    # fewer steps than the checkpoint holds, or a cosine schedule that depends on the total,
    # are refused
    assert main(["train", *args, "steps=30", "--out", str(tmp_path / "longer"), "--resume"]) == 2


def test_resume_with_fewer_steps_finishes_a_stopped_run_early(tmp_path, monkeypatch):
    import metaphi.runs.run as run_mod

    args = ["sinusoid-fomaml-5shot", "val_every=20", "val_tasks=20", "test_tasks=50",
            "checkpoint_every=10", "meta_batch=4", "--no-progress"]
    main(["train", *args, "steps=40", "--out", str(tmp_path / "straight")])

    def stop_at_45(*a, **kw):  # a 60-step run stopped after its checkpoint at step 40
        def on_step(step, record):
            if step == 45:
                raise KeyboardInterrupt
        a[-1].on_step = on_step  # the TrainOptions
        return meta_train(*a, **kw)

    meta_train = run_mod.meta_train
    monkeypatch.setattr(run_mod, "meta_train", stop_at_45)
    with pytest.raises(KeyboardInterrupt):
        main(["train", *args, "steps=60", "--out", str(tmp_path / "early")])
    monkeypatch.setattr(run_mod, "meta_train", meta_train)
    # below the checkpoint's 40 steps is refused, naming the checkpoint's step
    with pytest.raises(ConfigError, match=r"last checkpoint's step \(40\)"):
        from metaphi.runs import train_run
        from metaphi.runs.presets import get_preset

        over = [a for a in args if "=" in a] + ["steps=30"]
        train_run(validate_config(apply_overrides(get_preset(args[0]), over)), tmp_path / "early",
                  resume=True, progress=False)
    assert main(["train", *args, "steps=40", "--out", str(tmp_path / "early"), "--resume"]) == 0
    _assert_same_run(tmp_path / "straight", tmp_path / "early", steps=40)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/metaphi_pwned_marker",))


def test_loading_a_checkpoint_never_executes_code(tmp_path):
    marker = Path("/tmp/metaphi_pwned_marker")
    marker.unlink(missing_ok=True)
    bad = tmp_path / "evil.pt"
    torch.save({"learner": _Evil()}, bad, pickle_protocol=2)
    with pytest.raises(ValueError, match="cannot load checkpoint"):
        load_checkpoint(bad)
    assert not marker.exists()
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="cannot load checkpoint"):
        load_checkpoint(tmp_path / "corrupt.pt")


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})

    def killed_before_rename(*a, **k):
        raise RuntimeError("killed between write and rename")

    # The new bytes are fully written to a temporary file, then the rename fails: the old
    # checkpoint must survive and the temporary file must not be left behind.
    monkeypatch.setattr(os, "replace", killed_before_rename)
    with pytest.raises(RuntimeError):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_adapt_a_saved_learner_in_three_lines(tmp_path):
    out = tmp_path / "run"
    main(["train", "sinusoid-maml-10shot", "--out", str(out), "--no-progress", *SMALL])
    _, learner = load_run(out)  # in evaluation mode
    x = torch.linspace(-5, 5, 10)[:, None]
    model = learner.adapt(x, 2 * torch.sin(x))
    y = model(torch.zeros(3, 1))
    assert y.shape == (3, 1) and torch.isfinite(y).all() and not y.requires_grad


def test_missing_gpu_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a GPU machine
    assert main(["train", "sinusoid-maml-5shot", "--out", str(tmp_path / "r"), "--device",
                 "cuda", "--no-progress", *SMALL]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_population_config_trains_through_the_cli_and_tests_like_any_run(tmp_path, capsys):
    cfg = tmp_path / "search.yaml"
    cfg.write_text(
        "task: {source: sinusoid}\nlearner: {name: maml}\nseed: 0\n"
        "meta_optimizer: {name: reinforce, popsize: 4, lr: 0.2}\n"
        "space:\n  learner.inner_lr: {type: float, low: 0.001, high: 0.5, log: true}\n"
        "  learner.inner_steps: {type: categorical, choices: [1, 2]}\n"
        "fitness: {phi: hyper, train_steps: 3}\nsteps: 2\nmeta_batch: 4\nworkers: 1\n"
        "test_tasks: 40\n")
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["kind"] == "population" and res["generations"] == 2 and res["evaluations"] == 8
    assert res["meta_test"]["tasks"] == 40 and res["metric"] == "mse"
    center = res["deployed_overrides"]
    assert set(center) == {"learner.inner_lr", "learner.inner_steps"}
    assert 0.001 <= center["learner.inner_lr"] <= 0.5
    assert (out / "learning_curve.png").exists() and (out / "best.pt").exists()
    capsys.readouterr()
    # `metaphi test` re-evaluates it like a gradient run, with the deployed settings
    assert main(["test", str(out), "--no-progress", "--json", "--seed", "0"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["meta_test"] == res["meta_test"]
    _, learner = load_run(out)
    assert learner.inner_lr == pytest.approx(center["learner.inner_lr"])
    # a different config into the same folder is refused before anything there changes
    before = (out / "config.yaml").read_text()
    cfg.write_text(cfg.read_text().replace("popsize: 4", "popsize: 6"))
    assert main(["train", str(cfg), "--out", str(out), "--no-progress"]) == 2
    assert (out / "config.yaml").read_text() == before


def test_es_over_the_initialisation_resumes_and_deploys_the_center(tmp_path):
    cfg = tmp_path / "es.yaml"
    cfg.write_text("task: {source: sinusoid}\nlearner: {name: maml}\nmodel: {name: mlp, "
                   "hidden: [8]}\nmeta_optimizer: {name: es, popsize: 4, sigma: 0.02}\n"
                   "steps: 6\nmeta_batch: 3\nworkers: 1\ntest_tasks: 20\n")
    full, split = tmp_path / "full", tmp_path / "split"
    assert main(["train", str(cfg), "--out", str(full), "--no-progress"]) == 0
    assert main(["train", str(cfg), "--out", str(split), "--no-progress", "steps=3"]) == 0
    assert main(["train", str(cfg), "--out", str(split), "--no-progress", "--resume"]) == 0
    a = json.loads((full / "results.json").read_text())
    b = json.loads((split / "results.json").read_text())
    assert a["meta_test"] == b["meta_test"] and a["generations"] == b["generations"] == 6
    assert "learner.inner_lr" in a["deployed_overrides"]


def test_loader_workers_give_the_same_run_and_may_change_on_resume(tmp_path):
    args = ["sinusoid-fomaml-5shot", "val_every=20", "val_tasks=20", "test_tasks=50",
            "checkpoint_every=10", "meta_batch=4", "--no-progress"]
    main(["train", *args, "steps=40", "--out", str(tmp_path / "in_loop")])
    main(["train", *args, "steps=20", "loader_workers=2", "--out", str(tmp_path / "workers")])
    assert main(["train", *args, "steps=40", "loader_workers=0", "--out",
                 str(tmp_path / "workers"), "--resume"]) == 0
    _assert_same_run(tmp_path / "in_loop", tmp_path / "workers", steps=40)
    with pytest.raises(ConfigError, match=r"loader_workers: Input should be greater than or equal to 0"):
        validate_config({**SINE, "loader_workers": -1})
