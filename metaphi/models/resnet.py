"""ResNet-12, the few-shot backbone of TADAM (Oreshkin et al., 2018) and MetaOptNet (Lee et
al., 2019).

Four residual blocks; each has three 3x3 convolutions (no bias) with BatchNorm, a LeakyReLU
(slope 0.1) after the first two and after the sum with a 1x1-convolution shortcut, then 2x2
max-pooling. Widths 64-160-320-640 as in MetaOptNet (TADAM: 64-128-256-512). The embedding is
the flattened last feature map (MetaOptNet), or its spatial mean (``avg_pool``). MetaOptNet's
DropBlock is replaced by plain dropout after each block (``dropout``), off by default.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field
from torch import Tensor, nn

from ..registry import Options, register_backbone
from .backbones import Classifier

if TYPE_CHECKING:
    from ..tasks.sources import TaskInfo


class ResBlock(nn.Module):
    """One ResNet-12 block: three convolutions and a shortcut, then 2x2 max-pooling."""

    def __init__(self, c_in: int, c_out: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv3 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.drop(self.pool(self.act(out + self.shortcut(x))))


def resnet12_features(in_channels: int = 3, widths: tuple[int, ...] = (64, 160, 320, 640),
                      dropout: float = 0.0, avg_pool: bool = False) -> nn.Sequential:
    """The ResNet-12 embedding: flattened last feature map (or its mean with ``avg_pool``)."""
    blocks: list[nn.Module] = []
    c = in_channels
    for w in widths:
        blocks.append(ResBlock(c, w, dropout))
        c = w
    if avg_pool:
        blocks.append(nn.AdaptiveAvgPool2d(1))
    return nn.Sequential(*blocks, nn.Flatten())


def resnet12(n_way: int, in_channels: int = 3, image_size: int = 84,
             widths: tuple[int, ...] = (64, 160, 320, 640), dropout: float = 0.0,
             avg_pool: bool = False) -> Classifier:
    """ResNet-12 with a linear head of ``n_way`` outputs."""
    side = image_size
    for _ in widths:
        side //= 2
    dim = widths[-1] * (1 if avg_pool else side * side)
    return Classifier(resnet12_features(in_channels, widths, dropout, avg_pool),
                      nn.Linear(dim, n_way))


class ResNet12Options(Options):
    """``model:`` options of ResNet-12 (image inputs)."""

    name: str = "resnet12"
    widths: list[int] = Field(default_factory=lambda: [64, 160, 320, 640], min_length=1,
                              description="channels of the residual blocks")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout after each block")
    avg_pool: bool = Field(False, description="embed as the last feature map's spatial mean "
                           "(else flattened)")


@register_backbone("resnet12", options=ResNet12Options, inputs=("image",))
def build_resnet12(o: ResNet12Options, info: "TaskInfo", out_dim: int | None) -> nn.Module:
    channels, side = info.input_shape[0], info.input_shape[-1]
    blocks = len(o.widths)
    if side < 2 ** blocks:
        raise ValueError(f"model.widths: {blocks} blocks max-pool {blocks} times and need images "
                         f"of at least {2 ** blocks} px, the tasks have {side} px; give fewer "
                         "widths")
    if out_dim is None:
        return resnet12_features(channels, tuple(o.widths), o.dropout, o.avg_pool)
    return resnet12(out_dim, channels, side, tuple(o.widths), o.dropout, o.avg_pool)
