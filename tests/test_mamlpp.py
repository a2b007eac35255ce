"""MAML++: its multi-step meta-gradient against float64 finite differences, derivative-order
annealing against the first-order identity, the schedules over outer steps (and resuming
them), per-step BatchNorm, and `metaphi train omniglot-mamlpp-5w1s` on a tiny Omniglot."""
import functools
import json

import pytest
import torch

from metaphi.learners import MAMLpp
from metaphi.learners.mamlpp import StepAdapted, multi_step_weights
from metaphi.loops.train import TrainOptions, meta_train
from metaphi.tasks import FewShotSource, TensorData

from helpers import meta_grad
from test_meta_gradients import DEV, DT, directional_fd_check, rel_err, small_net, tasks


def make(**kw):
    kw = {"inner_lr": 0.3, "inner_steps": 3, "multi_step_loss_steps": 10, **kw}
    learner = MAMLpp(small_net(), **kw).to(DEV, DT)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # distinct per-step rates and BatchNorm weights, so that they matter
        for p in learner.lrs.values():
            p.copy_(0.1 + 0.4 * torch.rand(p.shape, generator=g, dtype=DT))
        for p in [*learner.bn_weight.values(), *learner.bn_bias.values()]:
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=DT))
    return learner


def test_multi_step_meta_gradient_matches_finite_differences():
    learner = make()
    learner.set_outer_step(4)  # the multi-step loss's weights are 0.2, 0.2, 0.6
    assert learner.step_weights() == pytest.approx([0.2, 0.2, 0.6])
    ts = tasks(2)
    grads, _ = meta_grad(learner, ts)
    assert int(learner.outer_step) == 5  # meta_backward advances the outer step
    learner.set_outer_step(4)
    err = directional_fd_check(lambda: float(learner.meta_loss(ts)[0].detach()),
                               learner.meta_params(), grads, n_random=1)
    assert err < 1e-5
    # per-step learning rates and per-step BatchNorm weights are part of φ
    assert learner.bn_weight["features__1"].shape == (3, 3)
    for name in ("lrs.head__weight", "bn_weight.features__1", "bn_bias.features__6"):
        assert float(grads[name].abs().sum()) > 0


def test_multi_step_weights_anneal_to_the_last_step():
    assert multi_step_weights(5, 0.0) == pytest.approx([0.2] * 5)
    w = multi_step_weights(5, 0.5)
    assert w == pytest.approx([0.1] * 4 + [0.6]) and sum(w) == pytest.approx(1)
    w = multi_step_weights(5, 0.99)  # the floor 0.03 / steps
    assert w[:4] == pytest.approx([0.006] * 4) and sum(w) == pytest.approx(1)
    assert multi_step_weights(5, 1.0) == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert multi_step_weights(1, 0.0) == [1.0]
    assert make(multi_step_loss_steps=0).step_weights() == [0.0, 0.0, 1.0]


def test_derivative_order_annealing_is_first_order_first():
    learner = make(first_order_steps=2, multi_step_loss_steps=0)
    ts = tasks(2)
    learner.set_outer_step(1)
    assert not learner.second_order_now()
    g_first, _ = meta_grad(learner, ts)
    assert learner.second_order_now()  # outer step 2
    g_second, _ = meta_grad(learner, ts)
    assert rel_err(g_first, g_second) > 1e-3
    # first order: the inner gradients are constants, so for every adapted weight the
    # meta-gradient is the query gradient at the adapted weights
    learner.train()
    ref: dict[str, torch.Tensor] = {}
    for t in ts:
        fast = learner.adapt(t.support_x, t.support_y, create_graph=False).params
        leaves = {n: p.detach().requires_grad_(True) for n, p in fast.items()}
        loss = learner.loss_fn(StepAdapted(learner, leaves)(t.query_x), t.query_y)
        for n, g in zip(leaves, torch.autograd.grad(loss, list(leaves.values()))):
            ref[n] = ref.get(n, 0) + g / len(ts)
    for n in learner.adapted_names():
        assert torch.allclose(g_first["model." + n], ref[n], rtol=1e-10, atol=1e-12)


def test_per_step_batchnorm_running_statistics():
    learner = make(batchnorm="running", batchnorm_tasks=3)
    bn = learner.model.features[1]
    assert bn.weight is None and bn.running_mean is None  # supplied per step
    t = tasks(1)[0]
    learner.eval()
    with pytest.raises(RuntimeError, match="no running statistics yet"):
        learner.adapt(t.support_x, t.support_y)
    assert learner.fit_batchnorm(tasks(3)) == 3
    mean = learner.bn_stats.features__1__mean
    assert mean.shape == (3, 3) and not torch.allclose(mean[0], mean[2])
    model = learner.adapt(t.support_x, t.support_y)
    full = model(t.query_x)
    # evaluation normalises with the step's running statistics: an input's prediction does
    # not depend on the rest of its batch
    assert torch.allclose(full[:2], model(t.query_x[:2]), atol=1e-12)
    learner.train()
    a = learner.adapt(t.support_x, t.support_y)  # training mode: batch statistics
    assert not torch.allclose(a(t.query_x)[:2], a(t.query_x[:2]))


def test_schedules_resume_where_the_run_stopped(tmp_path):
    x = torch.randn(12 * 6, 1, 6, 6, generator=torch.Generator().manual_seed(1), dtype=DT)
    src = FewShotSource(TensorData(x, torch.arange(12).repeat_interleave(6)), range(12), 3, 2, 2)

    def run(out, steps, resume=False):
        learner = make(first_order_steps=2, multi_step_loss_steps=3)
        opt = torch.optim.Adam(learner.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        meta_train(learner, src, None, opt, sched, out, TrainOptions(
            steps=steps, meta_batch=2, checkpoint_every=1, progress=False, resume=resume))
        return learner

    straight = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 4, resume=True)
    assert int(straight.outer_step) == int(resumed.outer_step) == 4
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_cli_trains_the_omniglot_preset_on_a_tiny_omniglot(tmp_path, monkeypatch):
    import metaphi.data.omniglot as og
    from metaphi.cli import main
    from metaphi.loops.checkpoint import load_checkpoint

    from omniglot_fixture import make_omniglot_fixture, write_mini_split

    folder = make_omniglot_fixture(tmp_path / "omniglot")
    write_mini_split(folder)
    # the fixture is a partial copy: load it without the completeness check
    monkeypatch.setattr(og, "load_omniglot", functools.partial(
        og.load_omniglot, strict=False, cache_dir=tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["train", "omniglot-mamlpp-5w1s", "--out", str(out), "--no-progress",
                 f"task.data_dir={folder}", "task.split=mini", "task.eval_n_query=2",
                 "model.width=4", "steps=3", "val_every=3", "val_tasks=4", "test_tasks=4",
                 "checkpoint_every=3", "meta_batch=2", "learner.batchnorm_tasks=2",
                 "learner.multi_step_loss_steps=2", "learner.first_order_steps=1"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert 0.0 <= res["meta_test"]["mean"] <= 1.0 and res["meta_test"]["tasks"] == 4
    best = load_checkpoint(out / "best.pt")["learner"]
    assert int(best["outer_step"]) == 3 and bool(best["bn_stats.fitted"])
