"""Backbones used in the papers. Any ``nn.Module`` works with the learners; these are defaults.

Classifiers expose ``features`` (the backbone) and ``head`` (the last linear layer) so that
ANIL and the metric-based learners can tell them apart.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated

from pydantic import Field
from torch import Tensor, nn

from ..registry import Options, register_backbone

if TYPE_CHECKING:
    from ..tasks.sources import TaskInfo


class Classifier(nn.Module):
    """``head(features(x))``."""

    def __init__(self, features: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def mlp(in_dim: int = 1, hidden: tuple[int, ...] = (40, 40), out_dim: int = 1) -> Classifier:
    """The MAML sinusoid network (1-40-40-1 with ReLU by default)."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    return Classifier(nn.Sequential(*layers), nn.Linear(d, out_dim))


def conv_block(c_in: int, c_out: int, max_pool: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out),
                               nn.ReLU()]
    if max_pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def conv4_features(in_channels: int = 1, hidden: int = 64, depth: int = 4,
                   pool: int | None = None) -> nn.Sequential:
    """Conv-4 embedding: ``depth`` blocks of 3x3 conv, BatchNorm, ReLU, 2x2 max-pool, flattened;
    ``pool``: only the first ``pool`` blocks max-pool (default: all)."""
    pool = depth if pool is None else pool
    blocks = [conv_block(in_channels if i == 0 else hidden, hidden, max_pool=i < pool)
              for i in range(depth)]
    return nn.Sequential(*blocks, nn.Flatten())


def conv4(n_way: int, in_channels: int = 1, hidden: int = 64, image_size: int = 28,
          depth: int = 4, pool: int | None = None) -> Classifier:
    """Conv-4 classifier as in MAML / ProtoNet (28x28 Omniglot gives a 64-d feature)."""
    side = image_size
    for _ in range(depth if pool is None else min(pool, depth)):
        side //= 2
    return Classifier(conv4_features(in_channels, hidden, depth, pool),
                      nn.Linear(hidden * side * side, n_way))


def mlp_features(in_dim: int = 1, hidden: tuple[int, ...] = (40, 40)) -> nn.Sequential:
    """The hidden layers of :func:`mlp` (Linear + ReLU each): an embedding network."""
    return mlp(in_dim, hidden, 1).features


# -- registered backbones -------------------------------------------------------------------
class MLPOptions(Options):
    """``model:`` options of the MLP (vector inputs)."""

    name: str = "mlp"
    hidden: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [40, 40], min_length=1, description="hidden layer widths")


@register_backbone("mlp", options=MLPOptions, inputs=("vector",))
def build_mlp(o: MLPOptions, info: "TaskInfo", out_dim: int | None) -> nn.Module:
    in_dim = math.prod(info.input_shape)
    if out_dim is None:
        return mlp_features(in_dim, tuple(o.hidden))
    return mlp(in_dim, tuple(o.hidden), out_dim)


class Conv4Options(Options):
    """``model:`` options of Conv-4 (image inputs)."""

    name: str = "conv4"
    width: int = Field(64, ge=1, description="filters per block")
    depth: int = Field(4, ge=1, le=5, description="conv blocks")


@register_backbone("conv4", options=Conv4Options, inputs=("image",))
def build_conv4(o: Conv4Options, info: "TaskInfo", out_dim: int | None) -> nn.Module:
    channels, side = info.input_shape[0], info.input_shape[-1]
    if side < 2 ** o.depth:
        raise ValueError(f"model.depth: {o.depth} max-pooling blocks need images of at least "
                         f"{2 ** o.depth} px, the tasks have {side} px; lower model.depth")
    if out_dim is None:
        return conv4_features(channels, o.width, o.depth)
    return conv4(out_dim, channels, o.width, side, o.depth)
