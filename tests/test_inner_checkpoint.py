"""Gradient checkpointing through the inner loop (``checkpoint=True``): the same meta-gradient
in float64 as the stored inner loop, for every learner that offers it, with less of the inner
loop held for the backward pass."""
import pytest
import torch
from torch import nn

from metaphi.learners import ANIL, MAML, MAMLpp, MetaSGD
from metaphi.tasks import Task

from helpers import meta_grad
from test_meta_gradients import DEV, DT, rel_err, small_net, tasks


def pair(cls, **kw):
    extra = {} if cls is MAMLpp else {"batched": False}
    plain = cls(small_net(), inner_lr=0.3, inner_steps=3, **extra, **kw).to(DEV, DT)
    ckpt = cls(small_net(), inner_lr=0.3, inner_steps=3, checkpoint=True, **kw).to(DEV, DT)
    if cls is MetaSGD:
        with torch.no_grad():
            for p in plain.lrs.values():
                p.uniform_(0.1, 0.5)
    ckpt.load_state_dict(plain.state_dict())
    return plain, ckpt


@pytest.mark.parametrize("cls", [MAML, MetaSGD, ANIL, MAMLpp])
def test_checkpointed_inner_loop_gives_the_same_meta_gradient(cls):
    plain, ckpt = pair(cls)
    ts = tasks(2)
    g_plain, s_plain = meta_grad(plain, ts)
    g_ckpt, s_ckpt = meta_grad(ckpt, ts)
    assert rel_err(g_ckpt, g_plain) < 1e-12
    assert s_ckpt["loss"] == pytest.approx(s_plain["loss"], rel=1e-12)


def saved_bytes(learner, task):
    """Bytes of distinct tensors that the autograd graph of one task's meta-loss holds for the
    backward pass (every node's saved tensors, found by walking the graph from the loss)."""
    loss, _ = learner.meta_loss([task])
    storages, seen, stack = {}, set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(f for f, _ in node.next_functions)
        values = []
        for attr in dir(node):
            if attr.startswith("_saved_") or attr == "saved_tensors":
                try:
                    values.append(getattr(node, attr))
                except RuntimeError:  # freed or not a tensor
                    continue
        for v in values:
            for t in (v if isinstance(v, (tuple, list)) else [v]):
                if isinstance(t, torch.Tensor):
                    storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())


def test_checkpointing_saves_less_of_the_inner_loop():
    # a support set large enough that activations, not parameters, dominate, as in Conv-4
    torch.manual_seed(0)
    net = lambda: nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32),  # noqa: E731
                                nn.Tanh(), nn.Linear(32, 3))
    x = torch.randn(400, 8)
    task = Task(x[:200], torch.randint(0, 3, (200,)), x[200:], torch.randint(0, 3, (200,)))
    plain = MAML(net(), inner_lr=0.1, inner_steps=8, batched=False)
    ckpt = MAML(net(), inner_lr=0.1, inner_steps=8, checkpoint=True)
    assert saved_bytes(ckpt, task) < 0.25 * saved_bytes(plain, task)


def test_checkpoint_is_a_config_option_of_the_maml_family():
    from metaphi.runs import validate_config
    from metaphi.runs.build import build_learner

    for name in ("maml", "metasgd", "anil", "mamlpp"):
        cfg = validate_config({"task": {"source": "sinusoid"},
                               "learner": {"name": name, "checkpoint": True}})
        assert build_learner(cfg).checkpoint
    with pytest.raises(ValueError, match="per-task loop"):
        MAML(small_net(), batched=True, checkpoint=True)
