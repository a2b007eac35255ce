"""Cross-task testing: the task-batched evaluation scores every task exactly as the per-task
loop does (same adaptation, same eval inner steps, BatchNorm per task), in task order."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from metaphi.learners import ANIL, FOMAML, MAML, MatchingNet, MetaSGD, ProtoNet, R2D2, Reptile
from metaphi.loops.evaluate import evaluate, task_scores
from metaphi.models import Classifier
from metaphi.tasks import FewShotSource, TensorData, sample_tasks

DT = torch.float64


def conv_bn(n_out: int | None = 3) -> nn.Module:
    torch.manual_seed(0)
    feats = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(27, 5), nn.BatchNorm1d(5),
                          nn.Tanh())
    return (Classifier(feats, nn.Linear(5, n_out)) if n_out else feats).to(DT)


def few_shot_tasks(n: int = 10, n_way: int = 3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12 * 6, 1, 6, 6, generator=g, dtype=DT)
    y = torch.arange(12).repeat_interleave(6)
    return sample_tasks(FewShotSource(TensorData(x, y), range(12), n_way, 2, 3), 0, "test", 0, n)


def close(a, b):
    """Scores agree to float64 round-off; accuracies of the per-task loop are float32, hence
    rtol 1e-6 (a different number of inner steps moves the losses by ~1e-2)."""
    torch.testing.assert_close(torch.tensor(a, dtype=DT), torch.tensor(b, dtype=DT), rtol=1e-6,
                               atol=1e-9)


LEARNERS = {
    "maml": lambda b: MAML(conv_bn(), inner_lr=0.3, inner_steps=1, eval_inner_steps=3,
                           batched=b),
    "fomaml": lambda b: FOMAML(conv_bn(), inner_lr=0.3, eval_inner_steps=2, batched=b),
    "metasgd": lambda b: MetaSGD(conv_bn(), inner_lr=0.3, eval_inner_steps=2, batched=b),
    "anil": lambda b: ANIL(conv_bn(), inner_lr=0.3, eval_inner_steps=2, batched=b),
    "reptile": lambda b: Reptile(conv_bn(), inner_lr=0.1, eval_inner_steps=3, batched=b),
    "protonet": lambda b: ProtoNet(conv_bn(None), batched=b),
    "matchingnet": lambda b: MatchingNet(conv_bn(None), learn_scale=True, batched=b),
    "r2d2": lambda b: R2D2(conv_bn(None), lam=0.5, scale=2.0, batched=b),
}


@pytest.mark.parametrize("name", list(LEARNERS))
def test_batched_evaluation_equals_the_per_task_loop(name):
    ts = few_shot_tasks()
    loop, batched = LEARNERS[name](False).to(dtype=DT), LEARNERS[name](True).to(dtype=DT)
    batched.load_state_dict(loop.state_dict())
    if name == "metasgd":  # distinct per-entry rates, so that they matter
        with torch.no_grad():
            for p in loop.lrs.values():
                p.uniform_(0.1, 0.5)
        batched.load_state_dict(loop.state_dict())
    a = task_scores(loop, ts, chunk=4)
    b = task_scores(batched, ts, chunk=4)  # chunks of 4, 4 and 2 tasks
    assert len(a) == len(b) == 10
    close(b, a)
    # adapting with more steps than training's changes the scores: eval_inner_steps is used
    if name in ("maml", "reptile"):
        one_step = LEARNERS[name](True).to(dtype=DT)
        one_step.load_state_dict(loop.state_dict())
        one_step.eval_inner_steps = 1
        assert task_scores(one_step, ts)[0][1] != pytest.approx(b[0][1])
    # the summary is the same either way, and the chunk size does not change a score
    assert evaluate(batched, ts)["mean"] == pytest.approx(evaluate(loop, ts)["mean"], rel=1e-6)
    close(task_scores(batched, ts, chunk=32), b)


def test_tasks_of_unequal_shapes_fall_back_to_the_loop():
    learner = LEARNERS["maml"](True).to(dtype=DT)
    three, two = few_shot_tasks(3, n_way=3), few_shot_tasks(2, n_way=2)
    mixed = task_scores(learner, three + two)
    close(mixed, task_scores(learner, three) + task_scores(learner, two))
