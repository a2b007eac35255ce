"""Fine-tuning baselines, Relation Networks, MetaOptNet-SVM, the learned optimiser, ResNet-12
and the timm backbone: float64 meta-gradients against finite differences of the meta-objective,
the QP solver against its optimality conditions, and each learner through config and CLI."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch import nn

from metaphi.cli import main
from metaphi.learners import (MAML, Baseline, BaselinePP, LearnedOptimizer, Learner,
                              MetaOptNetSVM, RelationNet)
from metaphi.learners.svm import cs_svm_dual, project_simplex, solve_cs_dual
from metaphi.models import mlp
from metaphi.registry import BACKBONES
from metaphi.runs import validate_config
from metaphi.runs.build import build_learner, build_model
from metaphi.tasks import FewShotSource, TensorData, sample_tasks
from metaphi.tasks.sinusoid import SinusoidSource

from helpers import meta_grad
from test_meta_gradients import directional_fd_check

DT = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_conv() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(),
                         nn.AvgPool2d(2), nn.Flatten()).to(DT)


def fewshot_tasks(n=3, n_way=3, k=2, q=2, side=6):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12 * 6, 1, side, side, generator=g, dtype=DT)
    y = torch.arange(12).repeat_interleave(6)
    src = FewShotSource(TensorData(x, y), range(12), n_way, k, q)
    return sample_tasks(src, 0, "train", 0, n)


def check_meta_gradient(learner, ts, tol=1e-5):
    grads, _ = meta_grad(learner, ts)
    params = learner.meta_params()

    def meta_loss():
        return float(learner.meta_loss(ts)[0].detach())

    assert directional_fd_check(meta_loss, params, grads) < tol


# -- Baseline / Baseline++ ------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [Baseline, BaselinePP])
def test_baseline_pretraining_gradient_matches_finite_differences(cls):
    learner = cls(small_conv(), finetune_epochs=1)
    ts = fewshot_tasks()
    check_meta_gradient(learner, ts)
    # the global head covers the source's 12 classes; meta_grads' metric is its accuracy
    assert learner.global_head.weight.shape == (12, 27)  # 3 x 3 x 3 features


@pytest.mark.parametrize("cls", [Baseline, BaselinePP])
def test_baseline_head_fitting_is_differentiable(cls):
    """The query loss after fine-tuning a head by SGD, as a function of the backbone."""
    learner = cls(small_conv(), finetune_epochs=2, finetune_batch=4, finetune_lr=0.5)
    ts = fewshot_tasks(n=2)
    learner.build_global_head(ts[0])
    params = {n: p for n, p in learner.meta_params().items() if n.startswith("model.")}

    def loss():
        return torch.stack([learner.episode(t, create_graph=True)[0] for t in ts]).mean()

    grads = dict(zip(params, torch.autograd.grad(loss(), list(params.values()))))
    assert directional_fd_check(lambda: float(loss().detach()), params, grads) < 1e-5


def test_baseline_fine_tuning_learns_the_support_set_and_is_batched_like_the_loop():
    learner = Baseline(small_conv(), finetune_epochs=20, finetune_lr=0.5).eval()
    ts = fewshot_tasks(n=3)
    t = ts[0]
    out = learner.adapt(t.support_x, t.support_y)(t.support_x)
    assert (out.argmax(-1) == t.support_y).all()
    loop = Learner.eval_episodes(learner, ts)  # one task at a time
    for embed_together in (False, True):  # heads fitted together, embeddings either way
        learner.batched = embed_together
        together = learner.eval_episodes(ts)
        assert torch.allclose(loop[0], together[0])
        assert torch.allclose(loop[1].double(), together[1])


def test_baseline_needs_global_labels():
    t = fewshot_tasks(n=1)[0]
    t.meta.pop("class_index")
    with pytest.raises(ValueError, match="class_index"):
        Baseline(small_conv()).meta_backward([t])


# -- Relation Networks ------------------------------------------------------------------------
@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("objective,maps", [("mse", True), ("ce", False)])
def test_relation_network_meta_gradient_matches_finite_differences(batched, objective, maps):
    torch.manual_seed(0)
    # feature maps (2 x 3 x 3) or vectors (read as 1 x 1 maps)
    embedding = (nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Tanh(),
                               nn.AvgPool2d(2), nn.Flatten()) if maps else
                 nn.Sequential(nn.Flatten(), nn.Linear(36, 4), nn.Tanh()))
    learner = RelationNet(embedding.to(DT), hidden=3, fc=4, objective=objective,
                          batched=batched).to(DT)
    check_meta_gradient(learner, fewshot_tasks())


# -- MetaOptNet-SVM ------------------------------------------------------------------------
def test_svm_dual_solution_is_optimal_and_feasible():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 8, 5, generator=g, dtype=DT) * 2
    y = F.one_hot(torch.arange(8) % 4, 4).to(DT).expand(2, 8, 4)
    k = z @ z.transpose(1, 2)
    alpha, _ = solve_cs_dual(k, y, 0.1, 1.0, 5000, 1e-13)
    assert torch.allclose(alpha.sum(-1), torch.zeros(2, 8, dtype=DT), atol=1e-12)
    assert (alpha <= 0.1 * y + 1e-12).all()
    # optimality: α is a fixed point of the projected gradient step
    grad = k @ alpha + alpha - y
    beta = project_simplex(0.1 * y - alpha + 0.01 * grad, 0.1)
    assert torch.allclose(0.1 * y - beta, alpha, atol=1e-10)


def test_svm_dual_implicit_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(1)
    z = (torch.randn(1, 4, 3, generator=g, dtype=DT) * 2).requires_grad_()
    y = F.one_hot(torch.arange(4) % 3, 3).to(DT).expand(1, 4, 3)
    assert torch.autograd.gradcheck(
        lambda z: cs_svm_dual(z @ z.transpose(1, 2), y, 0.1, 1.0, 5000, 1e-13), (z,),
        eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("batched", [False, True])
def test_metaoptnet_meta_gradient_matches_finite_differences(batched):
    learner = MetaOptNetSVM(small_conv(), tol=1e-13, max_iter=5000, batched=batched).to(DT)
    check_meta_gradient(learner, fewshot_tasks())


# -- the learned optimiser ------------------------------------------------------------------------
def sine_tasks(n=3):
    return [t.to("cpu", DT) for t in sample_tasks(SinusoidSource(5, 5), 0, "train", 0, n)]


def learned_opt(hidden=(6, 6), **kw):
    torch.manual_seed(0)
    learner = LearnedOptimizer(mlp(1, hidden, 1).to(DT), loss="mse", inner_lr=0.05,
                               inner_steps=2, hidden=4, **kw).to(DT)
    with torch.no_grad():  # a rule that already departs from SGD
        learner.update.out.weight.normal_(0, 0.3)
    return learner


@pytest.mark.parametrize("batched", [False, True])
def test_learned_optimizer_meta_gradient_matches_finite_differences(batched):
    learner = learned_opt(batched=batched)
    ts = sine_tasks()
    check_meta_gradient(learner, ts)
    assert learner.use_batched(ts) == batched


def test_learned_optimizer_starts_as_sgd_and_transfers_to_a_wider_network():
    ts = sine_tasks(1)
    torch.manual_seed(0)
    fresh = LearnedOptimizer(mlp(1, (6, 6), 1).to(DT), loss="mse", inner_lr=0.05,
                             inner_steps=2).to(DT)
    torch.manual_seed(0)
    maml = MAML(mlp(1, (6, 6), 1).to(DT), loss="mse", inner_lr=0.05, inner_steps=2).to(DT)
    a = fresh.eval().adapt(ts[0].support_x, ts[0].support_y)
    b = maml.eval().adapt(ts[0].support_x, ts[0].support_y)
    assert all(torch.allclose(a.params[n], b.params[n], atol=1e-12) for n in b.params)
    # the rule (φ without the initialisation) runs a wider network unchanged
    rule = learned_opt(learn_init=False)
    wide = learned_opt(hidden=(12, 12), learn_init=False)
    assert set(rule.meta_params()) == {"log_lr"} | {f"update.{n}" for n, _ in
                                                    rule.update.named_parameters()}
    wide.load_state_dict({k: v for k, v in rule.state_dict().items()
                          if not k.startswith("model.")}, strict=False)
    before = F.mse_loss(wide.model(ts[0].support_x), ts[0].support_y)
    after = F.mse_loss(wide.eval().adapt(ts[0].support_x, ts[0].support_y, steps=20)(
        ts[0].support_x), ts[0].support_y)
    assert after < before


# -- backbones ------------------------------------------------------------------------
def test_resnet12_and_the_optional_timm_backbone(monkeypatch):
    cfg = validate_config({"task": {"source": "omniglot", "n_way": 5},
                           "model": {"name": "resnet12", "widths": [2, 3, 4, 5]},
                           "learner": {"name": "maml"}})
    net = build_model(cfg)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 5)
    proto = validate_config({**cfg.model_dump(), "learner": {"name": "protonet"}})
    assert build_model(proto)(torch.zeros(2, 1, 28, 28)).shape == (2, 5)  # 5 x 1 x 1 maps
    timm_cfg = {"task": {"source": "omniglot"}, "model": {"name": "timm", "model_name": "x"},
                "learner": {"name": "protonet"}}
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match="pip install timm"):
        build_model(validate_config(timm_cfg))
    fake = types.SimpleNamespace(
        create_model=lambda name, pretrained, num_classes, in_chans:
        types.SimpleNamespace(name=name, in_chans=in_chans))
    monkeypatch.setitem(sys.modules, "timm", fake)
    assert build_model(validate_config(timm_cfg)).in_chans == 1
    assert "timm" in BACKBONES.names()


# -- through config and CLI -----------------------------------------------------------------------
NEW = {"baseline": {"finetune_epochs": 2}, "baselinepp": {"finetune_epochs": 2},
       "relationnet": {"hidden": 4}, "metaoptnet": {}, "learned_opt": {"inner_lr": 0.1}}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("classes")
    rng = np.random.default_rng(0)
    for c in range(15):
        (root / f"c{c}").mkdir()
        base = rng.integers(0, 255, (16, 16))
        for i in range(4):
            img = np.clip(base + rng.integers(-30, 30, (16, 16)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"c{c}" / f"{i}.png")
    return root


@pytest.mark.parametrize("name", list(NEW))
def test_every_new_learner_trains_and_tests_from_a_config_file(name, image_folder, tmp_path):
    cfg = {"task": {"source": "folder", "data_dir": str(image_folder), "n_way": 3, "k_shot": 1,
                    "n_query": 2, "image_size": 16},
           "model": {"name": "conv4", "width": 4},
           "learner": {"name": name, **NEW[name]},
           "steps": 2, "meta_batch": 2, "val_every": 2, "val_tasks": 2, "test_tasks": 3}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert main(["train", str(path), "--out", str(out), "--no-progress"]) == 0
    assert main(["test", str(out), "--tasks", "2", "--no-progress"]) == 0
    assert type(build_learner(validate_config(cfg))).__name__ in (
        "Baseline", "BaselinePP", "RelationNet", "MetaOptNetSVM", "LearnedOptimizer")
