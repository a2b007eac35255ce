"""Meta-gradients of every gradient-based learner against independent float64 references.

The network includes BatchNorm (transductive batch statistics). MAML, Meta-SGD and ANIL are
checked against central finite differences of the meta-objective; first-order MAML and Reptile,
whose updates are not gradients of the meta-objective, against an unrolled computation written
here independently of the library's inner loop. Both the per-task loop and the task-batched
path are covered. ``METAPHI_TEST_DEVICE=cuda`` runs the same checks on a GPU (float64 there too).
"""
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metaphi.learners import ANIL, FOMAML, MAML, MetaSGD, Reptile
from metaphi.models import Classifier
from metaphi.tasks import FewShotSource, Task, TensorData, sample_tasks

from helpers import meta_grad

DT = torch.float64
DEV = torch.device(os.environ.get("METAPHI_TEST_DEVICE", "cpu"))


def small_net(n_way=3):
    torch.manual_seed(0)
    feats = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 3 * 3, 5),
                          nn.BatchNorm1d(5), nn.Tanh())
    return Classifier(feats, nn.Linear(5, n_way)).to(DT)


def tasks(n=3, n_way=3, k=2, q=2):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12 * 6, 1, 6, 6, generator=g, dtype=DT)
    y = torch.arange(12).repeat_interleave(6)
    src = FewShotSource(TensorData(x, y), range(12), n_way, k, q)
    return [t.to(DEV) for t in sample_tasks(src, 0, "train", 0, n)]


def directional_fd_check(f, params, grads, eps=1e-6, n_random=3, seed=0):
    """Compare <grad, v> with the central difference of f along v, for one random direction
    inside each parameter tensor (so every tensor's gradient is checked) and a few random
    directions through all of them. Returns the worst relative error."""
    g = torch.Generator().manual_seed(seed)
    names = list(params)
    directions = []
    for n in names:
        directions.append({n: torch.randn(params[n].shape, generator=g, dtype=DT).to(DEV)})
    for _ in range(n_random):
        directions.append({n: torch.randn(params[n].shape, generator=g, dtype=DT).to(DEV)
                           for n in names})
    worst = 0.0
    for v in directions:
        with torch.no_grad():
            for n, d in v.items():
                params[n].add_(eps * d)
        up = f()
        with torch.no_grad():
            for n, d in v.items():
                params[n].sub_(2 * eps * d)
        down = f()
        with torch.no_grad():
            for n, d in v.items():
                params[n].add_(eps * d)
        fd = (up - down) / (2 * eps)
        an = sum(float((grads[n] * d).sum()) for n, d in v.items())
        # relative error, with an absolute floor for directions whose true derivative is ~0
        # (e.g. a conv bias followed by BatchNorm), where only round-off remains
        worst = max(worst, abs(an - fd) / (abs(fd) + 1e-4))
    return worst


def rel_err(a, b):
    num = sum(float((a[k] - b[k]).norm() ** 2) for k in a) ** 0.5
    den = sum(float(b[k].norm() ** 2) for k in b) ** 0.5
    return num / den


def make(cls, **kw):
    return cls(small_net(), loss="ce", **kw).to(DEV, DT)


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("cls,kw", [
    (MAML, dict(inner_lr=0.3, inner_steps=2)),
    (MetaSGD, dict(inner_lr=0.3, inner_steps=2)),
    (ANIL, dict(inner_lr=0.3, inner_steps=2)),
])
def test_second_order_meta_gradient_matches_finite_differences(cls, kw, batched):
    learner = make(cls, batched=batched, **kw)
    ts = tasks()
    if isinstance(learner, MetaSGD):  # distinct per-entry rates so they matter
        with torch.no_grad():
            for p in learner.lrs.values():
                p.uniform_(0.1, 0.5)
    params = learner.meta_params()
    grads, _ = meta_grad(learner, ts)

    def meta_loss():
        return float(learner.meta_loss(ts)[0].detach())

    assert directional_fd_check(meta_loss, params, grads) < 1e-5
    if batched:
        assert learner.use_batched(ts), "the batched path must actually run"


def unrolled_first_order(model, params, task, lr, steps):
    """FOMAML by hand: SGD with detached gradients, then the query gradient at the result."""
    theta = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    for _ in range(steps):
        loss = F.cross_entropy(functional_call(model, theta, (task.support_x,)), task.support_y)
        gs = torch.autograd.grad(loss, list(theta.values()))
        theta = {k: (v - lr * g).detach().requires_grad_(True) for (k, v), g in zip(theta.items(), gs)}
    loss = F.cross_entropy(functional_call(model, theta, (task.query_x,)), task.query_y)
    return dict(zip(theta, torch.autograd.grad(loss, list(theta.values()))))


@pytest.mark.parametrize("batched", [False, True])
def test_first_order_maml_matches_unrolled_reference(batched):
    learner = make(FOMAML, inner_lr=0.3, inner_steps=3, batched=batched)
    ts = tasks()
    grads, _ = meta_grad(learner, ts)
    model_params = {k[len("model."):]: v for k, v in learner.meta_params().items()}
    ref = {}
    for t in ts:
        for k, g in unrolled_first_order(learner.model, model_params, t, 0.3, 3).items():
            ref["model." + k] = ref.get("model." + k, 0) + g / len(ts)
    assert rel_err(grads, ref) < 1e-10


def test_first_order_differs_from_second_order():
    ts = tasks()
    g1, _ = meta_grad(make(MAML, inner_lr=0.3, inner_steps=2), ts)
    g2, _ = meta_grad(make(FOMAML, inner_lr=0.3, inner_steps=2), ts)
    assert rel_err(g2, g1) > 1e-3


def test_reptile_matches_unrolled_reference():
    learner = make(Reptile, inner_lr=0.1, inner_steps=4)
    ts = tasks()
    grads, _ = meta_grad(learner, ts)
    params = {k[len("model."):]: v.detach() for k, v in learner.meta_params().items()}
    ref = {"model." + k: torch.zeros_like(v) for k, v in params.items()}
    for t in ts:
        x, y = torch.cat([t.support_x, t.query_x]), torch.cat([t.support_y, t.query_y])
        theta = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        for _ in range(4):
            loss = F.cross_entropy(functional_call(learner.model, theta, (x,)), y)
            gs = torch.autograd.grad(loss, list(theta.values()))
            theta = {k: (v - 0.1 * g).detach().requires_grad_(True)
                     for (k, v), g in zip(theta.items(), gs)}
        for k in params:
            ref["model." + k] += (params[k] - theta[k].detach()) / len(ts)
    assert rel_err(grads, ref) < 1e-10


def test_batched_and_loop_paths_agree_in_float32_on_conv4():
    from metaphi.models import conv4

    torch.manual_seed(0)
    x = torch.randn(40 * 4, 1, 28, 28)
    y = torch.arange(40).repeat_interleave(4)
    ts = [t.to(DEV) for t in
          sample_tasks(FewShotSource(TensorData(x, y), range(40), 5, 1, 3), 0, "train", 0, 4)]
    learner = MAML(conv4(5, hidden=8), inner_lr=0.4, inner_steps=2).to(DEV)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # on a GPU: compare float32 with float32, not TF32
    try:
        learner.batched = False
        g_loop, s_loop = meta_grad(learner, ts)
        learner.batched = True
        g_bat, s_bat = meta_grad(learner, ts)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    assert abs(s_loop["loss"] - s_bat["loss"]) < 1e-5
    assert rel_err(g_bat, g_loop) < 1e-4


def test_batchnorm_is_transductive_and_keeps_no_running_stats():
    learner = make(MAML, inner_lr=0.3)
    for m in learner.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert m.running_mean is None and not m.track_running_stats
    t = tasks(1)[0]
    a = learner.eval().adapt(t.support_x, t.support_y)
    # query predictions depend on the query batch's own statistics (transductive)
    full = a(t.query_x)
    single = a(t.query_x[:2])
    assert not torch.allclose(full[:2], single)


def test_three_lines_adapt_and_predict():
    learner = make(MAML, inner_lr=0.5, inner_steps=2, eval_inner_steps=5).eval()
    t = tasks(1)[0]
    model = learner.adapt(t.support_x, t.support_y)
    logits = model(t.support_x)
    assert logits.shape == (len(t.support_y), 3)
    before = F.cross_entropy(learner.model(t.support_x), t.support_y)
    after = F.cross_entropy(logits, t.support_y)
    assert after < before
    assert not any(v.requires_grad for v in model.params.values())


def test_train_and_eval_modes_decide_steps_and_differentiability():
    learner = make(MAML, inner_lr=0.5, inner_steps=1, eval_inner_steps=4)
    t = tasks(1)[0]
    trained = learner.train().adapt(t.support_x, t.support_y)
    evaluated = learner.eval().adapt(t.support_x, t.support_y)
    explicit = learner.eval().adapt(t.support_x, t.support_y, steps=1)
    assert all(v.requires_grad for v in trained.params.values())  # in the graph to φ
    assert not any(v.requires_grad for v in evaluated.params.values())
    w = "head.weight"
    assert torch.allclose(trained.params[w].detach(), explicit.params[w])  # 1 step each
    assert not torch.allclose(evaluated.params[w], explicit.params[w])  # 4 steps
    with torch.no_grad():  # no graph without gradients, whatever the mode
        assert not learner.train().adapt(t.support_x, t.support_y).params[w].requires_grad


def test_meta_backward_accumulates_like_backward_and_normalises():
    ts = tasks()
    learner = make(MAML, inner_lr=0.3, inner_steps=2)
    g1, _ = meta_grad(learner, ts)
    learner.meta_backward(ts)  # a second call adds to .grad, as loss.backward() does
    twice = {n: p.grad for n, p in learner.meta_params().items()}
    assert rel_err(twice, {n: 2 * g for n, g in g1.items()}) < 1e-12
    g7, _ = meta_grad(learner, ts, normalize_by=7)
    assert rel_err(g7, {n: g * len(ts) / 7 for n, g in g1.items()}) < 1e-12


def test_custom_loss_callable():
    ts = tasks()
    learner = make(MAML, inner_lr=0.3)
    custom = MAML(small_net(), loss=lambda out, y: F.cross_entropy(out, y, label_smoothing=0.0),
                  inner_lr=0.3).to(DEV, DT)
    ga, sa = meta_grad(learner, ts)
    gb, sb = meta_grad(custom, ts)
    assert rel_err(gb, ga) < 1e-12 and sb["loss"] == pytest.approx(sa["loss"])
    assert custom.metric_name == "loss" and not custom.higher_is_better


def test_bad_inner_settings_are_clear_errors():
    with pytest.raises(ValueError, match="inner_lr must be > 0"):
        MAML(small_net(), inner_lr=0.0)
    with pytest.raises(ValueError, match="inner_steps must be >= 1"):
        MAML(small_net(), inner_steps=0)


def test_anil_with_a_recurrent_backbone_says_how_to_wrap_it():
    class Last(nn.Module):  # what the error asks for: the GRU's last hidden state
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(3, 8, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.gru(x)[1][-1]

    sx, sy = torch.randn(6, 4, 3), torch.arange(3).repeat(2)
    bare = ANIL(Classifier(nn.GRU(3, 8, batch_first=True), nn.Linear(8, 3)))
    with pytest.raises(TypeError, match=r"nn.GRU returns \(outputs, hidden\): wrap it"):
        bare.adapt(sx, sy)
    wrapped = ANIL(Classifier(Last(), nn.Linear(8, 3)))
    assert wrapped.adapt(sx, sy)(torch.randn(5, 4, 3)).shape == (5, 3)


def test_the_finite_difference_check_can_fail():
    """First-order gradients are not the MAML meta-gradient: the check must reject them."""
    ts = tasks()
    second = make(MAML, inner_lr=0.3, inner_steps=2)
    first = make(FOMAML, inner_lr=0.3, inner_steps=2)
    grads, _ = meta_grad(first, ts)
    assert directional_fd_check(lambda: float(second.meta_loss(ts)[0].detach()),
                                second.meta_params(), grads) > 1e-3


def test_reptile_batched_equals_loop():
    ts = tasks()
    a = make(Reptile, inner_lr=0.1, inner_steps=4, batched=False)
    b = make(Reptile, inner_lr=0.1, inner_steps=4, batched=True)
    ga, sa = meta_grad(a, ts)
    gb, sb = meta_grad(b, ts)
    assert b.use_batched(ts) and rel_err(gb, ga) < 1e-10
    assert abs(sa["loss"] - sb["loss"]) < 1e-10


@pytest.mark.parametrize("batched", [False, True])
def test_mae_regression_meta_gradient_matches_finite_differences(batched):
    # the forecaster meta-trains with an absolute-error loss: its meta-gradient is checked too
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(DT)
    learner = MAML(net, loss="mae", inner_lr=0.2, inner_steps=2, batched=batched).to(DEV, DT)
    g = torch.Generator().manual_seed(2)
    ts = [Task(*(torch.randn(s, generator=g, dtype=DT).to(DEV) for s in ((6, 4), (6, 3), (5, 4), (5, 3))))
          for _ in range(3)]
    params = learner.meta_params()
    grads, stats = meta_grad(learner, ts)
    loss, _ = learner.meta_loss(ts)
    # the reported loss is the mean absolute error, not a squared one
    assert abs(stats["loss"] - float(loss.detach())) < 1e-10
    q = learner.eval().adapt(ts[0].support_x, ts[0].support_y)(ts[0].query_x).detach()
    learner.train()
    assert float(learner.loss_fn(q, ts[0].query_y)) == pytest.approx(
        float((q - ts[0].query_y).abs().mean()))
    assert directional_fd_check(lambda: float(learner.meta_loss(ts)[0].detach()), params,
                                grads) < 1e-5
    if batched:
        assert learner.use_batched(ts), "the batched path must actually run"
