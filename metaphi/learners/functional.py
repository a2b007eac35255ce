"""The functional core: run any ``nn.Module`` on a dict of parameters.

Everything here is a pure function of ``(module, params, inputs)``; learners are thin wrappers.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F
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
    ``checkpoint`` (second order only): each step is recomputed in the backward pass instead of
    stored (:func:`checkpointed`).
    """
    # what a step reads besides the weights, as inputs of a checkpointed step: the support
    # inputs when they depend on φ (ANIL's features) and learned learning rates (Meta-SGD)
    extra: Params = dict(lr) if isinstance(lr, dict) else {}
    if x.requires_grad:
        extra["<x>"] = x

    def one(p: Params, e: Params) -> Params:
        xs = e.get("<x>", x)
        loss = loss_fn(forward_fn(model, p, xs), y)
        grads = torch.autograd.grad(loss, [p[n] for n in names], create_graph=second_order)
        if not second_order:
            grads = [g.detach() for g in grads]
        return sgd_step(p, grads, names, {n: e[n] for n in names} if isinstance(lr, dict)
                        else lr)

    for _ in range(steps):
        params = (checkpointed(one, params, names, extra) if checkpoint and second_order
                  else one(params, extra))
    return params


class _Recomputed(torch.autograd.Function):
    """One step whose autograd graph is dropped after the forward pass and rebuilt in the
    backward pass (:func:`checkpointed`)."""

    @staticmethod
    def forward(ctx, run, devices, *inputs):  # type: ignore[override]
        ctx.run, ctx.devices = run, devices
        ctx.rng = [torch.get_rng_state()] + [torch.cuda.get_rng_state(d) for d in devices]
        ctx.save_for_backward(*inputs)
        with torch.enable_grad():
            outs = run(*[t.detach().requires_grad_(t.requires_grad) for t in inputs])
        return tuple(o.detach() for o in outs)

    @staticmethod
    def backward(ctx, *grad_outs):  # type: ignore[override]
        with torch.random.fork_rng(devices=ctx.devices), torch.enable_grad():
            torch.set_rng_state(ctx.rng[0])
            for d, state in zip(ctx.devices, ctx.rng[1:]):
                torch.cuda.set_rng_state(state, d)
            inputs = [t.detach().requires_grad_(t.requires_grad) for t in ctx.saved_tensors]
            outs = ctx.run(*inputs)
        pairs = [(o, g) for o, g in zip(outs, grad_outs) if o.requires_grad and g is not None]
        wanted = [i for i, t in enumerate(inputs) if t.requires_grad]
        grads = torch.autograd.grad([o for o, _ in pairs], [inputs[i] for i in wanted],
                                    [g for _, g in pairs], allow_unused=True) if pairs else []
        result: list[Tensor | None] = [None] * len(inputs)
        for i, g in zip(wanted, grads):
            result[i] = g
        return (None, None, *result)


def checkpointed(step: Callable[[Params, Params], Params], params: Params, names: list[str],
                 extra: Params | None = None) -> Params:
    """``step(params, extra)`` with gradient checkpointing: the entries ``names`` of its result
    are computed without keeping the step's autograd graph (its forward pass and its inner
    gradient, second order included), which is rebuilt when the backward pass reaches the
    step. The gradients are the same; an unrolled inner loop then holds the weights of every
    step instead of their activations and inner-gradient graphs. Entries not in ``names`` pass
    through unchanged.

    Every tensor that needs a gradient must reach ``step`` through ``params`` or ``extra``
    (not a closure). ``step`` must be deterministic given its inputs and the RNG state (which
    is replayed). This is the recomputation of :func:`torch.utils.checkpoint.checkpoint`, as
    an autograd function of its own: in its non-reentrant mode the inner gradient, which reads
    saved activations inside the checkpointed region, makes it recompute and keep them, and
    its reentrant mode does not support :func:`torch.autograd.grad`.
    """
    extra = extra or {}
    keys, extra_keys = list(params), list(extra)
    tensors = [*params.values(), *extra.values()]
    devices = sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})

    def run(*ts: Tensor) -> tuple[Tensor, ...]:
        out = step(dict(zip(keys, ts[:len(keys)])), dict(zip(extra_keys, ts[len(keys):])))
        return tuple(out[n] for n in names)

    outs = _Recomputed.apply(run, devices, *tensors)
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
