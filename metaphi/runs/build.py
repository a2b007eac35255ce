"""From a validated :class:`RunConfig` to the objects of a run: model, learner, task sources."""
from __future__ import annotations

import os

import torch
from torch import nn

from ..learners.base import Learner
from ..models import conv4, conv4_features, mlp
from ..tasks.sinusoid import SinusoidFamily
from ..tasks.sources import TaskSource, task_rng
from .config import EMBEDDING_LEARNERS, RunConfig

GRADIENT_LEARNERS = ("maml", "fomaml", "metasgd", "anil", "reptile")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is visible to PyTorch; use --device cpu")
    return dev


def build_model(cfg: RunConfig) -> nn.Module:
    m = cfg.model
    if m.name == "mlp":
        return mlp(1, tuple(m.hidden), 1)
    if cfg.learner.name in EMBEDDING_LEARNERS:
        return conv4_features(m.in_channels, m.width, m.depth)
    return conv4(cfg.task.n_way, m.in_channels, m.width, m.image_size, m.depth)


def build_learner(cfg: RunConfig) -> Learner:
    """The learner with φ initialised from the run's seed."""
    torch.manual_seed(int(task_rng(cfg.seed, "init", 0).integers(2**62)))
    model = build_model(cfg)
    lc, loss = cfg.learner, cfg.loss_kind
    from .. import learners as L

    if lc.name in GRADIENT_LEARNERS:
        cls = {"maml": L.MAML, "fomaml": L.FOMAML, "metasgd": L.MetaSGD, "anil": L.ANIL,
               "reptile": L.Reptile}[lc.name]
        kw = dict(loss=loss, inner_lr=lc.inner_lr, inner_steps=lc.inner_steps,
                  eval_inner_steps=lc.eval_inner_steps)
        return cls(model, **kw)
    cls = {"protonet": "ProtoNet", "matchingnet": "MatchingNet", "r2d2": "R2D2"}[lc.name]
    return getattr(L, cls)(model, **lc.options())


def data_dir(cfg: RunConfig) -> str | None:
    return cfg.task.data_dir or os.environ.get("METAPHI_DATA")


def build_sources(cfg: RunConfig) -> tuple[TaskSource, TaskSource | None, TaskSource]:
    """(meta-train, meta-val, meta-test) task sources; they never share classes. Meta-val is
    None when the validation classes are meta-trained on (``task.meta_train_classes=trainval``)."""
    t = cfg.task
    eval_q = t.eval_q_queries or t.q_queries
    if t.source == "sinusoid":
        # A parametric family has no classes to share: the three streams differ by seed.
        return (SinusoidFamily(t.k_shot, t.q_queries), SinusoidFamily(t.k_shot, eval_q),
                SinusoidFamily(t.k_shot, eval_q))
    if t.source == "omniglot":
        from ..data.omniglot import omniglot_sources

        return tuple(omniglot_sources(data_dir(cfg), n_way=t.n_way, k_shot=t.k_shot,
                                      q_queries=t.q_queries, eval_q_queries=eval_q,
                                      train_n_way=t.train_n_way,
                                      meta_train=t.meta_train_classes, resample=t.resample))
    if t.source == "folder":
        from ..tasks.fewshot import ImageFolderData, fewshot_splits

        if not t.data_dir:
            raise ValueError("task.data_dir: a 'folder' task source needs the folder of class "
                             "sub-folders (task.data_dir=PATH)")
        size = cfg.model.image_size
        data = ImageFolderData(t.data_dir, size=(size, size), grayscale=cfg.model.in_channels == 1)
        return fewshot_splits(data, t.n_way, t.k_shot, t.q_queries, seed=t.split_seed,
                              eval_q_queries=eval_q, train_n_way=t.train_n_way)
    raise ValueError(f"task.source: unknown source {t.source!r}")
