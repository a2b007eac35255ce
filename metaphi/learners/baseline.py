"""Fine-tuning baselines (Chen et al., ICLR 2019, "A Closer Look at Few-shot Classification").

Baseline and Baseline++ are not meta-learned: the backbone is trained as an ordinary classifier
over *all* meta-train classes, and each test task gets a new head fitted on its support set
with the backbone frozen.

How this fits the learner interface. Meta-training hands a learner meta-batches of tasks, so
supervised pre-training is :meth:`Learner.objective` (what :meth:`~Learner.meta_backward`
differentiates) returning the cross-entropy of a *global* classifier over every support and
query example of a meta-train task. The global labels come with the tasks:
:class:`~metaphi.tasks.FewShotSource` puts the classes' indices among its classes into
``task.meta["class_index"]`` and their number into ``task.meta["n_classes"]``. Indices rather
than the class names of ``meta["classes"]`` because an index is a pure function of the task
source: no name -> row table has to be built in the order classes happen to be seen, kept in
checkpoints, or agreed on by the ranks of a distributed run. Episodes of ``n_way`` classes
with ``k_shot + n_query`` examples each are class-balanced mini-batches, so a meta-batch of
them is the supervised training's mini-batch (BatchNorm normalises each episode with its own
statistics, as the episode-mode evaluation does; ``batchnorm="running"`` evaluates with
running statistics, as the reference code does with ``model.eval()``).

The global head's size is not known when the learner is built (the feature dimension depends
on the image size, the class count on the task source), so it is a lazy module, materialised
on the first meta-training step from that step's tasks (PyTorch's ``UninitializedParameter``:
an optimizer built before then works, and loading a checkpoint sizes it). It is used only in
meta-training; adapting to a task never touches it.

Adapting to a task: a new head (linear for Baseline; for Baseline++ a cosine classifier with
per-class learnable norms, the reference code's weight-normalised ``distLinear``) fitted on the
support embeddings by SGD as in the reference code: ``finetune_epochs`` passes over the support
set in shuffled mini-batches of ``finetune_batch``, learning rate 0.01, momentum 0.9, dampening
0.9, weight decay 0.001. The paper calls these passes "iterations". The head's initialisation
and the mini-batch order come from a generator with a fixed seed, so adaptation is a pure
function of (φ, support set). The fitting stays in the autograd graph when the embeddings do
(training mode), so the query loss after fine-tuning is differentiable in the backbone; the
meta-gradient test checks it, though pre-training never uses it.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from ..registry import register_learner
from ..tasks.task import Task
from . import batched
from .base import Learner
from .functional import Params
from .metric import EmbeddingLearner, EmbeddingOptions

# the reference code's SGD dampening (with momentum 0.9)
DAMPENING = 0.9
HEAD = "global_head."


def reference_scale(n_classes: int) -> float:
    """Chen et al.'s cosine-logit scale: 2 for up to 200 classes, else 10 (a wider softmax
    needs larger logits)."""
    return 2.0 if n_classes <= 200 else 10.0


def head_logits(kind: str, weight: Tensor, extra: Tensor, z: Tensor, scale: float | None
                ) -> Tensor:
    """Logits ``(..., B, C)`` of embeddings ``z`` ``(..., B, D)`` under a head with weights
    ``(..., C, D)``: ``z W^T + bias`` (linear; ``extra`` is the bias), or
    ``scale * norm_c * cos(z, W_c)`` (cosine; ``extra`` holds the per-class norms)."""
    if kind == "linear":
        return z @ weight.transpose(-1, -2) + extra.unsqueeze(-2)
    s = reference_scale(weight.shape[-2]) if scale is None else scale
    cos = F.normalize(z, dim=-1) @ F.normalize(weight, dim=-1).transpose(-1, -2)
    return s * extra.unsqueeze(-2) * cos


def init_head(kind: str, shape: tuple[int, ...], d: int, generator: torch.Generator | None,
              dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """nn.Linear's initialisation (uniform in ±1/sqrt(D)) of weights ``(*shape, D)`` and
    biases ``shape``; a cosine head gets the weight norms as its per-class norms, as weight
    normalisation initialises them."""
    bound = 1.0 / math.sqrt(d)
    w = (torch.rand(*shape, d, generator=generator, dtype=dtype) * 2 - 1) * bound
    extra = (w.norm(dim=-1) if kind == "cosine"
             else (torch.rand(*shape, generator=generator, dtype=dtype) * 2 - 1) * bound)
    return w.to(device), extra.to(device)


class GlobalHead(LazyModuleMixin, nn.Module):
    """The classifier over all meta-train classes used for pre-training; its size is set by
    :meth:`initialize_parameters` on the first batch (a lazy module)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.weight = UninitializedParameter()
        self.extra = UninitializedParameter()  # the bias (linear) or per-class norms (cosine)

    def initialize_parameters(self, z: Tensor, n_classes: int) -> None:  # type: ignore[override]
        if self.has_uninitialized_params():
            w, extra = init_head(self.kind, (n_classes,), z.shape[-1], None, z.dtype, z.device)
            self.weight.materialize(w.shape, device=z.device, dtype=z.dtype)
            self.extra.materialize(extra.shape, device=z.device, dtype=z.dtype)
            with torch.no_grad():
                self.weight.copy_(w)
                self.extra.copy_(extra)


def global_labels(task: Task) -> tuple[Tensor, int]:
    """The task's support and query labels as indices among the meta-train classes, and the
    number of those classes (from ``task.meta``, as :class:`~metaphi.tasks.FewShotSource`
    gives them)."""
    if "class_index" not in task.meta or "n_classes" not in task.meta:
        raise ValueError(
            "Baseline pre-trains a classifier over all meta-train classes: its meta-train tasks "
            "need meta['class_index'] (each task class's index among the source's classes) and "
            "meta['n_classes'] (how many there are), as metaphi.tasks.FewShotSource gives them")
    index = torch.as_tensor(task.meta["class_index"], device=task.support_y.device)
    return index[torch.cat([task.support_y, task.query_y]).long()], int(task.meta["n_classes"])


class BaselineOptions(EmbeddingOptions):
    name: str = "baseline"
    scale: float | None = Field(None, gt=0, description="cosine heads (baselinepp): logit "
                                "scale (None: the reference code's, 2 for up to 200 classes, "
                                "else 10)")
    finetune_epochs: int = Field(100, ge=1, description="passes of SGD over the support set "
                                 "when fitting a task's head")
    finetune_batch: int = Field(4, ge=1, description="mini-batch size of that SGD")
    finetune_lr: float = Field(0.01, gt=0, description="its learning rate")
    finetune_momentum: float = Field(0.9, ge=0, lt=1, description="its momentum (dampening 0.9)")
    finetune_weight_decay: float = Field(0.001, ge=0, description="its weight decay")


@register_learner("baseline", options=BaselineOptions, model="embedding",
                  kinds=("classification",))
class Baseline(EmbeddingLearner):
    """Baseline (Chen et al., 2019): supervised pre-training over all meta-train classes, then
    a linear head fitted by SGD on each support set (see the module docstring).

    Args:
        model, loss, batched, batchnorm, batchnorm_tasks: as :class:`~metaphi.learners.ProtoNet`.
        scale: logit scale of cosine heads (Baseline++; None: the reference code's rule).
        finetune_epochs, finetune_batch, finetune_lr, finetune_momentum, finetune_weight_decay:
            the SGD that fits a task's head on its support embeddings.
    """

    head_kind: Literal["linear", "cosine"] = "linear"

    def __init__(self, model: nn.Module | None = None, loss: str = "ce",
                 scale: float | None = None, finetune_epochs: int = 100,
                 finetune_batch: int = 4, finetune_lr: float = 0.01,
                 finetune_momentum: float = 0.9, finetune_weight_decay: float = 0.001,
                 batched: bool | None = None, batchnorm: str = "episode",
                 batchnorm_tasks: int = 50) -> None:
        super().__init__(model, loss, batched, batchnorm, batchnorm_tasks)
        if scale is not None and not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        for name, value in (("finetune_epochs", finetune_epochs),
                            ("finetune_batch", finetune_batch)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not finetune_lr > 0:
            raise ValueError(f"finetune_lr must be > 0, got {finetune_lr}")
        self.scale = None if scale is None else float(scale)
        self.finetune_epochs, self.finetune_batch = int(finetune_epochs), int(finetune_batch)
        self.finetune_lr = float(finetune_lr)
        self.finetune_momentum = float(finetune_momentum)
        self.finetune_weight_decay = float(finetune_weight_decay)
        self.global_head = GlobalHead(self.head_kind)

    # pre-training ---------------------------------------------------------------------------
    def build_global_head(self, task: Task) -> None:
        """Size the global head from a meta-train task (once; a no-op after)."""
        if self.global_head.has_uninitialized_params():
            _, n_classes = global_labels(task)
            with torch.no_grad():
                z = self.embed(self.meta_params(), torch.cat([task.support_x, task.query_x]))
            self.global_head.initialize_parameters(z, n_classes)

    def meta_params(self) -> Params:
        # the global head counts once it is sized (before, adapting must not touch it)
        return {n: p for n, p in super().meta_params().items()
                if not isinstance(p, UninitializedParameter)}

    def meta_backward(self, tasks: list[Task], normalize_by: float | None = None
                      ) -> dict[str, float]:
        if tasks:
            self.build_global_head(tasks[0])
        return super().meta_backward(tasks, normalize_by)

    def objective(self, task: Task, params: Params | None = None) -> tuple[Tensor, Tensor]:
        """Pre-training: cross-entropy of the global classifier on all of the task's examples
        (support and query, one BatchNorm batch) and its accuracy."""
        params = self.meta_params() if params is None else params
        y, n_classes = global_labels(task)
        weight = params.get(HEAD + "weight", self.global_head.weight)
        if n_classes != weight.shape[0] or int(y.max()) >= weight.shape[0]:
            raise ValueError(f"the global head has {weight.shape[0]} classes, but this task "
                             f"comes from a source with {n_classes}: pre-train on one source")
        z = self.embed(params, torch.cat([task.support_x, task.query_x]))
        logits = head_logits(self.head_kind, weight, params.get(HEAD + "extra",
                                                                self.global_head.extra),
                             z, self.scale)
        acc = (logits.argmax(-1) == y).to(logits.dtype).mean()
        return F.cross_entropy(logits, y), acc.detach()

    def meta_grads(self, tasks: list[Task], params: Params | None = None,
                   normalize_by: float | None = None) -> tuple[Params, dict[str, float]]:
        """The gradient of the mean pre-training loss (:meth:`objective`) over ``tasks``; the
        reported metric is the global classifier's accuracy."""
        if tasks:
            self.build_global_head(tasks[0])
        # the per-task loop (EmbeddingLearner's batched path computes episode losses)
        return Learner.meta_grads(self, tasks, params, normalize_by)

    def meta_loss(self, tasks: list[Task], params: Params | None = None) -> tuple[Tensor, Tensor]:
        if tasks:
            self.build_global_head(tasks[0])
        return Learner.meta_loss(self, tasks, params)

    # adapting: a new head per task ---------------------------------------------------------
    def batches_tasks(self, tasks: list[Task]) -> bool:
        # The heads of equally shaped tasks are always fitted together, one SGD run for all
        # (its cost is that of one task's); :meth:`embed_tasks` embeds them together or one
        # by one, as ``batched`` says.
        return True

    def embed_tasks(self, params: Params, xs: Tensor, running: bool = False) -> Tensor:
        if running or (batched.auto(self.model, xs[0]) if self.batched is None
                       else self.batched):
            return super().embed_tasks(params, xs, running)
        return torch.stack([self.embed(params, x) for x in xs])

    def fit_head(self, z_support: Tensor, onehot: Tensor, params: Params) -> tuple[Tensor, Tensor]:
        """The head ``(weights (T, N, D), bias or norms (T, N))`` fitted by SGD on support
        embeddings ``(T, S, D)``; differentiable in them when they carry a graph."""
        t, s, d = z_support.shape
        n = onehot.shape[-1]
        y = onehot.argmax(-1)
        g = torch.Generator().manual_seed(0)
        w, extra = init_head(self.head_kind, (n,), d, g, z_support.dtype, z_support.device)
        head = [w.expand(t, n, d).clone().requires_grad_(),
                extra.expand(t, n).clone().requires_grad_()]
        create = z_support.requires_grad and torch.is_grad_enabled()
        if not create:
            z_support = z_support.detach()
        bufs: list[Tensor] | None = None
        for _ in range(self.finetune_epochs):
            perm = torch.randperm(s, generator=g).to(z_support.device)
            for i in range(0, s, self.finetune_batch):
                idx = perm[i:i + self.finetune_batch]
                with torch.enable_grad():
                    if not create:
                        head = [h.detach().requires_grad_() for h in head]
                    logits = head_logits(self.head_kind, head[0], head[1], z_support[:, idx],
                                         self.scale)
                    # the sum over tasks of each task's mean loss: per-task gradients
                    loss = F.cross_entropy(logits.flatten(0, 1), y[:, idx].flatten(),
                                           reduction="sum") / len(idx)
                    grads = torch.autograd.grad(loss, head, create_graph=create)
                head, bufs = self._sgd(head, list(grads), bufs)
        return head[0], head[1]

    def _sgd(self, head: list[Tensor], grads: list[Tensor], bufs: list[Tensor] | None
             ) -> tuple[list[Tensor], list[Tensor]]:
        """One step of ``torch.optim.SGD(lr, momentum, dampening=0.9, weight_decay)``."""
        grads = [gr + self.finetune_weight_decay * h for gr, h in zip(grads, head)]
        if self.finetune_momentum:
            bufs = (grads if bufs is None else
                    [self.finetune_momentum * b + (1 - DAMPENING) * gr
                     for b, gr in zip(bufs, grads)])
            grads = bufs
        return [h - self.finetune_lr * gr for h, gr in zip(head, grads)], bufs  # type: ignore

    def head_logits(self, head: tuple[Tensor, Tensor], z_query: Tensor, params: Params) -> Tensor:
        return head_logits(self.head_kind, head[0], head[1], z_query, self.scale)


class BaselinePPOptions(BaselineOptions):
    name: str = "baselinepp"


@register_learner("baselinepp", options=BaselinePPOptions, model="embedding",
                  kinds=("classification",))
class BaselinePP(Baseline):
    """Baseline++ (Chen et al., 2019): :class:`Baseline` with cosine-similarity heads (for
    pre-training and for each task), which reduce intra-class variation of the features
    (arguments as :class:`Baseline`)."""

    head_kind = "cosine"
