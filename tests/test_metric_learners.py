"""Metric-based and closed-form learners: exact meta-gradients, batched == per-task, learning.

Gradient checks run in float64 on a small conv net with BatchNorm (smooth activations, so the
finite differences never straddle a kink).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from metaphi.learners import MatchingNet, ProtoNet, R2D2
from metaphi.tasks import fewshot_splits
from metaphi.tasks.sources import fixed_tasks, sample_tasks
from metaphi.tasks.task import Task

from helpers import meta_grad



@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: on a shared, loaded machine intra-op threads only wait for each
    other (measured 50-100x slower per step with 2 threads under load than with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


LEARNERS = {
    "protonet": lambda m: ProtoNet(m),
    "protonet-cosine": lambda m: ProtoNet(m, distance="cosine"),
    "matchingnet": lambda m: MatchingNet(m, learn_scale=True),
    "r2d2": lambda m: R2D2(m, lam=0.5, scale=2.0),
}


def small_conv() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh(),
                         nn.AvgPool2d(2), nn.Flatten())


def small_mlp(bn: bool = True) -> nn.Module:
    mid: list[nn.Module] = [nn.BatchNorm1d(12)] if bn else []
    return nn.Sequential(nn.Linear(6, 12), *mid, nn.Tanh(), nn.Linear(12, 5))


def make_task(gen: torch.Generator, shape: tuple[int, ...], n: int = 3, k: int = 2,
              q: int = 2) -> Task:
    perm_s, perm_q = torch.randperm(n * k, generator=gen), torch.randperm(n * q, generator=gen)
    return Task(torch.randn(n * k, *shape, generator=gen, dtype=torch.float64),
                torch.arange(n).repeat_interleave(k)[perm_s],
                torch.randn(n * q, *shape, generator=gen, dtype=torch.float64),
                torch.arange(n).repeat_interleave(q)[perm_q])


def flat(grads: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([grads[k].flatten() for k in names])


@pytest.mark.parametrize("kind", list(LEARNERS))
def test_meta_gradient_matches_finite_differences(kind: str) -> None:
    torch.manual_seed(0)
    learner = LEARNERS[kind](small_conv()).double()
    gen = torch.Generator().manual_seed(1)
    tasks = [make_task(gen, (1, 8, 8)) for _ in range(3)]
    params = learner.meta_params()
    names = list(params)
    grads, info = meta_grad(learner, tasks)
    g = flat(grads, names)
    assert torch.isfinite(g).all() and g.norm() > 0
    base = torch.cat([params[k].detach().flatten() for k in names])
    sizes = [params[k].numel() for k in names]

    def loss_at(v: torch.Tensor) -> float:
        parts = dict(zip(names, [c.view_as(params[k]) for c, k in zip(v.split(sizes), names)]))
        with torch.no_grad():
            return float(learner.meta_loss(tasks, parts)[0])

    assert loss_at(base) == pytest.approx(info["loss"], rel=1e-12)
    eps = 1e-6
    fd = torch.empty_like(base)
    for i in range(len(base)):
        e = torch.zeros_like(base)
        e[i] = eps
        fd[i] = (loss_at(base + e) - loss_at(base - e)) / (2 * eps)
    rel = float((g - fd).norm() / fd.norm())
    assert rel < 1e-5, f"{kind}: meta-gradient vs finite differences rel. error {rel:.2e}"
    # the learnable scale / ridge penalty really are meta-learned
    for extra in ("scale", "log_lam"):
        if extra in grads:
            assert grads[extra].abs() > 0


@pytest.mark.parametrize("kind", list(LEARNERS))
@pytest.mark.parametrize("net", ["conv-bn", "mlp-bn", "mlp-no-bn"])
def test_batched_path_equals_per_task_loop(kind: str, net: str) -> None:
    torch.manual_seed(0)
    model = {"conv-bn": small_conv, "mlp-bn": small_mlp,
             "mlp-no-bn": lambda: small_mlp(bn=False)}[net]()
    shape = (1, 8, 8) if net == "conv-bn" else (6,)
    learner = LEARNERS[kind](model).double()
    gen = torch.Generator().manual_seed(2)
    tasks = [make_task(gen, shape, n=4, k=2, q=3) for _ in range(5)]
    names = list(learner.meta_params())

    learner.batched = True
    g_b, info_b = meta_grad(learner, tasks, 7.0)
    loss_b, acc_b = learner.meta_loss(tasks)
    learner.batched = False
    g_t, info_t = meta_grad(learner, tasks, 7.0)
    loss_t, acc_t = learner.meta_loss(tasks)

    assert info_b["loss"] == pytest.approx(info_t["loss"], rel=1e-10)
    assert info_b["metric"] == pytest.approx(info_t["metric"], abs=1e-6)
    assert float(loss_b.detach()) == pytest.approx(float(loss_t.detach()), rel=1e-10)
    assert float(acc_b) == pytest.approx(float(acc_t), abs=1e-6)
    gb, gt = flat(g_b, names), flat(g_t, names)
    assert float((gb - gt).norm() / gt.norm()) < 1e-10
    # the three-line API gives the same logits as the episode path
    t = tasks[0]
    learner.eval()
    logits = learner.adapt(t.support_x, t.support_y)(t.query_x)
    assert logits.shape == (len(t.query_x), 4) and not logits.requires_grad
    loss0, _ = learner.episode(t)
    ce = torch.nn.functional.cross_entropy(logits, t.query_y)
    assert float(ce) == pytest.approx(float(loss0), rel=1e-12)


def test_meta_grads_normalisation_and_unequal_tasks_fall_back() -> None:
    torch.manual_seed(0)
    learner = ProtoNet(small_mlp()).double()
    gen = torch.Generator().manual_seed(3)
    tasks = [make_task(gen, (6,), n=3), make_task(gen, (6,), n=3), make_task(gen, (6,), n=4)]
    names = list(learner.meta_params())
    g_mixed, _ = meta_grad(learner, tasks)  # unequal N: the per-task loop
    learner.batched = False
    g_loop, _ = meta_grad(learner, tasks)
    assert torch.allclose(flat(g_mixed, names), flat(g_loop, names), rtol=1e-12, atol=0)
    learner.batched = True
    same = tasks[:2]
    g1, _ = meta_grad(learner, same)
    g4, _ = meta_grad(learner, same, 8.0)  # sum / 8 instead of mean over 2
    assert torch.allclose(flat(g4, names) * 4, flat(g1, names), rtol=1e-12)


def informative_blobs(n_classes: int = 60, per_class: int = 12, seed: int = 0
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Classes differ only in 4 of 24 dims; the other 20 are large class-independent noise, so
    an untrained embedding is near chance and only a learned one separates new classes."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1.5, size=(n_classes, 4))
    x_inf = means.repeat(per_class, 0) + rng.normal(0, 0.3, size=(n_classes * per_class, 4))
    x_noise = rng.normal(0, 3.0, size=(n_classes * per_class, 20))
    x = torch.tensor(np.concatenate([x_noise[:, :10], x_inf, x_noise[:, 10:]], 1),
                     dtype=torch.float32)
    return x, torch.arange(n_classes).repeat_interleave(per_class)


def meta_test_accuracy(learner: ProtoNet, source, n_tasks: int = 100) -> float:
    tasks = list(fixed_tasks(source, seed=0, stream="test", n=n_tasks))
    return float(learner.eval_episodes(tasks)[1].mean())


@pytest.mark.parametrize("kind", ["protonet", "matchingnet", "r2d2"])
def test_learns_on_held_out_classes(kind: str) -> None:
    torch.manual_seed(0)
    train_src, _, test_src = fewshot_splits(informative_blobs(), n_way=5, k_shot=1,
                                            n_query=5, seed=0)
    model = nn.Sequential(nn.Linear(24, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 16))
    learner = LEARNERS[kind](model)
    before = meta_test_accuracy(learner, test_src)
    opt = torch.optim.Adam(learner.parameters(), lr=5e-3)
    for step in range(120):
        opt.zero_grad()
        learner.meta_backward(sample_tasks(train_src, 0, "train", step, 8))
        opt.step()
    after = meta_test_accuracy(learner, test_src)
    assert after > 0.6 and after > before + 0.3, (
        f"{kind}: meta-test accuracy {before:.3f} before, {after:.3f} after training (chance 0.2)")


def test_bad_inputs_give_clear_errors() -> None:
    learner = ProtoNet(small_mlp())
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match=r"class\(es\) \[1\] have no support example"):
        learner.adapt(x, torch.tensor([0, 0, 2, 2]))
    with pytest.raises(ValueError, match="negative label"):
        learner.adapt(x, torch.tensor([0, 1, -1, 1]))
    with pytest.raises(ValueError, match="integer class labels"):
        learner.adapt(x, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="4 inputs but 3 labels"):
        learner.adapt(x, torch.tensor([0, 1, 0]))
    bad_query = Task(x, torch.tensor([0, 1, 0, 1]), torch.randn(2, 6), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"query labels must be in 0\.\.1"):
        meta_grad(learner, [bad_query, bad_query])
    with pytest.raises(ValueError, match=r"query labels must be in 0\.\.1"):
        learner.episode(bad_query)
    with pytest.raises(ValueError, match="loss must be 'ce'"):
        R2D2(small_mlp(), loss="mse")
    with pytest.raises(ValueError, match="distance must be"):
        ProtoNet(small_mlp(), distance="manhattan")
    with pytest.raises(ValueError, match="ridge penalty"):
        R2D2(small_mlp(), lam=0.0)


# BatchNorm running statistics ---------------------------------------------------------------

def _population_pair(kind: str) -> tuple:
    """The same φ in episode and in running-statistics mode (two learners, shared weights)."""
    torch.manual_seed(0)
    model = small_conv().double()
    episode = {"protonet": ProtoNet, "matchingnet": MatchingNet, "r2d2": R2D2}[kind](model)
    population = type(episode)(model, batchnorm="running")
    return episode, population


@pytest.mark.parametrize("kind", ["protonet", "matchingnet", "r2d2"])
def test_running_statistics_are_the_mean_batch_statistics_and_predict_per_input(kind):
    episode, population = _population_pair(kind)
    gen = torch.Generator().manual_seed(1)
    tasks = [make_task(gen, (1, 6, 6)) for _ in range(5)]
    assert population.fit_batchnorm(tasks) == 5
    # reference: the BatchNorm input is the conv output; average its per-episode batch mean and
    # unbiased variance over the episodes by hand
    conv = population.model[0]
    feats = [conv(torch.cat([t.support_x, t.query_x])).detach() for t in tasks]
    ref_mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    ref_var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats]).mean(0)
    buffers = population._running_buffers()
    torch.testing.assert_close(buffers["1.running_mean"], ref_mean)
    torch.testing.assert_close(buffers["1.running_var"], ref_var)
    # evaluation embeds each input on its own, as PyTorch's BatchNorm in eval mode does
    bn = nn.BatchNorm2d(4).double()
    bn.load_state_dict({**population.model[1].state_dict(), "running_mean": ref_mean,
                        "running_var": ref_var, "num_batches_tracked": torch.tensor(5)})
    reference = nn.Sequential(conv, bn.eval(), *list(population.model)[2:])
    x = tasks[0].query_x
    z_all = population.embed(population.meta_params(), x, running=True)
    z_one = population.embed(population.meta_params(), x[:1], running=True)
    torch.testing.assert_close(z_all, reference(x).detach())
    torch.testing.assert_close(z_all[:1], z_one)
    t = tasks[0]
    population.eval(), episode.eval()
    out_pop = population.adapt(t.support_x, t.support_y)(t.query_x)
    out_epi = episode.adapt(t.support_x, t.support_y)(t.query_x)
    assert not torch.allclose(out_pop, out_epi)  # the two modes differ at evaluation
    # the batched evaluation path gives the per-task path's numbers
    losses_b, acc_b = population.eval_episodes(tasks)
    losses_l, acc_l = zip(*(population.episode(t) for t in tasks))
    torch.testing.assert_close(losses_b, torch.stack(losses_l).detach())


@pytest.mark.parametrize("kind", ["protonet", "r2d2"])
def test_running_mode_meta_trains_with_episode_statistics(kind):
    """Only evaluation changes: the meta-gradient is the episode mode's."""
    episode, population = _population_pair(kind)
    gen = torch.Generator().manual_seed(2)
    tasks = [make_task(gen, (1, 6, 6)) for _ in range(3)]
    population.fit_batchnorm(tasks)
    g_e, s_e = meta_grad(episode, tasks)
    g_p, s_p = meta_grad(population, tasks)
    names = list(episode.meta_params())
    torch.testing.assert_close(flat(g_p, names), flat(g_e, names))
    assert s_p["loss"] == pytest.approx(s_e["loss"])


def test_running_mode_errors_are_clear():
    learner = ProtoNet(small_mlp(), batchnorm="running").eval()
    x, y = torch.randn(4, 6), torch.tensor([0, 1, 0, 1])
    with pytest.raises(RuntimeError, match="call learner.fit_batchnorm"):
        learner.adapt(x, y)
    learner.train().adapt(x, y)  # meta-training needs no running statistics
    with pytest.raises(ValueError, match="batchnorm='running'"):
        ProtoNet(small_mlp()).fit_batchnorm([])
    with pytest.raises(ValueError, match="got no tasks"):
        learner.fit_batchnorm([])
    with pytest.raises(ValueError, match="batchnorm must be one of"):
        ProtoNet(small_mlp(), batchnorm="population")
    with pytest.raises(ValueError, match="batchnorm_tasks must be >= 1"):
        ProtoNet(small_mlp(), batchnorm="running", batchnorm_tasks=0)
    # no BatchNorm in the embedding: nothing to estimate, episode mode it is
    assert ProtoNet(small_mlp(bn=False), batchnorm="running").batchnorm == "episode"
