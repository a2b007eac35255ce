"""The MAML family: MAML, first-order MAML, Meta-SGD and ANIL.

φ is the initialisation of the model (and, for Meta-SGD, per-parameter inner learning rates).
The inner loop is plain SGD on the support set through :func:`functional.inner_loop`.
BatchNorm runs in MAML's transductive mode: each batch (support or query) is normalised with
its own statistics at meta-train and meta-test time, and no running statistics are kept.
"""
from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from ..registry import Options, register_learner
from ..tasks.task import Task, stack_tasks
from .base import Adapted, Learner, train_mode
from .functional import LossSpec, Params, forward, inner_loop, sgd_step, transductive_batchnorm
from . import batched



class InnerLoopOptions(Options):
    """Options of learners with an SGD inner loop."""

    name: str
    inner_lr: float = Field(0.01, gt=0, description="inner-loop SGD step size")
    inner_steps: int = Field(1, ge=1, description="inner steps at meta-training")
    eval_inner_steps: int | None = Field(
        None, ge=1, description="inner steps in evaluation mode: meta-validation, meta-test, "
        "prediction (default: inner_steps)")
    batched: bool | None = Field(
        None, description="run a meta-batch of equally shaped tasks as one task-batched pass "
        "per layer (None: where it is the faster path)")


class MAMLOptions(InnerLoopOptions):
    name: str = "maml"
    first_order: bool = Field(False, description="treat inner gradients as constants")
    checkpoint: bool = Field(
        False, description="gradient checkpointing through the inner loop: each inner step is "
        "recomputed in the backward pass instead of stored (memory grows by the parameters per "
        "step, not by the activations; the per-task path only)")


def _check_inner(inner_lr: float, inner_steps: int) -> None:
    if not inner_lr > 0:
        raise ValueError(f"inner_lr must be > 0, got {inner_lr}")
    if inner_steps < 1:
        raise ValueError(f"inner_steps must be >= 1, got {inner_steps}")


@register_learner("maml", options=MAMLOptions)
class MAML(Learner):
    """Model-Agnostic Meta-Learning (Finn et al., 2017).

    Args:
        model: the network whose initialisation is φ.
        loss: ``"ce"``, ``"mse"``, ``"mae"`` or a callable (see :class:`Learner`).
        inner_lr: step size of the inner SGD loop.
        inner_steps: inner steps at meta-training (training mode).
        first_order: treat inner gradients as constants (first-order MAML).
        eval_inner_steps: inner steps in evaluation mode (default ``inner_steps``).
        batched: run a meta-batch of equal-shape tasks through one task-batched pass per layer
            (:mod:`metaphi.learners.batched`), equal to the per-task loop's result. ``None``
            picks the faster path (:func:`metaphi.learners.batched.auto`: batched for dense
            networks or on a GPU, the per-task loop for convolutional networks on CPU).
        checkpoint: gradient checkpointing through the inner loop
            (:func:`~metaphi.learners.functional.checkpointed`): the same meta-gradient with
            one inner step's activations held at a time, for about one more forward and
            inner-gradient pass per step; it runs the per-task loop (not with ``batched=True``).
    """

    def __init__(self, model: nn.Module, loss: LossSpec = "ce", inner_lr: float = 0.01,
                 inner_steps: int = 1, first_order: bool = False,
                 eval_inner_steps: int | None = None, batched: bool | None = None,
                 checkpoint: bool = False) -> None:
        super().__init__(loss)
        _check_inner(inner_lr, inner_steps)
        if checkpoint and batched:
            raise ValueError("checkpoint=True runs the per-task loop; it cannot be combined with "
                             "batched=True")
        self.model = transductive_batchnorm(model)
        self.batched = batched
        self.checkpoint = bool(checkpoint)
        self.inner_lr = float(inner_lr)
        self.inner_steps = int(inner_steps)
        self.eval_inner_steps = int(eval_inner_steps or inner_steps)
        self.first_order = bool(first_order)

    # Names of model parameters the inner loop adapts (ANIL narrows this to the head).
    def adapted_names(self) -> list[str]:
        return [n for n, _ in self.model.named_parameters()]

    def inner_lrs(self, params: Params) -> float | Params:
        return self.inner_lr

    def default_steps(self) -> int:
        """Inner steps of the current mode: ``inner_steps`` (train) or ``eval_inner_steps``."""
        return self.inner_steps if self.training else self.eval_inner_steps

    def adapt(self, support_x: Tensor, support_y: Tensor, params: Params | None = None, *,
              create_graph: bool | None = None, steps: int | None = None) -> Adapted:
        create_graph = self.graph(create_graph)
        steps = self.default_steps() if steps is None else int(steps)
        params = self.meta_params() if params is None else params
        return Adapted(self, self.fast_weights(support_x, support_y, params, steps, create_graph))

    def fast_weights(self, support_x: Tensor, support_y: Tensor, params: Params, steps: int,
                     create_graph: bool) -> Params:
        """The model's weights after ``steps`` inner SGD steps on the support set."""
        with torch.enable_grad():
            fast = inner_loop(self.model, self.model_params(params), support_x, support_y,
                              self.loss_fn, self.adapted_names(), steps, self.inner_lrs(params),
                              second_order=create_graph and not self.first_order,
                              checkpoint=self.checkpoint)
        if not create_graph:
            fast = {n: p.detach() for n, p in fast.items()}
        return fast

    def predict(self, adapted: Adapted, x: Tensor) -> Tensor:
        return forward(self.model, adapted.params, x)

    def use_batched(self, tasks: list[Task]) -> bool:
        if (len(tasks) < 2 or self.loss_kind == "custom" or len({t.shapes for t in tasks}) != 1
                or self.checkpoint or not batched.supports(self.model)):
            return False
        if self.batched is None:
            return batched.auto(self.model, tasks[0].support_x)
        return self.batched

    def meta_grads(self, tasks: list[Task], params: Params | None = None,
                   normalize_by: float | None = None) -> tuple[Params, dict[str, float]]:
        if not self.use_batched(tasks):
            return super().meta_grads(tasks, params, normalize_by)
        params = self.meta_params() if params is None else params
        n = float(normalize_by) if normalize_by is not None else len(tasks)
        with train_mode(self):
            losses, metrics = self.batched_episodes(stack_tasks(tasks), params, create_graph=True)
        return (self.grads_of(losses.sum() / n, params),
                {"loss": float(losses.detach().mean()), "metric": float(metrics.mean())})

    def eval_episodes(self, tasks: list[Task]) -> tuple[Tensor, Tensor]:
        if not self.use_batched(tasks):
            return super().eval_episodes(tasks)
        # the evaluation's adaptation: eval_inner_steps, no second-order graph (as in adapt)
        losses, metrics = self.batched_episodes(stack_tasks(tasks), self.meta_params(),
                                                create_graph=False, steps=self.eval_inner_steps)
        return losses.detach(), metrics

    def batched_adapt(self, x: Tensor, y: Tensor, params: Params, steps: int,
                      second_order: bool, task_lr: Tensor | None = None) -> Params:
        """Inner loop for T tasks at once: ``x`` is (T, B, ...). Adapted parameters come back
        with a leading task dimension (see :mod:`metaphi.learners.batched`).

        ``params`` may already carry a leading task dimension (T, ...), for example to score
        many candidate initialisations at once; ``task_lr`` (T,) then gives each task its own
        scalar inner learning rate in place of ``inner_lr``.
        """
        T = x.shape[0]
        names = self.adapted_names()
        shapes = {n: p.shape for n, p in self.model.named_parameters()}

        def per_task(n: str, p: Tensor) -> Tensor:
            return p if p.dim() == len(shapes[n]) + 1 else p.unsqueeze(0).expand(T, *p.shape)

        lrs = self.inner_lrs(params)
        if task_lr is not None:
            lrs = {n: task_lr.reshape(T, *[1] * len(shapes[n])) for n in names}
        elif isinstance(lrs, dict):
            lrs = {n: lr if lr.dim() == len(shapes[n]) + 1 else lr.unsqueeze(0)
                   for n, lr in lrs.items()}
        with torch.enable_grad():
            # Adapted parameters get a per-task copy; the rest stay shared across tasks.
            fast = {n: (per_task(n, p) if n in names else p)
                    for n, p in self.model_params(params).items()}
            for _ in range(steps):
                out = batched.batched_forward(self.model, fast, x)
                loss = batched.per_task_loss(self.loss_kind, out, y).sum()
                grads = torch.autograd.grad(loss, [fast[n] for n in names],
                                            create_graph=second_order)
                if not second_order:
                    grads = [g.detach() for g in grads]
                fast = sgd_step(fast, grads, names, lrs)
        return fast

    def batched_episodes(self, batch: Task, params: Params, create_graph: bool = True,
                         steps: int | None = None,
                         task_lr: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per-task (query loss, metric) of a stacked batch, all tasks in one pass per layer
        (``params`` and ``task_lr`` as in :meth:`batched_adapt`)."""
        steps = self.inner_steps if steps is None else steps
        fast = self.batched_adapt(batch.support_x, batch.support_y, params, steps,
                                  second_order=create_graph and not self.first_order,
                                  task_lr=task_lr)
        with torch.enable_grad():
            out = batched.batched_forward(self.model, fast, batch.query_x)
            losses = batched.per_task_loss(self.loss_kind, out, batch.query_y)
        return losses, batched.per_task_metric(self.loss_kind, out, batch.query_y).detach()


class FOMAMLOptions(InnerLoopOptions):
    name: str = "fomaml"


@register_learner("fomaml", options=FOMAMLOptions)
class FOMAML(MAML):
    """First-order MAML: MAML with the inner gradients treated as constants (arguments as
    :class:`MAML`'s, without ``first_order``)."""

    def __init__(self, model: nn.Module, **kw: Any) -> None:
        if "first_order" in kw:
            raise TypeError("FOMAML is first-order by definition; use MAML(first_order=...) to "
                            "choose")
        super().__init__(model, first_order=True, **kw)


def _lr_key(name: str) -> str:
    return name.replace(".", "__")


class MetaSGDOptions(MAMLOptions):
    name: str = "metasgd"
    inner_lr: float = Field(0.01, gt=0, description="initial value of every per-parameter "
                            "inner learning rate (meta-learned)")


@register_learner("metasgd", options=MetaSGDOptions)
class MetaSGD(MAML):
    """Meta-SGD (Li et al., 2017): φ also holds a learning rate per parameter entry,
    initialised at ``inner_lr`` (other arguments as :class:`MAML`)."""

    def __init__(self, model: nn.Module, loss: LossSpec = "ce", inner_lr: float = 0.01,
                 inner_steps: int = 1, first_order: bool = False,
                 eval_inner_steps: int | None = None, batched: bool | None = None,
                 checkpoint: bool = False) -> None:
        super().__init__(model, loss, inner_lr, inner_steps, first_order, eval_inner_steps,
                         batched, checkpoint)
        self.lrs = nn.ParameterDict({
            _lr_key(n): nn.Parameter(torch.full_like(p, self.inner_lr))
            for n, p in self.model.named_parameters()})

    def inner_lrs(self, params: Params) -> Params:
        return {n: params["lrs." + _lr_key(n)] for n in self.adapted_names()}


def split_model(model: nn.Module) -> tuple[nn.Module, nn.Module, str]:
    """(backbone, head, head prefix) of a model with ``features``/``head`` children or a Sequential."""
    if hasattr(model, "features") and hasattr(model, "head"):
        return model.features, model.head, "head."
    if isinstance(model, nn.Sequential) and len(model) >= 2:
        last = str(len(model) - 1)
        return model[:-1], model[-1], last + "."
    raise ValueError("ANIL needs a model with `features` and `head` sub-modules (e.g. "
                     "metaphi.models.Classifier(features, head)), or an nn.Sequential whose last "
                     "layer is the head")


class ANILOptions(MAMLOptions):
    name: str = "anil"


@register_learner("anil", options=ANILOptions)
class ANIL(MAML):
    """Almost No Inner Loop (Raghu et al., 2020): the inner loop adapts the head only
    (arguments as :class:`MAML`).

    The backbone runs once per batch (support and query), and its output is reused by every
    inner step, which is where ANIL's speed comes from.
    """

    def __init__(self, model: nn.Module, **kw: Any) -> None:
        super().__init__(model, **kw)
        self.backbone, self.head, self.head_prefix = split_model(self.model)
        self._backbone_prefix = "features." if self.head_prefix == "head." else ""

    def adapted_names(self) -> list[str]:
        return [n for n, _ in self.model.named_parameters() if n.startswith(self.head_prefix)]

    def _sub(self, params: Params, prefix: str, exclude: str | None = None) -> Params:
        return {n[len(prefix):]: p for n, p in params.items()
                if n.startswith(prefix) and not (exclude and n.startswith(exclude))}

    def features(self, model_params: Params, x: Tensor) -> Tensor:
        """The backbone's output for ``x`` (with the model's weights ``model_params``)."""
        out = forward(self.backbone, self._sub(model_params, self._backbone_prefix,
                                               self.head_prefix), x)
        if not isinstance(out, Tensor):
            raise TypeError(
                f"ANIL's backbone ({type(self.backbone).__name__}) returned a "
                f"{type(out).__name__}, not a tensor of features; a recurrent layer such as "
                "nn.GRU returns (outputs, hidden): wrap it in a module that returns the "
                "features the head takes (e.g. the last hidden state)")
        return out

    def fast_weights(self, support_x: Tensor, support_y: Tensor, params: Params, steps: int,
                     create_graph: bool) -> Params:
        mp = self.model_params(params)
        with torch.enable_grad():
            feats = self.features(mp, support_x)
            if not create_graph:
                feats = feats.detach()
            head = self._sub(mp, self.head_prefix)
            fast_head = inner_loop(self.head, head, feats, support_y, self.loss_fn, list(head),
                                   steps, self.inner_lr,
                                   second_order=create_graph and not self.first_order,
                                   checkpoint=self.checkpoint)
        fast = {**{n: p for n, p in mp.items() if not n.startswith(self.head_prefix)},
                **{self.head_prefix + n: p for n, p in fast_head.items()}}
        if not create_graph:
            fast = {n: p.detach() for n, p in fast.items()}
        return fast

    def predict(self, adapted: Adapted, x: Tensor) -> Tensor:
        return forward(self.head, self._sub(adapted.params, self.head_prefix),
                       self.features(adapted.params, x))
