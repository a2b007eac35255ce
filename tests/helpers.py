"""Small helpers shared by the tests."""
from __future__ import annotations

import os
from pathlib import Path

import torch

WORKSPACE_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(name: str) -> Path:
    """Where the real dataset ``name`` lies: under ``$METAPHI_DATA`` (the library's own data
    option) if it is there, else in the workspace's ``shared/data`` beside the repository
    (which may not exist: the caller decides whether that fails or skips)."""
    root = os.environ.get("METAPHI_DATA")
    if root and (Path(root) / name).is_dir():
        return Path(root) / name
    return WORKSPACE_DATA / name


def meta_grad(learner, tasks, normalize_by=None):
    """The meta-gradient as the outer step sees it: ``meta_backward`` filling ``.grad``
    (returned as a name -> tensor dict, with the step's stats)."""
    learner.zero_grad(set_to_none=True)
    stats = learner.meta_backward(tasks, normalize_by=normalize_by)
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in learner.meta_params().items()}, stats
