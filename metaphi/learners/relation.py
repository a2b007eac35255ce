"""Relation Networks (Sung et al., CVPR 2018, "Learning to Compare").

φ is the embedding network (names prefixed ``model.``) and a relation module (``relation.``).
A class is represented by the element-wise sum of its support embeddings (feature maps); each
(query, class) pair's maps are concatenated along the channels and the relation module scores
them: two blocks of 3x3 convolution, BatchNorm, ReLU and 2x2 max-pooling, then a ReLU layer of
``fc`` units and one output. The paper's objective is the mean squared error between the
sigmoid of that score and the one-hot label (``objective="mse"``); ``"ce"`` uses softmax
cross-entropy over the classes' scores instead.

The embedding's feature maps are kept: a trailing ``nn.Flatten`` of the embedding (Conv-4's)
is removed; an embedding that gives vectors ``(B, D)`` is read as ``D`` channels of 1x1 maps.
The paper's Omniglot embedding pools after its first two blocks only
(``metaphi.models.conv4_features(pool=2)``: 64 x 7 x 7 maps on 28 px images); with every block
pooled (Conv-4's default, the registered ``conv4`` backbone) the maps are 1 x 1 and the
relation module's 3x3 convolutions act as 1x1 ones on the concatenated embeddings.
The pooling uses ``ceil_mode`` so that any map size works, and the scores are max-pooled over
what space is left before the fully connected layers (for the paper's map sizes there is none
left), so the module's size depends only on the embedding's channel count, read from its last
convolution, BatchNorm or linear layer (or given as ``channels``).

BatchNorm in the relation module always normalises with the statistics of the episode's
(query, class) pairs, in both BatchNorm modes (``batchnorm`` applies to the embedding).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from typing import Literal

from ..models import conv4_features
from ..registry import register_learner
from .functional import Params
from .metric import EmbeddingLearner, EmbeddingOptions

PREFIX = "relation."


def embedding_channels(model: nn.Module) -> int:
    """The channels of an embedding's output, read from its last convolution, BatchNorm or
    linear layer."""
    for m in reversed(list(model.modules())):
        if isinstance(m, nn.Conv2d):
            return m.out_channels
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return m.num_features
        if isinstance(m, nn.Linear):
            return m.out_features
    raise ValueError(f"cannot tell how many channels {type(model).__name__} outputs (it has no "
                     "convolution, BatchNorm or linear layer): pass channels=")


def strip_flatten(model: nn.Module) -> nn.Module:
    """``model`` without a trailing ``nn.Flatten`` (feature maps instead of vectors)."""
    if isinstance(model, nn.Sequential) and len(model) and isinstance(model[-1], nn.Flatten):
        return model[:-1]
    return model


class RelationModule(nn.Module):
    """The relation module g: pairs of feature maps (2C channels) -> one score each."""

    def __init__(self, channels: int, hidden: int = 64, fc: int = 8) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(2 * channels, hidden, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(hidden)
        self.conv1 = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.fc0 = nn.Linear(hidden, fc)
        self.fc1 = nn.Linear(fc, 1)

    def scores(self, p: Params, pairs: Tensor) -> Tensor:
        """Scores ``(T, P)`` of ``T`` episodes' pairs ``(T, P, 2C, H, W)``, with the module's
        weights ``p`` (names without the prefix); BatchNorm statistics are per episode."""
        t, n = pairs.shape[:2]
        x = pairs
        for i in (0, 1):
            x = F.conv2d(x.flatten(0, 1), p[f"conv{i}.weight"], p[f"conv{i}.bias"], padding=1)
            x = x.unflatten(0, (t, n))
            mean = x.mean(dim=(1, 3, 4), keepdim=True)
            var = x.var(dim=(1, 3, 4), unbiased=False, keepdim=True)
            shape = (1, 1, -1, 1, 1)
            x = ((x - mean) * torch.rsqrt(var + 1e-5) * p[f"bn{i}.weight"].view(shape)
                 + p[f"bn{i}.bias"].view(shape))
            x = F.max_pool2d(F.relu(x).flatten(0, 1), 2, ceil_mode=True).unflatten(0, (t, n))
        x = x.amax(dim=(-2, -1))
        x = F.relu(F.linear(x, p["fc0.weight"], p["fc0.bias"]))
        return F.linear(x, p["fc1.weight"], p["fc1.bias"]).squeeze(-1)


def relation_mse(scores: Tensor, y: Tensor) -> Tensor:
    """The paper's objective: mean squared error between sigmoid(scores) and one-hot labels."""
    target = F.one_hot(y.long(), scores.shape[-1]).to(scores.dtype)
    return F.mse_loss(torch.sigmoid(scores), target)


class RelationNetOptions(EmbeddingOptions):
    name: str = "relationnet"
    objective: Literal["mse", "ce"] = Field(
        "mse", description="mse: the paper's squared error of sigmoid scores against one-hot "
        "labels; ce: softmax cross-entropy over the classes' scores")
    hidden: int = Field(64, ge=1, description="filters of the relation module's convolutions")
    fc: int = Field(8, ge=1, description="units of its hidden fully connected layer")
    channels: int | None = Field(None, ge=1, description="channels of the embedding's feature "
                                 "maps (None: read from its last layer)")


@register_learner("relationnet", options=RelationNetOptions, model="embedding",
                  kinds=("classification",))
class RelationNet(EmbeddingLearner):
    """Relation Networks (Sung et al., 2018): a learned relation module compares each query
    with each class's summed support embedding (see the module docstring).

    Args:
        model: the embedding network (default: Conv-4 features); a trailing Flatten is removed.
        loss, batched, batchnorm, batchnorm_tasks: as :class:`~metaphi.learners.ProtoNet`.
        objective: ``"mse"`` (the paper's) or ``"ce"``.
        hidden: filters of the relation module's convolutions.
        fc: units of its hidden fully connected layer.
        channels: channels of the embedding's maps (None: read from its last layer).

    :meth:`predict` returns the relation scores before the sigmoid (their argmax is the
    predicted class).
    """

    flat_embeddings = False

    def __init__(self, model: nn.Module | None = None, loss: str = "ce", objective: str = "mse",
                 hidden: int = 64, fc: int = 8, channels: int | None = None,
                 batched: bool | None = None, batchnorm: str = "episode",
                 batchnorm_tasks: int = 50) -> None:
        model = strip_flatten(model if model is not None else conv4_features())
        super().__init__(model, loss, batched, batchnorm, batchnorm_tasks)
        if objective not in ("mse", "ce"):
            raise ValueError(f"objective must be 'mse' or 'ce', got {objective!r}")
        self.objective_kind = objective
        if objective == "mse":
            self.loss_fn = relation_mse
        self.relation = RelationModule(channels or embedding_channels(model), hidden, fc)

    def _maps(self, z: Tensor) -> Tensor:
        # vectors (..., D) are D channels of 1 x 1 maps
        return z if z.dim() >= 5 else z[..., None, None]

    def fit_head(self, z_support: Tensor, onehot: Tensor, params: Params) -> Tensor:
        """Class representations ``(T, N, C, H, W)``: the sums of the support maps."""
        z = self._maps(z_support)
        return torch.einsum("tsn,tschw->tnchw", onehot, z)

    def head_logits(self, head: Tensor, z_query: Tensor, params: Params) -> Tensor:
        z = self._maps(z_query)
        t, q, n = z.shape[0], z.shape[1], head.shape[1]
        pairs = torch.cat([head.unsqueeze(1).expand(t, q, *head.shape[1:]),
                           z.unsqueeze(2).expand(t, q, n, *z.shape[2:])], dim=3)
        if pairs.shape[3] != self.relation.conv0.in_channels:
            raise ValueError(f"the embedding gives {pairs.shape[3] // 2}-channel maps, the "
                             f"relation module was built for {self.relation.conv0.in_channels // 2}"
                             "; pass channels= (learner.channels in a config)")
        rel = {n[len(PREFIX):]: p for n, p in params.items() if n.startswith(PREFIX)}
        rel = {**dict(self.relation.named_parameters()), **rel}
        return self.relation.scores(rel, pairs.flatten(1, 2)).view(t, q, n)

    def query_losses(self, logits: Tensor, y_q: Tensor) -> Tensor:
        if self.objective_kind == "ce":
            return super().query_losses(logits, y_q)
        target = F.one_hot(y_q.long(), logits.shape[-1]).to(logits.dtype)
        return (torch.sigmoid(logits) - target).pow(2).flatten(1).mean(1)
