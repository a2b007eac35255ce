"""iMAML: implicit MAML (Rajeswaran, Finn, Kakade and Levine, "Meta-Learning with Implicit
Gradients", NeurIPS 2019).

The inner problem is proximal: adapting to a task solves

    θ*(φ) = argmin_θ  L_support(θ) + λ/2 |θ - φ|²

approximately, by ``inner_steps`` steps of an inner optimizer (SGD or Adam) started at φ. At
its solution ∇L_support(θ*) + λ (θ* - φ) = 0, so dθ*/dφ = (I + H/λ)^{-1} with H the Hessian of
the support loss at θ*, and a task's meta-gradient is

    g = (I + H/λ)^{-1} ∇_θ L_query(θ*),

which conjugate gradient finds from Hessian-vector products (``cg_steps`` iterations; each a
double backward through one support-loss gradient at θ*). Neither depends on the path the
inner optimizer took, so the inner loop keeps no autograd graph and the memory of a
meta-gradient does not grow with ``inner_steps``. The meta-gradient is exact when the inner
problem is solved and conjugate gradient has converged; ``cg_damping`` adds ``cg_damping * I``
to I + H/λ (a Hessian of a non-convex loss can make it indefinite for small λ).
"""
from __future__ import annotations

from typing import Callable, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from ..registry import Options, register_learner
from ..tasks.task import Task
from .base import MODEL_PREFIX, Adapted, Learner, train_mode
from .functional import LossSpec, Params, forward, transductive_batchnorm


Vec = list[Tensor]


def _dot(a: Vec, b: Vec) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))  # type: ignore[return-value]


def conjugate_gradient(matvec: Callable[[Vec], Vec], b: Vec, steps: int,
                       tol: float = 1e-12) -> Vec:
    """Solve ``A x = b`` for a symmetric positive definite ``A`` given as ``matvec``, by at most
    ``steps`` conjugate-gradient iterations from x = 0 (fewer once the residual norm is below
    ``tol`` times that of ``b``). Vectors are lists of tensors (one per parameter)."""
    x = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    p = [t.clone() for t in b]
    rs = _dot(r, r)
    stop = float(rs) * tol * tol
    for _ in range(steps):
        if float(rs) <= stop or float(rs) == 0.0:
            break
        ap = matvec(p)
        alpha = rs / _dot(p, ap)
        x = [xi + alpha * pi for xi, pi in zip(x, p)]
        r = [ri - alpha * ai for ri, ai in zip(r, ap)]
        rs_new = _dot(r, r)
        p = [ri + (rs_new / rs) * pi for ri, pi in zip(r, p)]
        rs = rs_new
    return x


class IMAMLOptions(Options):
    name: str = "imaml"
    inner_lr: float = Field(0.1, gt=0, description="step size of the inner optimizer")
    inner_steps: int = Field(16, ge=1, description="inner optimizer steps at meta-training")
    eval_inner_steps: int | None = Field(
        None, ge=1, description="inner steps in evaluation mode (default: inner_steps)")
    lam: float = Field(2.0, gt=0, description="strength λ of the proximal term λ/2 |θ-φ|²")
    cg_steps: int = Field(5, ge=1, description="conjugate-gradient iterations per task")
    cg_damping: float = Field(0.0, ge=0, description="added to the diagonal of I + H/λ")
    inner_optimizer: Literal["sgd", "adam"] = Field("sgd", description="the inner optimizer")


@register_learner("imaml", options=IMAMLOptions)
class IMAML(Learner):
    """iMAML (module docstring).

    Args:
        model: the network whose initialisation (and proximal centre) is φ.
        loss: ``"ce"``, ``"mse"``, ``"mae"`` or a callable (see :class:`Learner`).
        inner_lr: step size of the inner optimizer.
        inner_steps: inner optimizer steps at meta-training.
        eval_inner_steps: inner steps in evaluation mode (default ``inner_steps``).
        lam: λ, the strength of the proximal term.
        cg_steps: conjugate-gradient iterations for each task's implicit meta-gradient.
        cg_damping: added to the diagonal of the system's matrix I + H/λ.
        inner_optimizer: ``"sgd"`` or ``"adam"`` (a fresh one per task).

    Adaptation is never differentiated by unrolling: :meth:`adapt` returns θ* detached, and
    :meth:`meta_grads` computes the implicit meta-gradient.
    """

    def __init__(self, model: nn.Module, loss: LossSpec = "ce", inner_lr: float = 0.1,
                 inner_steps: int = 16, eval_inner_steps: int | None = None, lam: float = 2.0,
                 cg_steps: int = 5, cg_damping: float = 0.0,
                 inner_optimizer: str = "sgd") -> None:
        super().__init__(loss)
        if not inner_lr > 0 or not lam > 0 or cg_damping < 0:
            raise ValueError("inner_lr and lam must be > 0 and cg_damping >= 0")
        if inner_steps < 1 or cg_steps < 1 or (eval_inner_steps is not None
                                               and eval_inner_steps < 1):
            raise ValueError("inner_steps, eval_inner_steps and cg_steps must be >= 1")
        if inner_optimizer not in ("sgd", "adam"):
            raise ValueError(f"inner_optimizer must be 'sgd' or 'adam', got {inner_optimizer!r}")
        self.model = transductive_batchnorm(model)
        self.inner_lr = float(inner_lr)
        self.inner_steps = int(inner_steps)
        self.eval_inner_steps = int(eval_inner_steps or inner_steps)
        self.lam = float(lam)
        self.cg_steps = int(cg_steps)
        self.cg_damping = float(cg_damping)
        self.inner_optimizer = inner_optimizer

    def solve(self, params: Params, x: Tensor, y: Tensor, steps: int) -> Params:
        """θ*: ``steps`` inner optimizer steps on the proximal support objective from φ
        (``params``), detached from φ."""
        phi = {n: p.detach() for n, p in self.model_params(params).items()}
        theta = {n: p.clone().requires_grad_(True) for n, p in phi.items()}
        leaves = list(theta.values())
        adam = (torch.optim.Adam(leaves, lr=self.inner_lr) if self.inner_optimizer == "adam"
                else None)
        with torch.enable_grad():
            for _ in range(steps):
                loss = self.loss_fn(forward(self.model, theta, x), y)
                prox = sum(((theta[n] - phi[n]) ** 2).sum() for n in theta)
                grads = torch.autograd.grad(loss + 0.5 * self.lam * prox, leaves)
                if adam is None:
                    with torch.no_grad():
                        torch._foreach_add_(leaves, grads, alpha=-self.inner_lr)
                else:
                    for t, g in zip(leaves, grads):
                        t.grad = g
                    adam.step()
        return {n: t.detach() for n, t in theta.items()}

    def adapt(self, support_x: Tensor, support_y: Tensor, params: Params | None = None, *,
              create_graph: bool | None = None, steps: int | None = None) -> Adapted:
        steps = (self.inner_steps if self.training else self.eval_inner_steps) \
            if steps is None else int(steps)
        params = self.meta_params() if params is None else params
        return Adapted(self, self.solve(params, support_x, support_y, steps))

    def predict(self, adapted: Adapted, x: Tensor) -> Tensor:
        return forward(self.model, adapted.params, x)

    def implicit_grad(self, theta: Params, task: Task) -> tuple[Params, Tensor, Tensor]:
        """A task's implicit meta-gradient at the inner solution ``theta`` (model parameter
        names), with its query loss and metric."""
        names = list(theta)
        leaves = [theta[n].detach().requires_grad_(True) for n in names]
        th = dict(zip(names, leaves))
        with torch.enable_grad():
            out = forward(self.model, th, task.query_x)
            q_loss = self.loss_fn(out, task.query_y)
            g_query = torch.autograd.grad(q_loss, leaves, allow_unused=True,
                                          materialize_grads=True)
            s_loss = self.loss_fn(forward(self.model, th, task.support_x), task.support_y)
            g_support = torch.autograd.grad(s_loss, leaves, create_graph=True,
                                            allow_unused=True, materialize_grads=True)

            def matvec(v: Vec) -> Vec:
                hv = torch.autograd.grad(g_support, leaves, grad_outputs=v, retain_graph=True,
                                         allow_unused=True, materialize_grads=True)
                return [(1.0 + self.cg_damping) * vi + hi.detach() / self.lam
                        for vi, hi in zip(v, hv)]

            g = conjugate_gradient(matvec, [t.detach() for t in g_query], self.cg_steps)
        return (dict(zip(names, g)), q_loss.detach(),
                self.metric_fn(out.detach(), task.query_y).detach())

    def meta_grads(self, tasks: list[Task], params: Params | None = None,
                   normalize_by: float | None = None) -> tuple[Params, dict[str, float]]:
        """The implicit meta-gradient of the mean query loss (module docstring), one task at a
        time (on :attr:`task_threads` threads), summed in task order."""
        params = self.meta_params() if params is None else params
        n = float(normalize_by) if normalize_by is not None else max(len(tasks), 1)

        def one(learner: "IMAML", task: Task) -> tuple[Params, float, float]:
            theta = learner.solve(params, task.support_x, task.support_y, learner.inner_steps)
            g, loss, metric = learner.implicit_grad(theta, task)
            return {k: v / n for k, v in g.items()}, float(loss), float(metric)

        return self.sum_task_grads(one, tasks, params, MODEL_PREFIX)

    def meta_loss(self, tasks: list[Task], params: Params | None = None) -> tuple[Tensor, Tensor]:
        """The meta-objective's value: the mean query loss at θ* (and the mean metric). It
        carries no graph to φ; :meth:`meta_grads` gives its implicit gradient."""
        with train_mode(self):
            pairs = [self.episode(t, params, create_graph=False) for t in tasks]
        return (torch.stack([loss.detach() for loss, _ in pairs]).mean(),
                torch.stack([metric for _, metric in pairs]).mean())
