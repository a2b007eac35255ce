"""N-BEATS (Oreshkin et al., ICLR 2020): a doubly residual stack of fully connected blocks that
maps the last ``L`` values of a series to its next ``h``. Registered as the ``nbeats`` backbone
for vector inputs (a window of a series) with ``out_dim`` outputs (the horizon), as the
forecasting task source builds them::

    task: {source: forecast, domains: [m3-yearly], horizon: 6}
    model: {name: nbeats, width: 128, blocks: 3}
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import Field
from torch import Tensor, nn

from ..registry import Options, register_backbone

if TYPE_CHECKING:
    from ..tasks.sources import TaskInfo


class Block(nn.Module):
    """A generic N-BEATS block: an MLP that emits a backcast and a forecast."""

    def __init__(self, L: int, h: int, width: int, layers: int, backcast: bool = True) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        d = L
        for _ in range(layers):
            mods += [nn.Linear(d, width), nn.ReLU()]
            d = width
        self.mlp = nn.Sequential(*mods)
        # the last block's backcast would feed nothing (and leave unused inner-loop parameters)
        self.backcast = nn.Linear(width, L) if backcast else None
        self.forecast = nn.Linear(width, h)

    def forward(self, x: Tensor) -> tuple[Tensor | None, Tensor]:
        z = self.mlp(x)
        return (self.backcast(z) if self.backcast is not None else None), self.forecast(z)


class NBeats(nn.Module):
    """Doubly residual stack of generic blocks (Oreshkin et al., 2020), small by default."""

    def __init__(self, L: int, h: int, width: int = 128, blocks: int = 3, layers: int = 2) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(L, h, width, layers, backcast=i < blocks - 1)
                                     for i in range(blocks)])
        self.h = h

    def forward(self, x: Tensor) -> Tensor:
        # Inputs are scaled to mean ~1; centring them on the last value helps the residual stack.
        last = x[..., -1:]
        res = x - last
        out = last.expand(*x.shape[:-1], self.h).clone()
        for b in self.blocks:
            back, fc = b(res)
            out = out + fc
            if back is not None:
                res = res - back
        return out


class NBeatsOptions(Options):
    """``model:`` options of N-BEATS (series windows as vector inputs)."""

    name: str = "nbeats"
    width: int = Field(128, ge=1, description="units of each fully connected layer")
    blocks: int = Field(3, ge=1, description="residual blocks")
    layers: int = Field(2, ge=1, description="fully connected layers per block")


@register_backbone("nbeats", options=NBeatsOptions, inputs=("vector",))
def build_nbeats(o: NBeatsOptions, info: "TaskInfo", out_dim: int | None) -> nn.Module:
    if out_dim is None:
        raise ValueError("model: nbeats is a forecaster with its own output layer; use it with "
                         "a learner that adapts a head (maml, fomaml, meta_sgd, reptile, "
                         "imaml, maml++), or an embedding backbone such as mlp")
    return NBeats(math.prod(info.input_shape), out_dim, o.width, o.blocks, o.layers)
