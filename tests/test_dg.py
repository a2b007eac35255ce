"""Domain generalisation learners (ERM, MLDG, Fish): float64 meta-gradients against
independent references, target tasks without a support set, and a DG run from a config."""
import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metaphi.cli import main
from metaphi.learners import ERM, MLDG, Fish
from metaphi.models import Classifier
from metaphi.tasks import Task

from helpers import meta_grad
from test_meta_gradients import directional_fd_check

DT = torch.float64


def net():
    torch.manual_seed(0)
    return Classifier(nn.Sequential(nn.Linear(4, 5), nn.Tanh()), nn.Linear(5, 3)).to(DT)


def domain_tasks(n=4):
    g = torch.Generator().manual_seed(2)
    out = []
    for d in range(n):
        x = torch.randn(10, 4, generator=g, dtype=DT) + d
        y = torch.randint(0, 3, (10,), generator=g)
        out.append(Task(x[:4], y[:4], x[4:], y[4:], {"domain": f"d{d}"}))
    return out


def loss_at(model, params, task):
    x, y = torch.cat([task.support_x, task.query_x]), torch.cat([task.support_y, task.query_y])
    return F.cross_entropy(functional_call(model, params, (x,)), y)


def test_erm_gradient_is_the_pooled_loss_gradient():
    learner = ERM(net()).to(DT)
    tasks = domain_tasks()
    grads, _ = meta_grad(learner, tasks)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in learner.model.named_parameters()}
    ref = torch.autograd.grad(torch.stack([loss_at(learner.model, params, t) for t in tasks]).mean(),
                              list(params.values()))
    for (k, _), r in zip(params.items(), ref):
        torch.testing.assert_close(grads["model." + k], r)


@pytest.mark.parametrize("first_order", [False, True])
def test_mldg_meta_gradient(first_order):
    learner = MLDG(net(), inner_lr=0.3, beta=0.7, meta_test_tasks=2, first_order=first_order).to(DT)
    tasks = domain_tasks()
    grads, _ = meta_grad(learner, tasks)
    model = learner.model

    def objective(params, detach_inner):
        l_tr = torch.stack([loss_at(model, params, t) for t in tasks[:2]]).mean()
        g = torch.autograd.grad(l_tr, list(params.values()), create_graph=not detach_inner,
                                retain_graph=True)
        stepped = {k: p - 0.3 * (gi.detach() if detach_inner else gi)
                   for (k, p), gi in zip(params.items(), g)}
        l_te = torch.stack([loss_at(model, stepped, t) for t in tasks[2:]]).mean()
        return l_tr + 0.7 * l_te

    if not first_order:  # the exact gradient of the objective: finite differences
        err = directional_fd_check(lambda: float(learner.meta_loss(tasks)[0].detach()),
                                   learner.meta_params(), grads)
        assert err < 1e-6
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    ref = torch.autograd.grad(objective(params, first_order), list(params.values()))
    for (k, _), r in zip(params.items(), ref):
        torch.testing.assert_close(grads["model." + k], r)


def test_fish_pseudo_gradient_is_theta_minus_sequential_sgd():
    learner = Fish(net(), inner_lr=0.2).to(DT)
    tasks = domain_tasks()
    grads, _ = meta_grad(learner, tasks)
    theta = {k: v.detach().clone() for k, v in learner.model.named_parameters()}
    start = {k: v.clone() for k, v in theta.items()}
    for t in tasks:  # by hand: one SGD step on each domain batch in turn
        p = {k: v.requires_grad_(True) for k, v in theta.items()}
        g = torch.autograd.grad(loss_at(learner.model, p, t), list(p.values()))
        theta = {k: (v - 0.2 * gi).detach() for (k, v), gi in zip(p.items(), g)}
    for k in theta:
        torch.testing.assert_close(grads["model." + k], start[k] - theta[k])


def test_target_tasks_need_no_support_set():
    learner = MLDG(net()).to(DT).eval()
    x = torch.randn(6, 4, dtype=DT)
    empty = Task(x[:0], torch.zeros(0, dtype=torch.long), x, torch.zeros(6, dtype=torch.long))
    losses, metrics = learner.eval_episodes([empty])
    assert losses.shape == (1,) and 0 <= float(metrics[0]) <= 1


def test_dg_run_on_a_users_csv_with_domains(tmp_path):
    rng = np.random.default_rng(0)
    words = {"pos": "good great fine happy", "neg": "bad awful sad poor", "neu": "okay plain so"}
    path = tmp_path / "reviews.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "domain"])
        for d in ("books", "films", "games", "food", "cars"):
            for label, ws in words.items():
                for _ in range(12):
                    w.writerow([f"{d} " + " ".join(rng.choice(ws.split() + [d, "the"], 5)),
                                label, d])
    for learner in ("mldg", "fish", "erm"):
        out = tmp_path / learner
        assert main(["train", f"sib200dg-{learner}", "--out", str(out), "--no-progress",
                     "task.source=text", f"task.data_dir={path}", "task.split=dg",
                     "task.n_way=3", "task.k_shot=4", "task.n_query=4", "task.eval_n_query=3",
                     "model.buckets=2048", "model.dim=8", "steps=6", "val_every=3",
                     "val_tasks=4", "test_tasks=8", "checkpoint_every=6", "meta_batch=4"]) == 0
        res = json.loads((out / "results.json").read_text())
        assert res["meta_test"]["tasks"] == 8 and 0 <= res["meta_test"]["mean"] <= 1
