"""metaphi: meta-learning on PyTorch.

Tasks (support + query sets) come from task sources; a learner f_φ adapts to a support set;
cross-task training updates the meta-parameters φ (``meta_params``) on the mean query loss::

    from metaphi import MAML, SinusoidSource, mlp, sample_tasks

The names below are imported on first use, so that ``import metaphi.forecasting`` (or a
worker process of it) does not load PyTorch.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "metaphi.learners": ("ANIL", "FOMAML", "IMAML", "MAML", "MAMLpp", "R2D2", "Adapted",
                         "Learner", "MatchingNet", "MetaSGD", "ProtoNet", "Reptile", "Baseline",
                         "BaselinePP", "RelationNet", "MetaOptNetSVM", "LearnedOptimizer"),
    "metaphi.loops.evaluate": ("evaluate",),
    "metaphi.models": ("conv4", "conv4_features", "mlp"),
    "metaphi.registry": ("register_backbone", "register_learner", "register_meta_optimizer",
                         "register_source"),
    "metaphi.tasks": ("FewShotSource", "SinusoidSource", "Task", "fewshot_splits", "fixed_tasks",
                      "sample_tasks"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [*_WHERE, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'metaphi' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
