"""The learner interface: f_φ maps a support set to an adapted model.

A learner is an ``nn.Module`` whose parameters are the meta-parameters φ (``meta_params()``).
Its functional core takes φ explicitly as a dict, so the same code serves meta-training
(gradients to φ), evaluation and distributed or population meta-optimizers. The outer step is
PyTorch-shaped::

    opt.zero_grad()
    stats = learner.meta_backward(tasks)    # fills .grad of φ, one task's graph at a time
    opt.step()

and adapting is a call that returns a callable model::

    learner.eval()
    model = learner.adapt(support_x, support_y)
    logits = model(query_x)

``train()`` / ``eval()`` decide how :meth:`Learner.adapt` runs, as they decide dropout for a
module: in training mode adaptation is differentiable (the inner loop stays in the autograd
graph) and runs ``inner_steps``; in evaluation mode it runs ``eval_inner_steps`` with φ fixed,
and metric learners use their running BatchNorm statistics where they keep them.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import torch
from torch import Tensor, nn

from ..tasks.task import Task
from . import parallel
from .functional import LossSpec, Params, loss_and_metric

# a learner's network is its ``model`` attribute, so φ names the network's tensors with this
MODEL_PREFIX = "model."

R = TypeVar("R")


@dataclass(eq=False)
class Adapted:
    """A model adapted to one task's support set: what f_φ returns. Call it on inputs.

    ``params`` holds the adapted weights (the fast weights of the MAML family, φ for metric
    learners); subclasses add what their learner's prediction needs (prototypes, a fitted head).
    """

    learner: "Learner"
    params: Params

    def __call__(self, x: Tensor) -> Tensor:
        """Outputs (logits or regression values) of the adapted model on ``x``."""
        return self.learner.predict(self, x)


@contextmanager
def in_mode(module: nn.Module, training: bool) -> Iterator[nn.Module]:
    """``module.train(training)`` inside the block, its previous mode restored after."""
    was = module.training
    module.train(training)
    try:
        yield module
    finally:
        module.train(was)


def eval_mode(module: nn.Module):
    """Evaluation mode inside a ``with`` block (see :func:`in_mode`)."""
    return in_mode(module, False)


def train_mode(module: nn.Module):
    """Training mode inside a ``with`` block (see :func:`in_mode`)."""
    return in_mode(module, True)


class Learner(nn.Module):
    """Base class. Subclasses implement :meth:`adapt` and :meth:`predict`.

    Args:
        loss: ``"ce"`` (classification), ``"mse"`` or ``"mae"`` (regression), or a callable
            ``loss(outputs, targets) -> scalar`` (its value is then also the reported metric).
    """

    def __init__(self, loss: LossSpec = "ce") -> None:
        super().__init__()
        # Threads running a meta-batch's tasks side by side in the per-task loop (see
        # metaphi.learners.parallel); None: one per intra-op thread on CPU, 1 on a GPU.
        self.task_threads: int | None = None
        self.loss_kind = loss if isinstance(loss, str) else "custom"
        self.loss_fn, self.metric_fn, self.metric_name, self.higher_is_better = loss_and_metric(loss)

    # φ ---------------------------------------------------------------------------------------
    def meta_params(self) -> Params:
        """φ as a name -> tensor dict (the learner's trainable parameters)."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def model_params(self, params: Params) -> Params:
        """The network's part of φ (the learner's ``model``), named as in the network."""
        return {n[len(MODEL_PREFIX):]: p for n, p in params.items() if n.startswith(MODEL_PREFIX)}

    def graph(self, create_graph: bool | None) -> bool:
        """Whether adaptation stays in the autograd graph: as asked, or by default in training
        mode with gradients enabled."""
        if create_graph is None:
            return self.training and torch.is_grad_enabled()
        return bool(create_graph)

    # f_φ -------------------------------------------------------------------------------------
    def adapt(self, support_x: Tensor, support_y: Tensor, params: Params | None = None, *,
              create_graph: bool | None = None, steps: int | None = None) -> Adapted:
        """Learn from a support set; return the adapted model (an :class:`Adapted`).

        ``params``: φ to adapt from (default: the learner's own); ``create_graph``: keep the
        adaptation differentiable in φ (default: in training mode); ``steps``: inner steps
        (default: ``inner_steps`` in training mode, ``eval_inner_steps`` in evaluation mode;
        ignored by learners without an inner loop)."""
        raise NotImplementedError

    def predict(self, adapted: Adapted, x: Tensor) -> Tensor:
        """Outputs of ``adapted`` on ``x`` (what ``adapted(x)`` calls)."""
        raise NotImplementedError

    # episodes --------------------------------------------------------------------------------
    def episode(self, task: Task, params: Params | None = None,
                create_graph: bool | None = None) -> tuple[Tensor, Tensor]:
        """Inner-task training on the support set, inner-task testing on the query set.

        Returns ``(query loss, query metric)``; the loss carries the graph to φ when
        adaptation is differentiable (see :meth:`adapt`).
        """
        out = self.adapt(task.support_x, task.support_y, params, create_graph=create_graph)(
            task.query_x)
        return self.loss_fn(out, task.query_y), self.metric_fn(out, task.query_y).detach()

    def eval_episodes(self, tasks: list[Task]) -> tuple[Tensor, Tensor]:
        """Per-task query losses and metrics ``(T,)`` with φ fixed (cross-task testing), for
        tasks already on the learner's device, in evaluation mode. Here one task at a time;
        learners with a task-batched path run equally shaped tasks together where that path
        is the faster one."""
        with eval_mode(self):
            pairs = [self.episode(t, create_graph=False) for t in tasks]
        return (torch.stack([loss.detach() for loss, _ in pairs]),
                torch.stack([metric for _, metric in pairs]))

    def objective(self, task: Task, params: Params | None = None) -> tuple[Tensor, Tensor]:
        """What meta-training minimises on one task, differentiable in φ, and its metric: the
        query loss after adapting to the support set (:meth:`episode`). Learners trained
        otherwise (Baseline's supervised pre-training) override it."""
        return self.episode(task, params, create_graph=True)

    def meta_loss(self, tasks: list[Task], params: Params | None = None) -> tuple[Tensor, Tensor]:
        """The meta-objective as one differentiable value: the mean :meth:`objective` (the
        query loss) over ``tasks`` (and the mean metric), holding every task's graph at once;
        :meth:`meta_backward` is the memory-lean way to its gradient."""
        with train_mode(self):
            pairs = [self.objective(t, params) for t in tasks]
        return (torch.stack([loss for loss, _ in pairs]).mean(),
                torch.stack([metric for _, metric in pairs]).mean())

    # the meta-gradient -----------------------------------------------------------------------
    def meta_backward(self, tasks: list[Task], normalize_by: float | None = None
                      ) -> dict[str, float]:
        """Accumulate the meta-gradient of the mean query loss over ``tasks`` into φ's
        ``.grad``, as ``loss.backward()`` would, one task's graph at a time.

        ``normalize_by`` divides the sum of the task losses instead of ``len(tasks)`` (the
        global meta-batch size in a distributed run). Returns ``{"loss", "metric"}``, the
        tasks' mean query loss and metric."""
        params = self.meta_params()
        grads, stats = self.meta_grads(tasks, params, normalize_by)
        # backward through the leaves: accumulates into .grad exactly as loss.backward() does
        names = [n for n in params if grads[n] is not None]
        torch.autograd.backward([params[n] for n in names], [grads[n] for n in names])
        return stats

    def meta_grads(self, tasks: list[Task], params: Params | None = None,
                   normalize_by: float | None = None) -> tuple[Params, dict[str, float]]:
        """The functional form of :meth:`meta_backward`: ``(d meta-loss / d params, stats)``
        with the gradients returned as a dict instead of accumulated.

        Each task's graph is freed before the next one is built; tasks may run side by side
        on :attr:`task_threads` threads, and the per-task gradients are summed in task order,
        so the result does not depend on thread timing."""
        params = self.meta_params() if params is None else params
        n = float(normalize_by) if normalize_by is not None else max(len(tasks), 1)

        def one(learner: "Learner", task: Task) -> tuple[Params, float, float]:
            loss, metric = learner.objective(task, params)
            return self.grads_of(loss / n, params), float(loss.detach()), float(metric)

        return self.sum_task_grads(one, tasks, params)

    def sum_task_grads(self, one: Callable[["Learner", Task], tuple[Params, float, float]],
                       tasks: list[Task], params: Params,
                       prefix: str = "") -> tuple[Params, dict[str, float]]:
        """``(Σ gradients, mean stats)`` of ``one(learner, task) -> (gradients, loss, metric)``
        over ``tasks``, in train mode: each task's gradients (names prefixed with ``prefix``)
        are added as its task finishes, the sum comes in the order of ``params`` (zeros where
        no task gave a gradient)."""
        total: Params = {}
        stats: list[tuple[float, float]] = []

        def add(result: tuple[Params, float, float]) -> None:
            grads, loss, metric = result
            _accumulate(total, grads, params, prefix)
            stats.append((loss, metric))

        with train_mode(self):
            self.fold_tasks(one, tasks, list(params.values()), add)
        return ({k: total[k] if k in total else torch.zeros_like(p) for k, p in params.items()},
                mean_stats(stats))

    def fold_tasks(self, fn: Callable[["Learner", Task], R], tasks: list[Task],
                   tensors: list[Tensor], add: Callable[[R], None]) -> None:
        """``add(fn(learner, task))`` for every task in task order, on :attr:`task_threads`
        threads (:func:`metaphi.learners.parallel.fold_tasks`: on one thread, each result is
        added before the next task runs)."""
        threads = parallel.resolve_threads(self.task_threads, tensors)
        parallel.fold_tasks(self, fn, tasks, threads, add)

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
        learners whose evaluation needs statistics of φ on meta-train tasks (running BatchNorm
        statistics) compute them here, as a function of (φ, seed). Default: nothing."""


def _accumulate(total: Params, grads: Params, params: Params, prefix: str = "") -> None:
    """``total[prefix + k] += grads[k]``, a missing total starting at zero. The totals are
    allocated when the first task's gradient arrives, not held through its backward pass."""
    for k, g in grads.items():
        if prefix + k not in total:
            total[prefix + k] = torch.zeros_like(params[prefix + k])
        total[prefix + k] += g


def mean_stats(pairs: list[tuple[float, float]]) -> dict[str, float]:
    """``{"loss", "metric"}``: the means of per-task (loss, metric) pairs."""
    n = max(len(pairs), 1)
    return {"loss": sum(p[0] for p in pairs) / n, "metric": sum(p[1] for p in pairs) / n}
