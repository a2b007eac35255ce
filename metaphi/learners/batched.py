"""Task-batched forward passes: one call runs T tasks, each with its own weights.

The inner loop of MAML gives every task its own fast weights. Instead of looping over tasks
(Python overhead per task) or ``vmap`` (slow on CPU, and wrong second-order BatchNorm
gradients, pytorch/functorch#534), each parameter gets a leading task dimension
(``φ.expand(T, ...)``) and each layer runs all tasks at once: ``Linear`` as a batched matmul,
``Conv2d`` as a grouped convolution, BatchNorm with per-task batch statistics. Because task t's
loss depends only on its own copy of the weights, one backward pass of the summed task losses
gives every task's own inner gradient, and second-order terms stay exact (only elementary,
differentiable ops are used).

Supported layers: Sequential, :class:`~metaphi.models.Classifier`, Linear, Conv2d, BatchNorm1d/2d
(batch statistics), ReLU, LeakyReLU, Tanh, Sigmoid, ELU, MaxPool2d, AvgPool2d, Flatten, Identity.
:func:`supports` tells whether a model can take this path; learners fall back to the per-task
loop otherwise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.backbones import Classifier
from .functional import Params

_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.Identity, nn.MaxPool2d,
                nn.AvgPool2d, nn.Flatten, nn.Dropout)
_PARAMETRIC = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)


def supports(model: nn.Module) -> bool:
    """Whether :func:`batched_forward` can run ``model``."""
    if isinstance(model, (nn.Sequential, Classifier)):
        return all(supports(m) for m in model.children())
    if isinstance(model, nn.Conv2d):
        return model.padding_mode == "zeros" and isinstance(model.padding, tuple)
    if isinstance(model, nn.Flatten):
        return model.start_dim == 1 and model.end_dim == -1
    return isinstance(model, _ELEMENTWISE + _PARAMETRIC)


def _get(params: Params, prefix: str, name: str, module: nn.Module) -> Tensor | None:
    t = params.get(prefix + name)
    return t if t is not None else getattr(module, name)


def _batched(t: Tensor | None, module_param: Tensor | None) -> bool:
    return t is not None and module_param is not None and t.dim() == module_param.dim() + 1


def batched_forward(model: nn.Module, params: Params, x: Tensor, prefix: str = "") -> Tensor:
    """Run ``model`` on ``x`` of shape (T, B, ...) with ``params`` that are either per-task
    (leading T dimension) or shared (the module's own shape). Returns (T, B, ...)."""
    if isinstance(model, Classifier):
        x = batched_forward(model.features, params, x, prefix + "features.")
        return batched_forward(model.head, params, x, prefix + "head.")
    if isinstance(model, nn.Sequential):
        for name, child in model.named_children():
            x = batched_forward(child, params, x, f"{prefix}{name}.")
        return x
    T, B = x.shape[:2]
    if isinstance(model, nn.Linear):
        w, b = _get(params, prefix, "weight", model), _get(params, prefix, "bias", model)
        y = x @ w.transpose(-1, -2)  # (T,B,in) @ (T,in,out) or (in,out)
        if b is not None:
            y = y + (b.unsqueeze(1) if _batched(b, model.bias) else b)
        return y
    if isinstance(model, nn.Conv2d):
        w, b = _get(params, prefix, "weight", model), _get(params, prefix, "bias", model)
        kw = dict(stride=model.stride, padding=model.padding, dilation=model.dilation)
        if not _batched(w, model.weight):
            y = F.conv2d(x.reshape(T * B, *x.shape[2:]), w, b, groups=model.groups, **kw)
            return y.reshape(T, B, *y.shape[1:])
        # Tasks become channel groups of one grouped convolution.
        xg = x.transpose(0, 1).reshape(B, T * x.shape[2], *x.shape[3:])
        wg = w.reshape(T * w.shape[1], *w.shape[2:])
        bg = b.reshape(-1) if b is not None else None
        y = F.conv2d(xg, wg, bg, groups=T * model.groups, **kw)
        return y.reshape(B, T, -1, *y.shape[2:]).transpose(0, 1)
    if isinstance(model, (nn.BatchNorm1d, nn.BatchNorm2d)):
        w, b = _get(params, prefix, "weight", model), _get(params, prefix, "bias", model)
        dims = [1] + list(range(3, x.dim()))  # statistics per task over batch (and space)
        mean = x.mean(dim=dims, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
        y = (x - mean) * torch.rsqrt(var + model.eps)
        if w is not None:
            shape = [T if _batched(w, model.weight) else 1, 1, -1] + [1] * (x.dim() - 3)
            y = y * w.reshape(shape) + b.reshape(shape)
        return y
    if isinstance(model, _ELEMENTWISE):
        y = model(x.reshape(T * B, *x.shape[2:]))
        return y.reshape(T, B, *y.shape[1:])
    raise TypeError(f"batched_forward does not support {type(model).__name__}")


def per_task_loss(loss_kind: str, out: Tensor, y: Tensor) -> Tensor:
    """Loss of each task (T,) from outputs (T, B, ...) and targets (T, B, ...)."""
    if loss_kind == "ce":
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1),
                               reduction="none").reshape(y.shape).mean(1)
    err = (out - y).abs() if loss_kind == "mae" else (out - y) ** 2
    return err.reshape(out.shape[0], -1).mean(1)


def per_task_metric(loss_kind: str, out: Tensor, y: Tensor) -> Tensor:
    if loss_kind == "ce":
        return (out.argmax(-1) == y).float().mean(1)
    return per_task_loss(loss_kind, out, y)


def auto(model: nn.Module, x: Tensor) -> bool:
    """The default choice of path, from the measurements on the speed results page: on CPU the
    task-batched path is faster than the per-task loop for small dense networks but slower for
    convolutional ones (a meta-batch's activations fall out of cache); on a GPU, batching is
    what fills the device."""
    return x.is_cuda or not any(isinstance(m, nn.Conv2d) for m in model.modules())
