"""Distributed meta-training with 2 processes on CPU (gloo, 127.0.0.1), launched by torchrun.

A distributed run must give the single-process numbers (the same global meta-batch, seed and
tasks; only the order of float summation differs), resume after SIGKILL, and spread a
population's fitness evaluations without changing them.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from metaphi.cli import main
from metaphi.loops import distributed as D
from metaphi.loops.checkpoint import load_checkpoint

MAML_ARGS = ["sinusoid-maml-5shot", "steps=120", "val_every=40", "val_tasks=10", "test_tasks=20",
             "checkpoint_every=10", "meta_batch=4", "--no-progress"]
POP_CFG = {"task": {"source": "sinusoid"}, "learner": {"name": "maml"}, "seed": 3,
           "meta_optimizer": {"name": "es", "popsize": 6, "sigma": 0.05},
           "fitness": {"phi": "vector"}, "steps": 3, "meta_batch": 4, "workers": 0}

# Run by every rank: the all-reduced second-order MAML meta-gradient of one meta-batch, one
# generation of ES fitnesses, and a short population run.
WORKER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from metaphi.loops import distributed as D
    from metaphi.loops.population import PopulationOptions, population_train
    from metaphi.runs.build import build_learner, build_sources
    from metaphi.runs.config import validate_config
    from metaphi.runs.population import build_population_optimizer, task_fitness
    from metaphi.runs.presets import get_preset
    from metaphi.tasks.sources import sample_tasks

    out, pop_cfg = Path(sys.argv[1]), validate_config(json.loads(sys.argv[2]))
    ctx, _ = D.init_from_env("cpu")
    cfg = validate_config(get_preset("sinusoid-maml-5shot"))
    learner = build_learner(cfg)
    start, n = ctx.shard(4)
    tasks = sample_tasks(build_sources(cfg).train, 0, "train", 7, n, start=start)
    stats = learner.meta_backward(tasks, normalize_by=4)
    stats = D.all_reduce_grads_(learner.parameters(), stats, ctx, n, 4)  # the training loop's
    grads = {k: p.grad for k, p in learner.meta_params().items()}
    opt, fitness = build_population_optimizer(pop_cfg), task_fitness(pop_cfg)
    with D.DistributedPopulationEvaluator(fitness, ctx) as evaluate:
        fits = evaluate(opt.ask(), 0)
    res = population_train(build_population_optimizer(pop_cfg), fitness, out / "pop",
                           PopulationOptions(3, workers=0, progress=False))
    if ctx.is_main:
        torch.save({"grads": grads, "stats": stats, "fits": fits, "center": res.center,
                    "world": ctx.world_size}, out / "worker.pt")
    D.shutdown(ctx)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
            "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "--monitor_interval=0.05",
            *args]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def _run(cmd: list[str]) -> None:
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"


def _close(a: dict, b: dict, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=lambda m: f"{k}: {m}")


def _rows(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(l).items() if k != "seconds"}
            for l in path.read_text().splitlines()]


def _same_log(a: Path, b: Path, rel: float = 1e-5) -> None:
    ra, rb = _rows(a), _rows(b)
    assert len(ra) == len(rb)
    for x, y in zip(ra, rb):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k] == pytest.approx(y[k], rel=rel, abs=1e-7), (x["step"], k)


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


# -- unit ----------------------------------------------------------------------------------
def test_rank_blocks_cover_the_meta_batch_once():
    ranks = [D.DistContext(rank=r, world_size=3) for r in range(3)]
    assert [c.shard(6) for c in ranks] == [(0, 2), (2, 2), (4, 2)]
    assert [i for c in ranks for i in c.block(7)] == list(range(7))
    with pytest.raises(ValueError, match="meta_batch=5 cannot be split evenly over 3 processes"):
        ranks[1].shard(5)


def test_single_process_never_starts_torch_distributed(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    ctx, dev = D.init_from_env("cpu")
    assert not ctx.enabled and ctx.is_main and dev == torch.device("cpu")
    assert not torch.distributed.is_initialized()
    stats = {"loss": 1.0}
    w = torch.ones(3, requires_grad=True)
    w.grad = torch.full((3,), 2.0)
    assert D.all_reduce_grads_([w], stats, ctx, 1, 1) is stats  # no collective outside a group
    assert torch.equal(w.grad, torch.full((3,), 2.0))


def test_torchrun_without_rendezvous_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for k in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(RuntimeError, match="launch with torchrun"):
        D.init_from_env("cpu")


def test_meta_batch_not_divisible_by_processes_fails_before_training(tmp_path):
    from metaphi.learners import MAML
    from metaphi.loops.train import TrainOptions, meta_train
    from metaphi.models import mlp
    from metaphi.tasks import SinusoidSource

    learner = MAML(mlp(1, (8,), 1), loss="mse")
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    src = SinusoidSource(5, 5)
    # rank 1 of 2: fails at the split, before any collective, file or step
    with pytest.raises(ValueError, match="meta_batch=3 cannot be split evenly over 2 processes"):
        meta_train(learner, src, src, opt, sched, tmp_path / "run",
                   TrainOptions(steps=2, meta_batch=3, progress=False),
                   dist=D.DistContext(rank=1, world_size=2))
    assert not (tmp_path / "run").exists()


# -- 2 processes vs 1 ----------------------------------------------------------------------
def test_gradient_and_population_fitness_equal_single_process(tmp_path):
    from metaphi.loops.population import PopulationOptions, population_train
    from metaphi.meta import PopulationEvaluator
    from metaphi.runs.build import build_learner, build_sources
    from metaphi.runs.config import validate_config
    from metaphi.runs.population import build_population_optimizer, task_fitness
    from metaphi.runs.presets import get_preset
    from metaphi.tasks.sources import sample_tasks

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    _run(_torchrun(str(script), str(tmp_path), json.dumps(POP_CFG)))
    got = torch.load(tmp_path / "worker.pt", weights_only=False)
    assert got["world"] == 2

    cfg = validate_config(get_preset("sinusoid-maml-5shot"))
    learner = build_learner(cfg)
    stats = learner.meta_backward(sample_tasks(build_sources(cfg).train, 0, "train", 7, 4))
    grads = {k: p.grad for k, p in learner.meta_params().items()}
    _close(got["grads"], grads)  # second-order MAML: exact up to float summation order
    assert got["stats"]["loss"] == pytest.approx(stats["loss"], rel=1e-6)

    pop = validate_config(POP_CFG)
    opt, fitness = build_population_optimizer(pop), task_fitness(pop)
    with PopulationEvaluator(fitness, workers=0) as evaluate:
        assert got["fits"] == pytest.approx(evaluate(opt.ask(), 0), rel=1e-6)
    single = population_train(build_population_optimizer(pop), fitness, tmp_path / "pop1",
                              PopulationOptions(3, workers=0, progress=False))
    np.testing.assert_allclose(got["center"], single.center, rtol=1e-6, atol=1e-9)
    _same_log(tmp_path / "pop" / "metrics.jsonl", tmp_path / "pop1" / "metrics.jsonl", 1e-6)


@pytest.fixture(scope="module")
def maml_runs(tmp_path_factory):
    """The same MAML run with 1 and with 2 processes."""
    root = tmp_path_factory.mktemp("maml")
    _run(_torchrun("-m", "metaphi", "train", *MAML_ARGS, "--out", str(root / "dist")))
    assert main(["train", *MAML_ARGS, "--out", str(root / "single")]) == 0
    return root


def test_distributed_maml_equals_single_process(maml_runs):
    d, s = maml_runs / "dist", maml_runs / "single"
    _close(load_checkpoint(d / "checkpoint.pt")["learner"],
           load_checkpoint(s / "checkpoint.pt")["learner"])
    _same_log(d / "metrics.jsonl", s / "metrics.jsonl")
    rd, rs = (json.loads((p / "results.json").read_text()) for p in (d, s))
    assert rd["world_size"] == 2 and "world_size" not in rs
    assert rd["meta_val_best"]["step"] == rs["meta_val_best"]["step"]
    assert rd["meta_test"]["tasks"] == rs["meta_test"]["tasks"] == 20
    assert rd["meta_test"]["mean"] == pytest.approx(rs["meta_test"]["mean"], rel=1e-5)
    # Only rank 0 wrote: one line per step, nothing else in the folder.
    assert len(_rows(d / "metrics.jsonl")) == 120
    assert sorted(p.name for p in d.iterdir()) == sorted(p.name for p in s.iterdir())


def test_killed_distributed_run_resumes_to_the_uninterrupted_numbers(maml_runs, tmp_path):
    killed = tmp_path / "killed"
    metrics = killed / "metrics.jsonl"
    agent = subprocess.Popen(_torchrun("-m", "metaphi", "train", *MAML_ARGS, "--out",
                                       str(killed)),
                             env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 50:
            break
        if agent.poll() is not None:
            pytest.fail("the distributed run ended before it could be killed")
        time.sleep(0.02)
    # torchrun starts each worker in its own session: kill the workers and the agent (as a
    # crashed job would lose them), all with SIGKILL so nothing can clean up.
    for pid in _children(agent.pid):
        os.kill(pid, signal.SIGKILL)
    agent.send_signal(signal.SIGKILL)
    agent.wait()
    assert not (killed / "results.json").exists()
    done = load_checkpoint(killed / "checkpoint.pt")["step"]
    assert 40 <= done < 120, done

    _run(_torchrun("-m", "metaphi", "train", *MAML_ARGS, "--out", str(killed), "--resume"))
    full = maml_runs / "dist"
    a, b = (json.loads((p / "results.json").read_text()) for p in (full, killed))
    assert a["meta_test"] == b["meta_test"] and a["meta_val_best"] == b["meta_val_best"]
    assert _rows(full / "metrics.jsonl") == _rows(metrics)
    pa, pb = load_checkpoint(full / "best.pt"), load_checkpoint(killed / "best.pt")
    for k in pa["learner"]:
        assert torch.equal(pa["learner"][k], pb["learner"][k]), k


def _image_classes(root: Path, n_classes: int = 15, per_class: int = 4) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(n_classes):
        d = root / f"class{c:02d}"
        d.mkdir(parents=True)
        base = rng.integers(0, 256, (28, 28))
        for i in range(per_class):
            img = np.clip(base + rng.normal(0, 90, (28, 28)), 0, 255).astype(np.uint8)
            Image.fromarray(img, mode="L").save(d / f"{i}.png")
    return root


def test_distributed_protonet_equals_single_process(tmp_path):
    data = _image_classes(tmp_path / "images")
    args = ["omniglot-protonet-5w1s", "task.source=folder", f"task.data_dir={data}",
            "task.n_way=3", "task.train_n_way=null", "task.k_shot=1", "task.n_query=2",
            "task.eval_n_query=2",
            "model.width=8", "model.depth=3", "steps=8", "meta_batch=4", "val_every=4",
            "val_tasks=6", "test_tasks=10", "checkpoint_every=4", "--no-progress",
            # Conv biases before BatchNorm have a zero meta-gradient, i.e. rounding noise that
            # Adam would scale up to lr-sized steps; SGD keeps the comparison meaningful.
            "meta_optimizer.name=sgd", "meta_optimizer.lr=0.01",
            "meta_optimizer.schedule=constant"]
    _run(_torchrun("-m", "metaphi", "train", *args, "--out", str(tmp_path / "dist")))
    assert main(["train", *args, "--out", str(tmp_path / "single")]) == 0
    # Conv-4 sums many more terms than the MLP: rounding differences reach ~1e-6 in 8 steps
    # (a missing rank or a wrong scale would move φ by ~lr * gradient, about 1e-2).
    _close(load_checkpoint(tmp_path / "dist" / "checkpoint.pt")["learner"],
           load_checkpoint(tmp_path / "single" / "checkpoint.pt")["learner"], 1e-4, 1e-5)
    # The squared-distance logits amplify those differences in small losses (1.7e-4 relative
    # seen at step 7).
    _same_log(tmp_path / "dist" / "metrics.jsonl", tmp_path / "single" / "metrics.jsonl", 1e-3)
