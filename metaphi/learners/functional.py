"""The functional core: run any ``nn.Module`` on a dict of parameters.

Everything here is a pure function of ``(module, params, inputs)``; learners are thin wrappers.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn
from torch.func import functional_call

Params = dict[str, Tensor]
LossSpec = str | Callable[[Tensor, Tensor], Tensor]


def forward(model: nn.Module, params: Params, x: Tensor) -> Tensor:
    """``model(x)`` with its parameters replaced by ``params`` (missing names keep the module's own)."""
    return functional_call(model, params, (x,), strict=False)


def sgd_step(params: Params, grads: Iterable[Tensor], names: list[str],
             lr: float | Params) -> Params:
    """One inner SGD step on ``names`` (``lr`` is a float or a per-parameter dict, as in Meta-SGD)."""
    new = dict(params)
    for n, g in zip(names, grads):
        step = lr[n] * g if isinstance(lr, dict) else lr * g
        new[n] = params[n] - step
    return new


def inner_loop(model: nn.Module, params: Params, x: Tensor, y: Tensor,
               loss_fn: Callable[[Tensor, Tensor], Tensor], names: list[str], steps: int,
               lr: float | Params, second_order: bool, forward_fn=forward,
               checkpoint: bool = False) -> Params:
    """``steps`` SGD steps on the support set ``(x, y)`` for the parameters in ``names``.

    With ``second_order`` the steps stay in the autograd graph (MAML); without, each gradient is
    treated as a constant (first-order MAML) while the path from φ to the result remains.
    ``checkpoint`` (second order only): each step's activations and inner-gradient graph are
    recomputed in the backward pass instead of stored (:func:`checkpointed`).
    """
    def one(p: Params) -> Params:
        loss = loss_fn(forward_fn(model, p, x), y)
        grads = torch.autograd.grad(loss, [p[n] for n in names], create_graph=second_order)
        if not second_order:
            grads = [g.detach() for g in grads]
        return sgd_step(p, grads, names, lr)

    for _ in range(steps):
        params = checkpointed(one, params, names) if checkpoint and second_order else one(params)
    return params


def checkpointed(step: Callable[[Params], Params], params: Params, names: list[str]) -> Params:
    """``step(params)``, with the entries ``names`` of the result computed under
    :func:`torch.utils.checkpoint.checkpoint`: the autograd graph keeps only the step's inputs
    and outputs, and the step (its forward pass and its inner gradient, second order
    included) runs again when the backward pass reaches it. The gradient is the same; the
    memory of an unrolled inner loop grows by the parameters per step instead of by the
    activations and inner-gradient graph of each step. Entries not in ``names`` pass through
    unchanged. ``step`` must be deterministic given its inputs (the RNG state is replayed)."""
    keys = list(params)

    def run(*tensors: Tensor) -> tuple[Tensor, ...]:
        out = step(dict(zip(keys, tensors)))
        return tuple(out[n] for n in names)

    outs = torch.utils.checkpoint.checkpoint(run, *params.values(), use_reentrant=False)
    return {**params, **dict(zip(names, outs))}


def transductive_batchnorm(model: nn.Module) -> nn.Module:
    """Make every BatchNorm use the statistics of the batch it is given, always.

    This is MAML's transductive mode: support and query batches are each normalised with their
    own statistics, at meta-train and meta-test time, and no running statistics are kept (they
    would mix tasks and break the functional, pure-function view of an episode).
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
            m.num_batches_tracked = None
    return model


def loss_and_metric(kind: LossSpec) -> tuple[Callable[[Tensor, Tensor], Tensor],
                                              Callable[[Tensor, Tensor], Tensor], str, bool]:
    """(loss, metric, metric name, higher is better) for ``'ce'``, ``'mse'``, ``'mae'``, or a
    callable loss (which is then its own metric, lower is better)."""
    if callable(kind):
        return kind, kind, "loss", False
    if kind == "ce":
        return F.cross_entropy, lambda out, y: (out.argmax(-1) == y).float().mean(), "accuracy", True
    if kind == "mse":
        return F.mse_loss, F.mse_loss, "mse", False
    if kind == "mae":
        return F.l1_loss, F.l1_loss, "mae", False
    raise ValueError(f"loss must be 'ce' (classification), 'mse' or 'mae' (regression), or a "
                     f"callable loss(outputs, targets), got {kind!r}")
