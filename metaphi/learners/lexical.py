"""ProtoNet on text with the support-only TF-IDF classifier inside it.

On text, TF-IDF over character n-grams fit on a task's support set alone is a strong few-shot
classifier (:mod:`metaphi.baselines`), and an encoder trained from scratch on a few hundred
meta-training tasks often does worse than it on new languages or domains. This learner adds
the two: its query logits are ProtoNet's plus ``w * cos(tfidf(query), tfidf class centroid)``,
the baseline's nearest-centroid scores on the same task: sublinear term frequency ``1 + log
tf``, smooth IDF ``log((1 + S) / (1 + df)) + 1`` fit on the S support texts only (n-grams
absent from the support set dropped), L2 normalisation, each class's centroid the normalised
mean of its support vectors. The weight ``w`` (stored as its log) is meta-learned with the
embedding, so meta-training fits the embedding to what the TF-IDF scores get wrong:
meta-learning as a residual on a support-only baseline.

``analyzer``: ``"char_wb"`` or ``"char"`` decode the tasks' UTF-8 byte tokens
(``task.tokenizer: bytes``) and score with scikit-learn's ``TfidfVectorizer`` (lowercased
character n-grams, within word boundaries for ``char_wb``): exactly the baseline's scores.
``"tokens"`` scores n-grams of token ids (any tokenizer, e.g. a BPE vocabulary) with the same
vectoriser.

The TF-IDF part is a fixed function of the task (no gradient flows into it); φ is the
embedding network, ``log_tfidf_weight`` and ProtoNet's scale where it is learned.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from ..baselines import decode_rows, tfidf_centroid_cosines
from ..registry import register_learner
from ..tasks.text import BYTE_VOCAB, ByteTokenizer
from ..tasks.task import Task
from .functional import Params
from .metric import EpisodeSupport, ProtoNet, ProtoNetOptions

# TF-IDF of one task over token ids ----------------------------------------------------------
def _token_grams(x: Tensor, orders: tuple[int, ...]) -> list[list[str]]:
    """Each row's n-grams of token ids (pad 0 dropped), as strings, for every order."""
    rows = [[t for t in row if t != 0] for row in x.tolist()]
    return [[" ".join(map(str, r[i:i + n])) for n in orders for i in range(len(r) - n + 1)]
            for r in rows]


def _given(grams: list[str]) -> list[str]:
    """The vectoriser's analyzer: the n-grams are already made."""
    return grams


def tfidf_cosines(support_x: Tensor, support_y: Tensor, n_way: int, query_x: Tensor,
                  ngrams: tuple[int, ...] = (1, 2, 3, 4),
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """Cosine similarities ``(Q, N)`` of the queries' TF-IDF vectors to the centroids of the
    ``n_way`` classes (labels 0..N-1) of the support's, over n-grams of token ids: the
    baseline's vectoriser (:func:`metaphi.baselines.tfidf_centroid_cosines`), fit on the
    support set alone."""
    support, query = _token_grams(support_x, ngrams), _token_grams(query_x, ngrams)
    if not any(support):  # nothing to fit: every query is as far from every class
        return torch.zeros(len(query_x), n_way, dtype=dtype, device=query_x.device)
    cos = tfidf_centroid_cosines(support, support_y.cpu().numpy(), query, (1, 1), _given)
    return torch.from_numpy(cos).to(dtype=dtype, device=query_x.device)


# the learner -------------------------------------------------------------------------------
class ProtoNetTfidfOptions(ProtoNetOptions):
    name: str = "protonet_tfidf"
    tfidf_weight: float = Field(10.0, gt=0, description="initial weight of the TF-IDF cosine "
                                "scores in the logits (meta-learned, as its log)")
    analyzer: Literal["char_wb", "char", "tokens"] = Field(
        "char_wb", description="TF-IDF features: character n-grams of the decoded UTF-8 byte "
        "tokens (char_wb: within words, as the baseline), or n-grams of token ids (tokens: any "
        "tokenizer)")
    ngram_range: tuple[int, int] = Field((1, 4), description="smallest and largest n-gram order")

    @field_validator("ngram_range")
    @classmethod
    def _orders(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1]:
            raise ValueError(f"ngram_range must be [low, high] with 1 <= low <= high, got {v}")
        return v


@register_learner("protonet_tfidf", options=ProtoNetTfidfOptions, model="embedding",
                  kinds=("classification",))
class ProtoNetTfidf(ProtoNet):
    """Prototypical Networks (Snell et al., 2017) plus a meta-learned multiple of a
    support-only TF-IDF nearest-centroid classifier's cosine scores, for text (token-id)
    tasks; see the module docstring.

    Args:
        model, loss, distance, scale, learn_scale, batched, batchnorm, batchnorm_tasks: as
            :class:`~metaphi.learners.ProtoNet`.
        tfidf_weight: initial weight ``w`` of the TF-IDF scores (meta-learned).
        analyzer: ``"char_wb"``, ``"char"`` (UTF-8 byte tokens, scikit-learn) or ``"tokens"``.
        ngram_range: smallest and largest n-gram order.
    """

    def __init__(self, model: nn.Module | None = None, loss: str = "ce",
                 distance: str = "sqeuclidean", scale: float | None = None,
                 learn_scale: bool | None = None, tfidf_weight: float = 10.0,
                 analyzer: str = "char_wb", ngram_range: tuple[int, int] = (1, 4),
                 batched: bool | None = None, batchnorm: str = "episode",
                 batchnorm_tasks: int = 50) -> None:
        super().__init__(model, loss, distance, scale, learn_scale, batched, batchnorm,
                         batchnorm_tasks)
        if not tfidf_weight > 0:
            raise ValueError(f"tfidf_weight must be > 0, got {tfidf_weight}")
        if analyzer not in ("char_wb", "char", "tokens"):
            raise ValueError(f"analyzer must be 'char_wb', 'char' or 'tokens', got {analyzer!r}")
        lo, hi = (int(n) for n in ngram_range)
        if not 1 <= lo <= hi:
            raise ValueError(f"ngram_range must be (low, high) with 1 <= low <= high, got "
                             f"{tuple(ngram_range)}")
        self.analyzer, self.ngram_range = analyzer, (lo, hi)
        self.log_tfidf_weight = nn.Parameter(torch.tensor(math.log(tfidf_weight)))

    def cosines(self, support_x: Tensor, support_y: Tensor, n_way: int, x: Tensor) -> Tensor:
        """The TF-IDF nearest-centroid cosines ``(Q, N)`` of inputs ``x`` (float64)."""
        for name, t in (("support", support_x), ("query", x)):
            if t.is_floating_point() or t.ndim != 2:
                raise ValueError(
                    f"protonet_tfidf computes TF-IDF over token ids: the {name} inputs must be "
                    f"integer token ids of shape (texts, length) with pad id 0 (a text task "
                    f"source), got {t.dtype} of shape {tuple(t.shape)}; for images use protonet")
        if self.analyzer == "tokens":
            orders = tuple(range(self.ngram_range[0], self.ngram_range[1] + 1))
            return tfidf_cosines(support_x, support_y, n_way, x, orders, torch.float64)
        if max(int(support_x.max()), int(x.max())) >= BYTE_VOCAB:
            raise ValueError(
                f"protonet_tfidf with analyzer {self.analyzer!r} decodes UTF-8 byte tokens "
                f"(task.tokenizer: bytes), but the task has token ids >= {BYTE_VOCAB}; for "
                "another tokenizer (e.g. bpe) set learner.analyzer: tokens")
        decode = ByteTokenizer().decode
        cos = tfidf_centroid_cosines(decode_rows(support_x.cpu(), decode),
                                     support_y.cpu().numpy(), decode_rows(x.cpu(), decode),
                                     self.ngram_range, self.analyzer)
        return torch.from_numpy(cos).to(dtype=torch.float64, device=x.device)

    def tfidf_logits(self, support_x: Tensor, support_y: Tensor, n_way: int, x: Tensor,
                     params: Params) -> Tensor:
        """``w * cosines``: the TF-IDF part of the logits of inputs ``x``."""
        w = params.get("log_tfidf_weight", self.log_tfidf_weight).exp()
        return w * self.cosines(support_x, support_y, n_way, x).to(w.dtype)

    def predict(self, adapted: EpisodeSupport, x: Tensor) -> Tensor:
        return super().predict(adapted, x) + self.tfidf_logits(
            adapted.support_x, adapted.support_y, adapted.n_way, x, adapted.params)

    def batched_logits(self, tasks: list[Task], params: Params, n_way: int,
                       running: bool = False) -> Tensor:
        lexical = torch.stack([self.tfidf_logits(t.support_x, t.support_y, n_way, t.query_x,
                                                 params) for t in tasks])
        return super().batched_logits(tasks, params, n_way, running) + lexical
