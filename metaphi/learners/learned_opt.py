"""A learned optimiser as φ: a meta-learned update rule runs the inner loop instead of SGD.

The update rule is a small MLP shared by every coordinate of every adapted parameter
(Andrychowicz et al., 2016: coordinate-wise and shared; Metz et al., 2020: an MLP fed with
per-coordinate features, each normalised by its root mean square over the tensor). Its input,
for one coordinate at inner step t, is four features: the gradient g, its momentum m (an
exponential average, β = 0.9, bias-corrected), m / sqrt(v) with v the average of g² (β =
0.999; Adam's direction) and the parameter's value p, each divided by its RMS over the
parameter tensor. Its output d changes the SGD step:

    p <- p - lr * (g + rms(g) * d)

with the last layer initialised at zero, so that the rule starts as SGD with ``inner_lr`` and
meta-training can only move it away where that lowers the query loss. φ is the initialisation
of the model (``model.``; with ``learn_init=False`` the initialisation is fixed and φ is the
rule alone, which then applies to any network), the rule's weights (``update.``) and ``log_lr``.
Because the rule acts per coordinate, on normalised features, it applies unchanged to a
network of another width or depth than it was meta-trained with.

Meta-gradients run through the inner loop as MAML's do: second order by default (the
gradient features depend on φ through the adapted weights), or ``first_order=True``, where the
gradients fed to the rule are treated as constants (φ still gets the rule's direct effect on
the adapted weights).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ..registry import register_learner
from . import batched
from .base import MODEL_PREFIX
from .functional import LossSpec, Params, forward
from .maml import MAML, InnerLoopOptions

BETA1, BETA2 = 0.9, 0.999
N_FEATURES = 4
UPDATE = "update."


class UpdateRule(nn.Module):
    """The coordinate-wise MLP: ``N_FEATURES`` features in, one step correction out."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.fc0 = nn.Linear(N_FEATURES, hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @staticmethod
    def apply_to(p: Params, feats: Tensor) -> Tensor:
        """The correction for features ``(..., N_FEATURES)`` with the rule's weights ``p``."""
        h = F.relu(F.linear(feats, p["fc0.weight"], p["fc0.bias"]))
        h = F.relu(F.linear(h, p["fc1.weight"], p["fc1.bias"]))
        return F.linear(h, p["out.weight"], p["out.bias"]).squeeze(-1)


class Segments:
    """Per-tensor statistics of flat vectors: the coordinates of several tensors laid end to
    end (``sizes`` each), with leading task dimensions."""

    def __init__(self, sizes: list[int], like: Tensor) -> None:
        self.sizes = sizes
        index = torch.repeat_interleave(torch.arange(len(sizes), device=like.device),
                                        torch.tensor(sizes, device=like.device))
        member = F.one_hot(index, len(sizes)).to(like.dtype)  # (P, n_tensors)
        self.mean_of = member / member.sum(0)  # x @ mean_of: each tensor's mean
        self.spread = member.t()  # (n_tensors, P): back to coordinates

    def rms(self, x: Tensor) -> Tensor:
        """Each coordinate's tensor's root mean square of ``x`` (..., P)."""
        return torch.sqrt((x * x) @ self.mean_of + 1e-12) @ self.spread


def learned_step(rule: Params, lr: Tensor, p: Tensor, g: Tensor, seg: Segments,
                 state: tuple[Tensor, Tensor] | None, step: int
                 ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """One step of the learned rule on flat parameters ``p`` (..., P) with gradients ``g``
    (several tensors laid end to end, see :class:`Segments`; leading dimensions index tasks,
    and statistics are per task and tensor). Returns the new values and the optimiser state
    (m, v)."""
    if state is None:
        m, v = (1 - BETA1) * g, (1 - BETA2) * g * g
    else:
        m, v = BETA1 * state[0] + (1 - BETA1) * g, BETA2 * state[1] + (1 - BETA2) * g * g
    m_hat, v_hat = m / (1 - BETA1 ** (step + 1)), v / (1 - BETA2 ** (step + 1))
    feats = torch.stack([g, m_hat, m_hat * torch.rsqrt(v_hat + 1e-12), p], dim=-2)
    feats = (feats / seg.rms(feats)).transpose(-1, -2)  # (..., P, N_FEATURES)
    d = UpdateRule.apply_to(rule, feats)
    return p - lr * (g + seg.rms(g) * d), (m, v)


class LearnedOptOptions(InnerLoopOptions):
    name: str = "learned_opt"
    first_order: bool = Field(False, description="treat the gradients fed to the rule as "
                              "constants")
    inner_lr: float = Field(0.01, gt=0, description="the rule's initial step size (the rule "
                            "starts as SGD with it; meta-learned)")
    hidden: int = Field(16, ge=1, description="units of the update rule's two hidden layers")
    learn_init: bool = Field(True, description="meta-learn the model's initialisation too "
                             "(False: φ is the update rule alone)")


@register_learner("learned_opt", options=LearnedOptOptions)
class LearnedOptimizer(MAML):
    """A meta-learned inner-loop optimiser (see the module docstring).

    Args:
        model: the network the rule trains.
        loss, inner_steps, first_order, eval_inner_steps, batched: as :class:`MAML`.
        inner_lr: the rule's initial step size (meta-learned as ``log_lr``).
        hidden: units of the rule's two hidden layers.
        learn_init: meta-learn the model's initialisation (False: it stays as given, and φ is
            the rule, which then transfers to other networks).
    """

    def __init__(self, model: nn.Module, loss: LossSpec = "ce", inner_lr: float = 0.01,
                 inner_steps: int = 1, first_order: bool = False,
                 eval_inner_steps: int | None = None, batched: bool | None = None,
                 hidden: int = 16, learn_init: bool = True) -> None:
        super().__init__(model, loss, inner_lr, inner_steps, first_order, eval_inner_steps,
                         batched)
        if int(hidden) < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        self.learn_init = bool(learn_init)
        if not self.learn_init:
            for p in self.model.parameters():
                p.requires_grad_(False)
        like = next(self.model.parameters())
        self.update = UpdateRule(int(hidden)).to(dtype=like.dtype, device=like.device)
        self.log_lr = nn.Parameter(torch.tensor(math.log(self.inner_lr), dtype=like.dtype,
                                                device=like.device))

    def model_params(self, params: Params) -> Params:
        # the initialisation: φ's when it is learned, else the model's fixed weights
        own = {n: p for n, p in self.model.named_parameters()}
        return {**own, **super().model_params(params)}

    def rule(self, params: Params) -> tuple[Params, Tensor]:
        """The update rule's weights and the step size from ``params`` (or the learner's)."""
        own = {UPDATE + n: p for n, p in self.update.named_parameters()}
        merged = {**own, **{n: p for n, p in params.items() if n.startswith(UPDATE)}}
        log_lr = params.get("log_lr", self.log_lr)
        return {n[len(UPDATE):]: p for n, p in merged.items()}, log_lr.exp()

    def run_inner(self, params: Params, x: Tensor, y: Tensor, steps: int, second_order: bool,
                  forward_fn: Callable[..., Tensor], loss_of: Callable[[Tensor, Tensor], Tensor],
                  lead: int) -> Params:
        """``steps`` steps of the learned rule on ``(x, y)`` from the model's weights in
        ``params``; ``lead`` leading dimensions of the weights index tasks."""
        rule, lr = self.rule(params)
        names = self.adapted_names()
        fast = dict(self.model_params(params))
        state = None
        lead_shape = x.shape[:lead]
        with torch.enable_grad():
            for n in names:
                if not fast[n].requires_grad:  # a fixed initialisation
                    fast[n] = fast[n].detach().requires_grad_()
            sizes = [fast[n][(0,) * lead].numel() for n in names]
            seg = Segments(sizes, fast[names[0]])
            flat = torch.cat([fast[n].reshape(*lead_shape, -1) for n in names], dim=-1)
            for step in range(steps):
                loss = loss_of(forward_fn(self.model, fast, x), y)
                grads = torch.autograd.grad(loss, [fast[n] for n in names],
                                            create_graph=second_order)
                g = torch.cat([gr.reshape(*lead_shape, -1) for gr in grads], dim=-1)
                flat, state = learned_step(rule, lr, flat, g if second_order else g.detach(),
                                           seg, state, step)
                parts = flat.split(sizes, dim=-1)
                fast.update({n: part.reshape(fast[n].shape) for n, part in zip(names, parts)})
        return fast

    def fast_weights(self, support_x: Tensor, support_y: Tensor, params: Params, steps: int,
                     create_graph: bool) -> Params:
        fast = self.run_inner(params, support_x, support_y, steps,
                              create_graph and not self.first_order, forward, self.loss_fn, 0)
        if not create_graph:
            fast = {n: p.detach() for n, p in fast.items()}
        return fast

    def batched_adapt(self, x: Tensor, y: Tensor, params: Params, steps: int,
                      second_order: bool, task_lr: Tensor | None = None) -> Params:
        if task_lr is not None:
            raise ValueError("learned_opt has no per-task inner learning rate to set")
        t = x.shape[0]
        shapes = {n: p.shape for n, p in self.model.named_parameters()}
        names = set(self.adapted_names())
        mp = self.model_params(params)
        # every adapted weight gets a per-task copy (leading task dimension)
        per_task = {n: (p if p.dim() == len(shapes[n]) + 1 else p.unsqueeze(0).expand(t, *p.shape))
                    if n in names else p for n, p in mp.items()}
        merged = {**params, **{MODEL_PREFIX + n: p for n, p in per_task.items()}}

        def loss_of(out: Tensor, target: Tensor) -> Tensor:
            return batched.per_task_loss(self.loss_kind, out, target).sum()
        return self.run_inner(merged, x, y, steps, second_order, batched.batched_forward,
                              loss_of, 1)
