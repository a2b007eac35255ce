"""Closed-form learners: a differentiable ridge-regression head (R2-D2, MetaOptNet-RR).

φ is the embedding network (names prefixed ``model.``), the ridge penalty λ (stored as
``log_lam`` so it stays positive) and an output scale. Adapting to a task solves a ridge
regression from support embeddings to one-hot labels in closed form; the solve is part of the
autograd graph, so the meta-gradient reaches the embedding, λ and the scale exactly.

BatchNorm runs in the same *episode* mode as :mod:`metaphi.learners.metric` (support and query
of an episode normalised together with that episode's statistics); see there.
"""
from __future__ import annotations

import math
import torch
from pydantic import Field
from torch import Tensor, nn

from ..registry import register_learner
from .functional import Params
from .metric import EmbeddingLearner, EmbeddingOptions


class R2D2Options(EmbeddingOptions):
    name: str = "r2d2"
    lam: float = Field(1.0, gt=0, description="initial ridge penalty λ")
    scale: float = Field(1.0, gt=0, description="initial logit scale")
    learn_lam: bool = Field(True, description="meta-learn λ")
    learn_scale: bool = Field(True, description="meta-learn the logit scale")


@register_learner("r2d2", options=R2D2Options, model="embedding", kinds=("classification",))
class R2D2(EmbeddingLearner):
    """Ridge Regression Differentiable Discriminator (Bertinetto et al., 2019).

    With support embeddings ``Z`` (S x D) and one-hot labels ``Y`` (S x N) the head is
    ``W = Z^T (Z Z^T + λ I)^-1 Y`` (the Woodbury form: an S x S solve, cheap when the support
    set is smaller than the embedding) and the logits are ``scale * Z_query W``. λ and the scale
    are meta-learned. The paper's extra output bias is left out: one scalar added to every
    class's logit does not change the softmax, so it gets no gradient.

    Args:
        model, loss, batched, batchnorm, batchnorm_tasks: as :class:`~metaphi.learners.ProtoNet`.
        lam: initial ridge penalty λ.
        scale: initial logit scale.
        learn_lam: meta-learn λ.
        learn_scale: meta-learn the scale.
    """

    def __init__(self, model: nn.Module | None = None, loss: str = "ce", lam: float = 1.0,
                 scale: float = 1.0, learn_lam: bool = True, learn_scale: bool = True,
                 batched: bool | None = None, batchnorm: str = "episode",
                 batchnorm_tasks: int = 50) -> None:
        super().__init__(model, loss, batched, batchnorm, batchnorm_tasks)
        if not lam > 0:
            raise ValueError(f"lam (the ridge penalty) must be > 0, got {lam}")
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.learn_lam, self.learn_scale = bool(learn_lam), bool(learn_scale)
        log_lam = torch.tensor(math.log(lam))
        scale_t = torch.tensor(float(scale))
        if self.learn_lam:
            self.log_lam = nn.Parameter(log_lam)
        else:
            self.register_buffer("log_lam", log_lam)
        if self.learn_scale:
            self.scale = nn.Parameter(scale_t)
        else:
            self.register_buffer("scale", scale_t)

    def fit_head(self, z_support: Tensor, onehot: Tensor, params: Params) -> Tensor:
        """The ridge weights ``W`` (T, D, N)."""
        lam = params.get("log_lam", self.log_lam).exp()
        s = z_support.shape[1]
        gram = torch.bmm(z_support, z_support.transpose(1, 2))
        eye = torch.eye(s, dtype=gram.dtype, device=gram.device)
        alpha = torch.linalg.solve(gram + lam * eye, onehot)  # (T, S, N)
        return torch.bmm(z_support.transpose(1, 2), alpha)

    def head_logits(self, head: Tensor, z_query: Tensor, params: Params) -> Tensor:
        return params.get("scale", self.scale) * torch.bmm(z_query, head)
