"""Domain generalisation: one model for a label set shared by all domains, trained on source
domains and applied, as it is, to a target domain that gives no labelled data.

These are learners like the others (registered, chosen by ``learner.name`` in a config), so
runs, meta-validation (model selection), checkpoints and meta-testing work unchanged. A
meta-batch holds tasks that are batches of one source domain each, with the global labels
(:class:`~metaphi.tasks.domains.DomainBatchSource`); a task's support and query halves are
both training data here. A target-domain task has an empty support set, and
:meth:`DGLearner.adapt` ignores the support set anyway: the deployed model is φ itself.

- :class:`ERM`: empirical risk minimisation on the pooled source domains, the baseline that
  DomainBed (Gulrajani and Lopez-Paz, ICLR 2021) found hard to beat.
- :class:`MLDG`: meta-learning domain generalisation (Li et al., AAAI 2018). Each step splits
  the meta-batch's domains into meta-train and meta-test domains and minimises
  ``L_tr(θ) + β L_te(θ - α ∇L_tr(θ))``: a step that helps the meta-train domains must help
  held-out ones too (second order, or ``first_order``).
- :class:`Fish`: gradient matching by a first-order method (Shi et al., ICLR 2022): inner SGD
  steps on the domains one after another from a copy θ̃ of θ, then ``θ ← θ + ε (θ̃ - θ)``. The
  meta-gradient it returns is ``θ - θ̃``, so an ``sgd`` meta-optimizer with ``lr: ε`` is the
  paper's update (Adam on it is a variant).
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from ..registry import Options, register_learner
from ..tasks.task import Task
from .base import Adapted, Learner, train_mode
from .functional import LossSpec, Params, forward, sgd_step



def pooled(task: Task) -> tuple[Tensor, Tensor]:
    """A training task's support and query halves together."""
    if len(task.support_x) == 0:
        return task.query_x, task.query_y
    return torch.cat([task.support_x, task.query_x]), torch.cat([task.support_y, task.query_y])


class DGLearner(Learner):
    """Base of the domain-generalisation learners: φ is the model; adapting is the identity
    (the support set, empty for a target domain, is not used); in training mode an episode's
    loss is over the whole task (support and query), in evaluation mode over the query."""

    def __init__(self, model: nn.Module, loss: LossSpec = "ce") -> None:
        super().__init__(loss)
        self.model = model

    def adapt(self, support_x: Tensor, support_y: Tensor, params: Params | None = None, *,
              create_graph: bool | None = None, steps: int | None = None) -> Adapted:
        params = self.meta_params() if params is None else params
        if not self.graph(create_graph):
            params = {n: p.detach() for n, p in params.items()}
        return Adapted(self, params)

    def predict(self, adapted: Adapted, x: Tensor) -> Tensor:
        return forward(self.model, self.model_params(adapted.params), x)

    def domain_loss(self, task: Task, params: Params) -> tuple[Tensor, Tensor]:
        """(loss, metric) of φ = ``params`` on all of a training task's examples."""
        x, y = pooled(task)
        out = forward(self.model, self.model_params(params), x)
        return self.loss_fn(out, y), self.metric_fn(out, y).detach()

    def episode(self, task: Task, params: Params | None = None,
                create_graph: bool | None = None) -> tuple[Tensor, Tensor]:
        if self.training:
            return self.domain_loss(task, self.meta_params() if params is None else params)
        return super().episode(task, params, create_graph)


class ERMOptions(Options):
    name: str = "erm"


@register_learner("erm", options=ERMOptions, model="head")
class ERM(DGLearner):
    """Empirical risk minimisation: the mean loss over the meta-batch's domain batches, i.e.
    plain training on the pooled source domains (arguments: ``model``, ``loss``)."""


class MLDGOptions(Options):
    name: str = "mldg"
    inner_lr: float = Field(0.01, gt=0, description="α: the virtual step on the meta-train "
                            "domains")
    beta: float = Field(1.0, ge=0, description="β: weight of the meta-test domains' loss")
    meta_test_tasks: int = Field(1, ge=1, description="domains (tasks) of each meta-batch held "
                                 "out as meta-test domains (the rest are meta-train domains)")
    first_order: bool = Field(False, description="treat ∇L_tr as a constant in the meta-test "
                              "term")


@register_learner("mldg", options=MLDGOptions, model="head")
class MLDG(DGLearner):
    """Meta-Learning Domain Generalization (Li et al., AAAI 2018).

    The meta-batch's tasks are domain batches drawn at random, so its last ``meta_test_tasks``
    tasks are a random choice of meta-test domains; the others are the meta-train domains.
    The objective is ``L_tr(θ) + β L_te(θ - α ∇L_tr(θ))`` with each L the mean loss over its
    domains' batches; its gradient is exact (second order) unless ``first_order``.

    Args:
        model: the network (with an output layer over the shared label set).
        loss: as :class:`~metaphi.learners.Learner`.
        inner_lr: α. beta: β. meta_test_tasks: meta-test domains per step.
        first_order: drop the second-order term.
    """

    def __init__(self, model: nn.Module, loss: LossSpec = "ce", inner_lr: float = 0.01,
                 beta: float = 1.0, meta_test_tasks: int = 1, first_order: bool = False) -> None:
        super().__init__(model, loss)
        if not inner_lr > 0:
            raise ValueError(f"inner_lr must be > 0, got {inner_lr}")
        if meta_test_tasks < 1:
            raise ValueError(f"meta_test_tasks must be >= 1, got {meta_test_tasks}")
        self.inner_lr, self.beta = float(inner_lr), float(beta)
        self.meta_test_tasks, self.first_order = int(meta_test_tasks), bool(first_order)

    def objective(self, tasks: list[Task], params: Params) -> tuple[Tensor, Tensor]:
        """(MLDG's objective, mean metric of the meta-train domains) for one meta-batch."""
        if len(tasks) < 2:
            raise ValueError("MLDG needs at least 2 domain batches a step (meta_batch >= 2): "
                             "meta-train and meta-test domains")
        n_te = min(self.meta_test_tasks, len(tasks) - 1)
        tr, te = tasks[:-n_te], tasks[-n_te:]
        pairs = [self.domain_loss(t, params) for t in tr]
        l_tr = torch.stack([p[0] for p in pairs]).mean()
        names = list(params)
        with torch.enable_grad():
            # the graph of L_tr stays: the objective's gradient goes through it again
            grads = torch.autograd.grad(l_tr, [params[n] for n in names], retain_graph=True,
                                        create_graph=not self.first_order, allow_unused=True)
        grads = [torch.zeros_like(params[n]) if g is None else g for n, g in zip(names, grads)]
        if self.first_order:
            grads = [g.detach() for g in grads]
        stepped = sgd_step(params, grads, names, self.inner_lr)
        l_te = torch.stack([self.domain_loss(t, stepped)[0] for t in te]).mean()
        return l_tr + self.beta * l_te, torch.stack([p[1] for p in pairs]).mean()

    def meta_loss(self, tasks: list[Task], params: Params | None = None) -> tuple[Tensor, Tensor]:
        with train_mode(self):
            return self.objective(tasks, self.meta_params() if params is None else params)

    def meta_grads(self, tasks: list[Task], params: Params | None = None,
                   normalize_by: float | None = None) -> tuple[Params, dict[str, float]]:
        """The gradient of :meth:`objective` (scaled by ``len(tasks) / normalize_by``, so that
        the ranks of a distributed run, each with its own domains, sum to the mean)."""
        params = self.meta_params() if params is None else params
        scale = len(tasks) / float(normalize_by) if normalize_by is not None else 1.0
        with train_mode(self):
            total, metric = self.objective(tasks, params)
        return (self.grads_of(total * scale, params),
                {"loss": float(total.detach()), "metric": float(metric)})


class FishOptions(Options):
    name: str = "fish"
    inner_lr: float = Field(0.01, gt=0, description="SGD step size of the inner pass over the "
                            "domains")


@register_learner("fish", options=FishOptions, model="head")
class Fish(DGLearner):
    """Fish (Shi et al., ICLR 2022, Algorithm 1): from θ̃ = θ, one SGD step on each domain
    batch of the meta-batch in turn; the meta-gradient is ``θ - θ̃`` (scaled by
    ``len(tasks) / normalize_by`` in a distributed run), so ``meta_optimizer: {name: sgd, lr:
    ε}`` gives ``θ ← θ + ε (θ̃ - θ)``. To first order its expected update is ERM's plus a
    term that raises the inner product of the domains' gradients (gradient matching).

    Args:
        model, loss: as :class:`ERM`. inner_lr: the inner SGD step size.
    """

    def __init__(self, model: nn.Module, loss: LossSpec = "ce", inner_lr: float = 0.01) -> None:
        super().__init__(model, loss)
        if not inner_lr > 0:
            raise ValueError(f"inner_lr must be > 0, got {inner_lr}")
        self.inner_lr = float(inner_lr)

    def meta_grads(self, tasks: list[Task], params: Params | None = None,
                   normalize_by: float | None = None) -> tuple[Params, dict[str, float]]:
        params = self.meta_params() if params is None else params
        scale = len(tasks) / float(normalize_by) if normalize_by is not None else 1.0
        names = list(params)
        theta = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
        losses, metrics = [], []
        with train_mode(self), torch.enable_grad():
            for task in tasks:
                loss, metric = self.domain_loss(task, theta)
                grads = torch.autograd.grad(loss, [theta[n] for n in names], allow_unused=True)
                theta = {n: (theta[n] - self.inner_lr * g if g is not None else theta[n])
                         .detach().requires_grad_(True) for n, g in zip(names, grads)}
                losses.append(float(loss.detach()))
                metrics.append(float(metric))
        grads_out = {n: (params[n].detach() - theta[n].detach()) * scale for n in names}
        return grads_out, {"loss": sum(losses) / len(losses), "metric": sum(metrics) / len(metrics)}
