"""MetaOptNet-SVM (Lee et al., CVPR 2019): a differentiable multi-class SVM head.

φ is the embedding network (names prefixed ``model.``) and a logit scale. Adapting to a task
trains a Crammer-Singer multi-class SVM on the support embeddings, by its dual quadratic
program, as the reference code states it: with the support embeddings' Gram matrix ``K``
(S x S) and one-hot labels ``Y`` (S x N),

    min_α  1/2 Σ_k α_k^T K α_k + ridge/2 ||α||² - Σ_n α_{n, y_n}
    s.t.   α_n <= C Y_n  and  Σ_k α_{n,k} = 0   for every support example n,

``α`` (S x N) gives the class weight vectors ``w_k = Σ_n α_{n,k} z_n`` and a query's logits are
``scale * <w_k, z_query>``. ``ridge`` is the identity the reference code adds to the QP's
Hessian for numerical stability; it also makes the problem strongly convex.

The solver, and why it is not a QP-layer package. Substituting ``β_n = C Y_n - α_n`` turns
each example's constraints into ``β_n`` lying in the simplex scaled by ``C``, so the feasible
set is a product of simplices, onto which projection is exact and cheap (a sort per row). The
forward pass is therefore accelerated projected gradient (FISTA with adaptive restart; step
``1 / (λ_max(K) + ridge)``), batched over the tasks of a meta-batch on any device, with no
matrix factorisation. The backward pass differentiates the solution implicitly instead of
through the iterations: where the set of active constraints is locally constant, α* is the
solution of the equality-constrained QP on the face of the feasible set it lies on, so
``dα* = -(P H P)^+ P (dK) α*`` with ``H = K ⊗ I + ridge I`` and ``P`` the projection onto that
face's directions; the adjoint system ``(P H P) u = P ∂L/∂α`` is solved by conjugate gradients
with Hessian-vector products (``K @ u``, never forming the SN x SN matrix), and
``∂L/∂K = -u α*^T``. Memory does not grow with the number of solver iterations, and the
gradient is the exact gradient of the QP's solution (up to the solver's tolerance), not of a
truncated iteration. qpth (the reference code's) is unmaintained and solves dense KKT systems
of size SN + S per task; cvxpylayers canonicalises through cvxpy and solves on the CPU with
per-problem Python overhead, and would be a heavy dependency for one head.
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from ..registry import register_learner
from .functional import Params
from .metric import EmbeddingLearner, EmbeddingOptions


def project_simplex(v: Tensor, radius: float) -> Tensor:
    """Euclidean projection of each row (last dimension) of ``v`` onto
    ``{b >= 0, sum(b) = radius}`` (the sort-based algorithm of Duchi et al., 2008)."""
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = u.cumsum(-1) - radius
    ind = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=v.dtype)
    rho = (u - css / ind > 0).sum(-1, keepdim=True).clamp(min=1)
    theta = css.gather(-1, rho - 1) / rho.to(v.dtype)
    return (v - theta).clamp(min=0)


def _grad(k: Tensor, alpha: Tensor, y: Tensor, ridge: float) -> Tensor:
    """The dual objective's gradient in α: ``K α + ridge α - Y``."""
    return k @ alpha + ridge * alpha - y


def solve_cs_dual(k: Tensor, y: Tensor, c: float, ridge: float, max_iter: int, tol: float
                  ) -> tuple[Tensor, int]:
    """The Crammer-Singer dual's solution α ``(T, S, N)`` for Gram matrices ``k`` ``(T, S, S)``
    and one-hot labels ``y`` ``(T, S, N)`` (no autograd), and the iterations it took. Stops
    when no β entry moved by more than ``tol * c`` in an iteration."""
    with torch.no_grad():
        lip = torch.linalg.eigvalsh(k)[..., -1].clamp(min=0) + ridge  # (T,)
        step = (1.0 / lip).view(-1, 1, 1)
        beta = c * y  # α = 0: feasible
        z, t = beta, torch.ones_like(step)
        it = 0
        for it in range(1, max_iter + 1):
            # β = cY - α, so the gradient in β is minus the gradient in α
            new = project_simplex(z + step * _grad(k, c * y - z, y, ridge), c)
            t_new = (1 + torch.sqrt(1 + 4 * t * t)) / 2
            moved = new - beta
            # adaptive restart (O'Donoghue & Candes): momentum that points uphill is dropped
            restart = ((z - new) * moved).sum(dim=(1, 2), keepdim=True) > 0
            t_new = torch.where(restart, torch.ones_like(t_new), t_new)
            z = torch.where(restart, new, new + ((t - 1) / t_new) * moved)
            beta, t = new, t_new
            if float(moved.abs().amax()) <= tol * c:
                break
        return c * y - beta, it


def _face_projector(free: Tensor):
    """Projection onto the directions of the face where ``free`` (T, S, N) marks the entries
    not held at a bound: zero elsewhere, and zero sum over each example's free entries."""
    count = free.sum(-1, keepdim=True).clamp(min=1)

    def project(v: Tensor) -> Tensor:
        v = v * free
        return (v - v.sum(-1, keepdim=True) / count) * free
    return project


def _cg(matvec, b: Tensor, iters: int, tol: float) -> Tensor:
    """Conjugate gradients for ``matvec(x) = b``, batched over the leading dimension."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum(dim=(1, 2), keepdim=True)
    b_norm = rs.clamp(min=1e-300)
    for _ in range(iters):
        ap = matvec(p)
        pap = (p * ap).sum(dim=(1, 2), keepdim=True)
        a = torch.where(pap > 0, rs / pap.clamp(min=1e-300), torch.zeros_like(pap))
        x = x + a * p
        r = r - a * ap
        rs_new = (r * r).sum(dim=(1, 2), keepdim=True)
        if bool((rs_new <= tol * tol * b_norm).all()):
            break
        p = r + (rs_new / rs.clamp(min=1e-300)) * p
        rs = rs_new
    return x


class CSDual(torch.autograd.Function):
    """α*(K): the Crammer-Singer dual's solution, differentiable in the Gram matrix K by
    implicit differentiation (see the module docstring)."""

    @staticmethod
    def forward(ctx, k: Tensor, y: Tensor, c: float,  # type: ignore[override]
                ridge: float, max_iter: int, tol: float) -> Tensor:
        alpha, _ = solve_cs_dual(k, y, c, ridge, max_iter, tol)
        ctx.save_for_backward(k, y, alpha)
        ctx.c, ctx.ridge, ctx.tol = c, ridge, tol
        return alpha

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        k, y, alpha = ctx.saved_tensors
        beta = ctx.c * y - alpha
        eps = ctx.c * max(ctx.tol, torch.finfo(alpha.dtype).eps) * 10
        project = _face_projector((beta > eps).to(alpha.dtype))
        s, n = alpha.shape[1:]
        u = _cg(lambda v: project(_grad(k, v, 0.0, ctx.ridge)), project(grad), iters=s * n,
                tol=max(torch.finfo(alpha.dtype).eps * 10, 1e-12))
        return -u @ alpha.transpose(1, 2), None, None, None, None, None


def cs_svm_dual(k: Tensor, y: Tensor, c: float = 0.1, ridge: float = 1.0, max_iter: int = 1000,
                tol: float = 1e-6) -> Tensor:
    """The Crammer-Singer SVM dual's solution α ``(T, S, N)`` for Gram matrices ``(T, S, S)``
    and one-hot labels ``(T, S, N)``; differentiable in ``k``."""
    return CSDual.apply(k, y, float(c), float(ridge), int(max_iter), float(tol))


class MetaOptNetSVMOptions(EmbeddingOptions):
    name: str = "metaoptnet"
    c: float = Field(0.1, gt=0, description="the SVM's slack penalty C")
    ridge: float = Field(1.0, gt=0, description="added to the dual's Hessian (the reference "
                         "code's identity)")
    scale: float = Field(1.0, gt=0, description="initial logit scale")
    learn_scale: bool = Field(True, description="meta-learn the logit scale")
    max_iter: int = Field(1000, ge=1, description="QP solver iterations at most")
    tol: float = Field(1e-6, gt=0, description="QP solver tolerance (largest change of a dual "
                       "variable in one iteration, relative to C)")


@register_learner("metaoptnet", options=MetaOptNetSVMOptions, model="embedding",
                  kinds=("classification",))
class MetaOptNetSVM(EmbeddingLearner):
    """MetaOptNet-SVM (Lee et al., 2019): a Crammer-Singer multi-class SVM fitted on the
    support embeddings as a differentiable QP (see the module docstring).

    Args:
        model, loss, batched, batchnorm, batchnorm_tasks: as :class:`~metaphi.learners.ProtoNet`.
        c: the SVM's slack penalty C (the paper's 0.1).
        ridge: added to the dual's Hessian (the reference code's 1).
        scale: initial logit scale.
        learn_scale: meta-learn the scale.
        max_iter: QP solver iterations at most.
        tol: the solver's tolerance.
    """

    def __init__(self, model: nn.Module | None = None, loss: str = "ce", c: float = 0.1,
                 ridge: float = 1.0, scale: float = 1.0, learn_scale: bool = True,
                 max_iter: int = 1000, tol: float = 1e-6, batched: bool | None = None,
                 batchnorm: str = "episode", batchnorm_tasks: int = 50) -> None:
        super().__init__(model, loss, batched, batchnorm, batchnorm_tasks)
        for name, value in (("c", c), ("ridge", ridge), ("scale", scale), ("tol", tol)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if int(max_iter) < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter}")
        self.c, self.ridge = float(c), float(ridge)
        self.max_iter, self.tol = int(max_iter), float(tol)
        self.learn_scale = bool(learn_scale)
        scale_t = torch.tensor(float(scale))
        if self.learn_scale:
            self.scale = nn.Parameter(scale_t)
        else:
            self.register_buffer("scale", scale_t)

    def fit_head(self, z_support: Tensor, onehot: Tensor, params: Params) -> Tensor:
        """The SVM's class weight vectors ``(T, D, N)``."""
        gram = z_support @ z_support.transpose(1, 2)
        alpha = cs_svm_dual(gram, onehot, self.c, self.ridge, self.max_iter, self.tol)
        return z_support.transpose(1, 2) @ alpha

    def head_logits(self, head: Tensor, z_query: Tensor, params: Params) -> Tensor:
        return params.get("scale", self.scale) * (z_query @ head)
