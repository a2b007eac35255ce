"""iMAML's implicit meta-gradient in float64: equal to the exact one where the proximal inner
problem has a closed-form solution (a linear model with squared loss), equal to finite
differences of the meta-objective on a nonlinear network once the inner problem is solved;
conjugate gradient on its own; and a run through the CLI."""
import pytest
import torch
from torch import nn

from metaphi.learners import IMAML
from metaphi.learners.imaml import conjugate_gradient
from metaphi.tasks import Task

from test_meta_gradients import DEV, DT, directional_fd_check, rel_err

SMALL = ["steps=2", "val_every=2", "val_tasks=4", "test_tasks=4", "checkpoint_every=2",
         "meta_batch=2"]


def regression_tasks(n, d_in, d_out, n_support=6, n_query=5, seed=1, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: scale * torch.randn(*s, generator=g, dtype=DT).to(DEV)  # noqa: E731
    return [Task(r(n_support, d_in), r(n_support, d_out), r(n_query, d_in), r(n_query, d_out))
            for _ in range(n)]


def test_implicit_gradient_equals_the_exact_one_for_a_linear_model():
    torch.manual_seed(0)
    d, lam = 4, 4.0
    # the support loss's Hessian is small beside λ: 40 SGD steps solve the inner problem
    learner = IMAML(nn.Linear(d, 1), loss="mse", inner_lr=0.2, inner_steps=40, lam=lam,
                    cg_steps=d + 1).to(DEV, DT)
    ts = regression_tasks(3, d, 1, scale=0.5)
    grads, stats = learner.meta_grads(ts)

    # exact: θ*(φ) = (H + λI)^{-1} (2/n Xᵀy + λφ) with H = 2/n XᵀX (features [x, 1]), and
    # the meta-gradient of the mean query loss at θ*(φ) by autograd through that solve
    phi = torch.cat([learner.model.weight.detach().reshape(-1),
                     learner.model.bias.detach()]).clone().requires_grad_(True)
    ones = lambda x: torch.cat([x, torch.ones(len(x), 1, dtype=DT, device=DEV)], 1)  # noqa: E731
    total = 0
    for t in ts:
        X, Xq = ones(t.support_x), ones(t.query_x)
        n = len(X)
        theta = torch.linalg.solve(2 / n * X.T @ X + lam * torch.eye(d + 1, dtype=DT, device=DEV),
                                   2 / n * X.T @ t.support_y[:, 0] + lam * phi)
        fast = learner.adapt(t.support_x, t.support_y).params
        solved = torch.cat([fast["weight"].reshape(-1), fast["bias"]])
        assert torch.allclose(solved, theta.detach(), rtol=0, atol=1e-12)
        total = total + ((Xq @ theta - t.query_y[:, 0]) ** 2).mean()
    exact = torch.autograd.grad(total / len(ts), phi)[0]
    implicit = torch.cat([grads["model.weight"].reshape(-1), grads["model.bias"]])
    assert float((implicit - exact).norm() / exact.norm()) < 1e-10
    assert stats["loss"] == pytest.approx(float(total.detach()) / len(ts), rel=1e-10)


def test_implicit_gradient_matches_finite_differences_of_the_meta_objective():
    """A nonlinear network: the meta-objective is the query loss at the inner optimizer's
    solution; solved to convergence, its finite differences are the implicit gradient."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2))
    learner = IMAML(net, loss="mse", inner_lr=0.2, inner_steps=40, lam=4.0,
                    cg_steps=60).to(DEV, DT)
    ts = regression_tasks(2, 3, 2)
    grads, _ = learner.meta_grads(ts)
    err = directional_fd_check(lambda: float(learner.meta_loss(ts)[0]), learner.meta_params(),
                               grads, n_random=1)
    assert err < 1e-6
    # the curvature term matters here: one CG step from 0 only rescales the query gradient
    learner.cg_steps = 1
    g1, _ = learner.meta_grads(ts)
    assert rel_err(g1, grads) > 1e-3


def test_conjugate_gradient_solves_a_positive_definite_system():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g, dtype=DT)
    a = m @ m.T + 0.5 * torch.eye(6, dtype=DT)
    b = [torch.randn(4, generator=g, dtype=DT), torch.randn(2, generator=g, dtype=DT)]
    x = conjugate_gradient(lambda v: list(torch.split(a @ torch.cat(v), [4, 2])), b, 6)
    assert torch.allclose(a @ torch.cat(x), torch.cat(b), atol=1e-10)


def test_adaptation_keeps_no_graph_and_runs_from_the_cli(tmp_path):
    from metaphi.cli import main
    from metaphi.runs import load_run

    ts = regression_tasks(1, 3, 2)
    learner = IMAML(nn.Linear(3, 2), loss="mse", inner_steps=3, inner_optimizer="adam").to(DT)
    fast = learner.train().adapt(ts[0].support_x, ts[0].support_y).params
    assert not any(p.requires_grad for p in fast.values())
    out = tmp_path / "run"
    assert main(["train", "sinusoid-maml-5shot", "--out", str(out), "--no-progress",
                 "learner.name=imaml", "learner.lam=1.0", "learner.inner_steps=3",
                 *SMALL]) == 0
    cfg, loaded = load_run(out)
    assert isinstance(loaded, IMAML) and cfg.learner.lam == 1.0
