"""The meta-optimizer registry: gradient optimizers (``torch.optim``) and population ones
(ES, CMA-ES, REINFORCE), each with its config options.

A config's ``meta_optimizer:`` section names one (``{name: adam, lr: 0.001}``); gradient ones
build ``(optimizer, schedule)`` over φ, population ones an ask/tell optimizer over a flat φ or
a search space.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from ..registry import Options, register_meta_optimizer
from .evolution import CMAES, OpenAIES
from .reinforce import REINFORCE
from .space import Space


# -- gradient -------------------------------------------------------------------------------
class GradientOptions(Options):
    """Options of every gradient meta-optimizer."""

    name: str
    lr: float = Field(1e-3, gt=0, description="outer learning rate")
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "cosine", "step"] = Field(
        "constant", description="learning-rate schedule over the run's steps")
    step_size: int = Field(10000, ge=1, description="'step' schedule: steps between decays")
    gamma: float = Field(0.5, gt=0, le=1, description="'step' schedule: decay factor")
    clip_grad_norm: float | None = Field(None, gt=0, description="clip φ's gradient norm")


class AdamOptions(GradientOptions):
    name: str = "adam"


class AdamWOptions(GradientOptions):
    name: str = "adamw"


class SGDOptions(GradientOptions):
    name: str = "sgd"
    momentum: float = Field(0.0, ge=0, lt=1)


def build_schedule(opt: torch.optim.Optimizer, o: GradientOptions,
                   steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The options' learning-rate schedule over ``steps`` outer steps."""
    if o.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    if o.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=o.step_size, gamma=o.gamma)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


@register_meta_optimizer("adam", options=AdamOptions, kind="gradient")
def adam(o: AdamOptions, params, steps: int):
    opt = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    return opt, build_schedule(opt, o, steps)


@register_meta_optimizer("adamw", options=AdamWOptions, kind="gradient")
def adamw(o: AdamWOptions, params, steps: int):
    opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    return opt, build_schedule(opt, o, steps)


@register_meta_optimizer("sgd", options=SGDOptions, kind="gradient")
def sgd(o: SGDOptions, params, steps: int):
    opt = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return opt, build_schedule(opt, o, steps)


# -- population -----------------------------------------------------------------------------
class ESOptions(Options):
    """OpenAI-ES (:class:`~metaphi.meta.OpenAIES`); φ: a flat vector or a search space."""

    name: str = "es"
    sigma: float = Field(0.05, gt=0, description="noise scale")
    lr: float = Field(0.01, gt=0, description="step size of the search-gradient optimizer")
    popsize: int = Field(50, ge=2, description="candidates per generation (even: antithetic)")
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = Field(0.9, ge=0, lt=1)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0)
    shaping: Literal["ranks", "none"] = "ranks"
    schedule: Literal["constant", "cosine"] = Field(
        "constant", description="cosine: anneal lr (and sigma, with sigma_final) over the run")
    lr_final: float = Field(0.0, ge=0, le=1, description="cosine: final lr as a fraction of lr")
    sigma_final: float | None = Field(None, gt=0)
    anchor: float = Field(0.0, ge=0, description="pull toward the start point")


class CMAESOptions(Options):
    """CMA-ES (:class:`~metaphi.meta.CMAES`, needs ``metaphi[evolution]``)."""

    name: str = "cmaes"
    sigma: float = Field(0.3, gt=0, description="initial step size")
    popsize: int | None = Field(None, ge=2, description="candidates per generation (None: "
                                "the library's default for the dimension)")
    diagonal: bool = Field(False, description="sep-CMA-ES: a diagonal covariance (for φ with "
                           "thousands of numbers)")
    restarts: int = Field(0, ge=0, description="IPOP restarts")
    popsize_growth: float = Field(2.0, ge=1)
    restart_at: Literal["center", "x0"] = "center"
    stall_generations: int | None = Field(None, ge=4)
    min_spread: float | None = Field(None, gt=0)


class REINFORCEOptions(Options):
    """REINFORCE over a search space (:class:`~metaphi.meta.REINFORCE`)."""

    name: str = "reinforce"
    popsize: int = Field(16, ge=2)
    lr: float = Field(0.1, gt=0)
    baseline_decay: float = Field(0.9, ge=0, lt=1)
    init_std: float = Field(0.25, gt=0)
    min_std: float = Field(0.02, gt=0)
    max_int_choices: int = Field(64, ge=1)


@register_meta_optimizer("es", options=ESOptions, kind="population")
def es(o: ESOptions, x0: Any, space: Space | None, seed: int, steps: int) -> OpenAIES:
    # a cosine schedule anneals over the run's generations
    horizon = steps if o.schedule == "cosine" else None
    return OpenAIES(x0=x0, space=space, seed=seed, horizon=horizon, **o.kwargs())


@register_meta_optimizer("cmaes", options=CMAESOptions, kind="population")
def cmaes(o: CMAESOptions, x0: Any, space: Space | None, seed: int, steps: int) -> CMAES:
    return CMAES(x0=x0, space=space, seed=seed, **o.kwargs())


@register_meta_optimizer("reinforce", options=REINFORCEOptions, kind="population")
def reinforce(o: REINFORCEOptions, x0: Any, space: Space | None, seed: int,
              steps: int) -> REINFORCE:
    if space is None:
        raise ValueError("meta_optimizer.name: 'reinforce' searches a space: give `space:` "
                         "(and fitness.phi: hyper)")
    return REINFORCE(space, seed=seed, **o.kwargs())
