"""From a validated :class:`RunConfig` to the objects of a run: model, learner, task sources,
meta-optimizer. Everything is looked up in the registries (:mod:`metaphi.registry`)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..learners.base import Learner
from ..registry import BACKBONES, LEARNERS, META_OPTIMIZERS
from ..tasks.combinators import build_splits
from ..tasks.sources import Splits, task_rng
from .config import RunConfig


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is visible to PyTorch; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: PyTorch sees {torch.cuda.device_count()} GPU(s), "
                         f"numbered from 0; use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: this PyTorch has no Apple GPU (MPS) support; use "
                         "--device cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name}: metaphi runs on cpu or cuda; use one of those")
    return dev


def build_model(cfg: RunConfig) -> nn.Module:
    """The backbone, with an output layer of the tasks' size for learners that adapt one."""
    entry = BACKBONES.get(cfg.model.name)
    head = LEARNERS.get(cfg.learner.name).info["model"] == "head"
    return entry.obj(cfg.model, cfg.info, cfg.info.outputs if head else None)


def build_learner(cfg: RunConfig) -> Learner:
    """The learner with φ initialised from the run's seed (the caller's torch RNG is left as
    it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(task_rng(cfg.seed, "init", 0).integers(2**62)))
        model = build_model(cfg)
        entry = LEARNERS.get(cfg.learner.name)
        return entry.obj(model, loss=cfg.loss_kind, **cfg.learner.kwargs())


def build_sources(cfg: RunConfig) -> Splits:
    """Meta-train, meta-val and meta-test task sources (they never share classes); meta-val is
    None where the source has none (e.g. Omniglot meta-trained on train+val classes). The
    task section's ``sampler`` and ``augment`` apply (:func:`metaphi.tasks.combinators.build_splits`)."""
    return build_splits(cfg.task)


def build_meta_optimizer(cfg: RunConfig, learner: Learner) -> tuple[Any, Any]:
    """A gradient meta-optimizer over φ and its learning-rate schedule."""
    entry = META_OPTIMIZERS.get(cfg.meta_optimizer.name)
    if entry.info["kind"] != "gradient":
        raise ValueError(f"meta_optimizer.name: {cfg.meta_optimizer.name!r} is a population "
                         "meta-optimizer, not a gradient one")
    return entry.obj(cfg.meta_optimizer, learner.parameters(), cfg.steps)
