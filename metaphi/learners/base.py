"""The learner interface: f_φ maps a support set to an adapted model.

A learner is an ``nn.Module`` whose parameters are the meta-parameters φ (``meta_params()``).
Its functional core takes φ explicitly as a dict, so the same code serves meta-training
(gradients to φ), evaluation and distributed or population meta-optimizers.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

import torch
from torch import Tensor, nn

from ..tasks.task import Task
from . import parallel
from .functional import Params, loss_and_metric

Adapted = Any
R = TypeVar("R")


class Learner(nn.Module):
    """Base class. Subclasses implement :meth:`adapt` and :meth:`predict`.

    Three lines adapt a meta-trained learner to a new task and predict::

        adapted = learner.adapt(support_x, support_y)
        y_hat = learner.predict(adapted, new_x)
    """

    def __init__(self, loss: str = "ce") -> None:
        super().__init__()
        # Threads running a meta-batch's tasks side by side in the per-task loop (see
        # metaphi.learners.parallel); None: one per intra-op thread on CPU, 1 on a GPU.
        self.task_threads: int | None = None
        self.loss_kind = loss
        self.loss_fn, self.metric_fn, self.metric_name, self.higher_is_better = loss_and_metric(loss)

    # φ ---------------------------------------------------------------------------------------
    def meta_params(self) -> Params:
        """φ as a name -> tensor dict (the learner's trainable parameters)."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    # f_φ -------------------------------------------------------------------------------------
    def adapt(self, support_x: Tensor, support_y: Tensor, params: Params | None = None,
              create_graph: bool = False) -> Adapted:
        """Learn from a support set; return what :meth:`predict` needs."""
        raise NotImplementedError

    def predict(self, adapted: Adapted, x: Tensor) -> Tensor:
        """Outputs (logits or regression values) of the adapted model on ``x``."""
        raise NotImplementedError

    # episodes --------------------------------------------------------------------------------
    def episode(self, task: Task, params: Params | None = None,
                create_graph: bool = False) -> tuple[Tensor, Tensor]:
        """Inner-task training on the support set, inner-task testing on the query set.

        Returns ``(query loss, query metric)``; the loss carries the graph to φ when
        ``create_graph`` is set.
        """
        adapted = self.adapt(task.support_x, task.support_y, params, create_graph=create_graph)
        out = self.predict(adapted, task.query_x)
        return self.loss_fn(out, task.query_y), self.metric_fn(out, task.query_y).detach()

    def eval_episodes(self, tasks: list[Task]) -> tuple[Tensor, Tensor]:
        """Per-task query losses and metrics ``(T,)`` with φ fixed (cross-task testing), for
        tasks already on the learner's device. Here one task at a time; learners with a
        task-batched path run equally shaped tasks together where that path is the faster one
        (see :meth:`use_batched`)."""
        pairs = [self.episode(t) for t in tasks]
        return (torch.stack([loss.detach() for loss, _ in pairs]),
                torch.stack([metric for _, metric in pairs]))

    def meta_loss(self, tasks: list[Task], params: Params | None = None) -> tuple[Tensor, Tensor]:
        """The meta-objective: mean query loss over tasks (and the mean metric)."""
        losses, metrics = zip(*(self.episode(t, params, create_graph=True) for t in tasks))
        return torch.stack(losses).mean(), torch.stack(metrics).mean()

    def outer_grads(self, tasks: list[Task], params: Params | None = None,
                    scale: float = 1.0) -> tuple[Params, dict[str, float]]:
        """Meta-gradient of the meta-objective w.r.t. φ, per-task accumulated.

        Each task's graph is freed before the next one is built, so memory stays at one task's
        graph, not the meta-batch's. ``scale`` divides the sum (the *global* meta-batch size in a
        distributed run). Returns ``(grads, {"loss", "metric"})``.
        """
        params = self.meta_params() if params is None else params
        n = max(len(tasks), 1) if scale == 1.0 else scale

        def one(learner: "Learner", task: Task) -> tuple[Params, float, float]:
            loss, metric = learner.episode(task, params, create_graph=True)
            return self.grads_of(loss / n, params), float(loss.detach()), float(metric)

        per_task = self.map_tasks(one, tasks, list(params.values()))
        total = {k: torch.zeros_like(p) for k, p in params.items()}
        for grads, _, _ in per_task:  # task order: the sum does not depend on thread timing
            for k, g in grads.items():
                total[k] += g
        return total, {"loss": sum(r[1] for r in per_task) / len(tasks),
                       "metric": sum(r[2] for r in per_task) / len(tasks)}

    def map_tasks(self, fn: Callable[["Learner", Task], R], tasks: list[Task],
                  tensors: list[Tensor]) -> list[R]:
        """``[fn(learner, task) for task in tasks]``, run on :attr:`task_threads` threads (each
        with its own replica of this learner sharing φ; see :mod:`metaphi.learners.parallel`)."""
        threads = parallel.resolve_threads(self.task_threads, tensors)
        return parallel.map_tasks(self, fn, tasks, threads)

    @staticmethod
    def grads_of(loss: Tensor, params: Params) -> Params:
        """d loss / d φ as a name -> tensor dict (zeros for parameters the loss does not use)."""
        names = list(params)
        grads = torch.autograd.grad(loss, [params[k] for k in names], allow_unused=True)
        return {k: torch.zeros_like(params[k]) if g is None else g for k, g in zip(names, grads)}

    def prepare_eval(self, source: Any, seed: int) -> None:
        """Called before every meta-validation and meta-test with the meta-train task source:
        learners whose evaluation needs statistics of φ on meta-train tasks (BatchNorm
        population statistics) compute them here, as a function of (φ, seed). Default: nothing."""

    def extra_config(self) -> dict[str, Any]:
        return {}
