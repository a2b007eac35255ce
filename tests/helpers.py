"""Small helpers shared by the tests."""
from __future__ import annotations

import torch


def meta_grad(learner, tasks, normalize_by=None):
    """The meta-gradient as the outer step sees it: ``meta_backward`` filling ``.grad``
    (returned as a name -> tensor dict, with the step's stats)."""
    learner.zero_grad(set_to_none=True)
    stats = learner.meta_backward(tasks, normalize_by=normalize_by)
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in learner.meta_params().items()}, stats
