"""Task-parallel meta-batches (metaphi.learners.parallel): running a meta-batch's tasks on
several threads gives exactly the per-task loop's meta-gradient, and never shares a module
between threads."""
import threading

import pytest
import torch
from torch import nn

from metaphi.learners import ANIL, MAML, MatchingNet, MetaSGD, ProtoNet, R2D2, Reptile
from metaphi.learners import parallel
from metaphi.models import conv4, conv4_features
from metaphi.tasks import FewShotSource, TensorData, sample_tasks

from helpers import meta_grad


def tasks(n=6, n_way=5, k=1, q=3):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20 * 8, 1, 28, 28, generator=g)
    y = torch.arange(20).repeat_interleave(8)
    return sample_tasks(FewShotSource(TensorData(x, y), range(20), n_way, k, q), 0, "train", 0, n)


def make(kind):
    torch.manual_seed(0)
    if kind in ("maml", "metasgd", "anil", "reptile"):
        cls = {"maml": MAML, "metasgd": MetaSGD, "anil": ANIL, "reptile": Reptile}[kind]
        return cls(conv4(5, hidden=8), inner_lr=0.1, inner_steps=2, batched=False)
    cls = {"protonet": ProtoNet, "matchingnet": MatchingNet, "r2d2": R2D2}[kind]
    return cls(conv4_features(hidden=8), batched=False)


@pytest.mark.parametrize("kind", ["maml", "metasgd", "anil", "reptile", "protonet",
                                  "matchingnet", "r2d2"])
def test_threads_give_the_loops_meta_gradient(kind):
    ts = tasks()
    learner = make(kind)
    learner.task_threads = 1
    g1, m1 = meta_grad(learner, ts)
    learner.task_threads = 3
    g3, m3 = meta_grad(learner, ts)
    assert m1 == m3
    for k in g1:
        # each task runs on one intra-op thread either way and the sum is in task order
        assert torch.equal(g1[k], g3[k]), k
    assert any(g.abs().sum() > 0 for g in g1.values())
    assert torch.get_num_threads() == 1  # the caller's thread count is restored


def test_replicas_share_tensors_not_modules():
    learner = make("anil")
    r = parallel.replica(learner)
    assert r is not learner and r.model is not learner.model
    for (n, p), (_, q) in zip(learner.named_parameters(), r.named_parameters()):
        assert p is q, n
    # ANIL's backbone/head views still point into the replica's own model
    assert r.head is r.model.head and r.head is not learner.head


def test_map_tasks_runs_on_several_threads_and_keeps_order():
    seen = set()

    def fn(module, i):
        seen.add(threading.get_ident())
        assert torch.get_num_threads() == 1
        return i * i

    out = parallel.map_tasks(nn.Linear(2, 2), fn, list(range(10)), threads=2)
    assert out == [i * i for i in range(10)]
    assert len(seen) == 2


def test_fold_tasks_adds_in_task_order_and_on_one_thread_before_the_next_task():
    # on one thread a task's result (a meta-gradient) is folded in before the next task runs,
    # so the meta-batch does not hold every task's gradient at once
    events = []

    def fn(module, i):
        events.append(("run", i))
        return i

    parallel.fold_tasks(nn.Linear(2, 2), fn, list(range(4)), 1, lambda r: events.append(("add", r)))
    assert events == [(kind, i) for i in range(4) for kind in ("run", "add")]
    added = []
    parallel.fold_tasks(nn.Linear(2, 2), lambda m, i: i * i, list(range(10)), 2, added.append)
    assert added == [i * i for i in range(10)]


def test_task_threads_validation():
    with pytest.raises(ValueError, match="task_threads must be >= 1"):
        parallel.resolve_threads(0, [torch.zeros(1)])
    assert parallel.resolve_threads(None, [torch.zeros(1)]) == torch.get_num_threads()


def test_gradient_accumulators_exist_before_the_task_threads_start(monkeypatch):
    # The threads must only look up the trainable leaves' accumulators, never create them
    # (creating one takes the tensor's autograd lock, then the GIL: threads can stall).
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    net[0].bias.requires_grad_(False)
    seen, made = [], []
    real = parallel.shared_accumulators
    monkeypatch.setattr(parallel, "shared_accumulators", lambda m: made.append(real(m)) or made[-1])

    def fn(module, task):
        seen.append([p.view_as(p).grad_fn.next_functions[0][0]
                     for p in module.parameters() if p.requires_grad])
        return task

    assert parallel.map_tasks(net, fn, list(range(6)), threads=2) == list(range(6))
    assert len(made) == 1 and [type(a).__name__ for a in made[0]] == ["AccumulateGrad"] * 3
    # every thread, every task: the accumulators created before the threads started
    assert len(seen) == 6 and all(all(a is b for a, b in zip(got, made[0])) for got in seen)
    with torch.no_grad():
        assert real(net) == []
