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

``weight_per_task: support_loo`` sets the weight per task at meta-test: meta-training fits
``w`` on the meta-train domains, where the embedding is at its best, so on a new language or
domain the learned ``w`` can trust the embedding too much. With two or more shots per class,
the support set can say how far to trust it: every support example is classified with its
own class's prototype and TF-IDF centroid left out, and the multiple of ``w`` (0, or 1/8 to 64
by factors of 2) with the lowest leave-one-out cross-entropy, at its best temperature, is the
task's. One-shot tasks, and meta-training, keep the meta-learned ``w``.
"""
from __future__ import annotations

import math
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from ..baselines import decode_rows, tfidf_centroid_cosines, tfidf_loo_cosines
from ..registry import register_learner
from ..tasks.text import BYTE_VOCAB, ByteTokenizer
from ..tasks.task import Task
from .base import Learner
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
    weight_per_task: Literal["meta", "support_loo"] = Field(
        "meta", description="meta-test weight of the TF-IDF scores: the meta-learned one, or a "
        "multiple of it chosen per task by leave-one-out on the support set (two or more shots)")

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
        weight_per_task: ``"meta"`` (the meta-learned ``w``) or ``"support_loo"`` (at
            meta-test, a multiple of it chosen per task on the support set; module docstring).
    """

    def __init__(self, model: nn.Module | None = None, loss: str = "ce",
                 distance: str = "sqeuclidean", scale: float | None = None,
                 learn_scale: bool | None = None, tfidf_weight: float = 10.0,
                 analyzer: str = "char_wb", ngram_range: tuple[int, int] = (1, 4),
                 weight_per_task: str = "meta", batched: bool | None = None,
                 batchnorm: str = "episode", batchnorm_tasks: int = 50) -> None:
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
        if weight_per_task not in ("meta", "support_loo"):
            raise ValueError(f"weight_per_task must be 'meta' or 'support_loo', got "
                             f"{weight_per_task!r}")
        self.analyzer, self.ngram_range = analyzer, (lo, hi)
        self.weight_per_task = weight_per_task
        self.log_tfidf_weight = nn.Parameter(torch.tensor(math.log(tfidf_weight)))

    def vectoriser_inputs(self, support_x: Tensor, x: Tensor
                          ) -> tuple[list, list, tuple[int, int], str | Callable]:
        """The support rows and the rows of ``x`` as the TF-IDF vectoriser takes them (texts,
        or lists of token-id n-grams), with its n-gram range and analyzer."""
        for name, t in (("support", support_x), ("query", x)):
            if t.is_floating_point() or t.ndim != 2:
                raise ValueError(
                    f"protonet_tfidf computes TF-IDF over token ids: the {name} inputs must be "
                    f"integer token ids of shape (texts, length) with pad id 0 (a text task "
                    f"source), got {t.dtype} of shape {tuple(t.shape)}; for images use protonet")
        if self.analyzer == "tokens":
            orders = tuple(range(self.ngram_range[0], self.ngram_range[1] + 1))
            return _token_grams(support_x, orders), _token_grams(x, orders), (1, 1), _given
        if max(int(t.max()) for t in (support_x, x) if t.numel()) >= BYTE_VOCAB:
            raise ValueError(
                f"protonet_tfidf with analyzer {self.analyzer!r} decodes UTF-8 byte tokens "
                f"(task.tokenizer: bytes), but the task has token ids >= {BYTE_VOCAB}; for "
                "another tokenizer (e.g. bpe) set learner.analyzer: tokens")
        decode = ByteTokenizer().decode
        return (decode_rows(support_x.cpu(), decode), decode_rows(x.cpu(), decode),
                self.ngram_range, self.analyzer)

    def cosines(self, support_x: Tensor, support_y: Tensor, n_way: int, x: Tensor) -> Tensor:
        """The TF-IDF nearest-centroid cosines ``(Q, N)`` of inputs ``x`` (float64): the
        baseline's scores (:func:`metaphi.baselines.tfidf_centroid_cosines`), the vectoriser
        fit on the support set alone."""
        support, rows, ngrams, analyzer = self.vectoriser_inputs(support_x, x)
        if not any(support):  # nothing to fit: every input is as far from every class
            return torch.zeros(len(x), n_way, dtype=torch.float64, device=x.device)
        cos = tfidf_centroid_cosines(support, support_y.cpu().numpy(), rows, ngrams, analyzer)
        return torch.from_numpy(cos).to(dtype=torch.float64, device=x.device)

    def log_weight(self, params: Params) -> Tensor:
        """``log w`` in ``params`` (φ or an adapted task's), else the learner's own."""
        return params.get("log_tfidf_weight", self.log_tfidf_weight)

    def tfidf_logits(self, support_x: Tensor, support_y: Tensor, n_way: int, x: Tensor,
                     params: Params) -> Tensor:
        """``w * cosines``: the TF-IDF part of the logits of inputs ``x``."""
        w = self.log_weight(params).exp()
        return w * self.cosines(support_x, support_y, n_way, x).to(w.dtype)

    def adapt(self, support_x: Tensor, support_y: Tensor, params: Params | None = None, *,
              create_graph: bool | None = None, steps: int | None = None) -> EpisodeSupport:
        adapted = super().adapt(support_x, support_y, params, create_graph=create_graph,
                                steps=steps)
        if self.weight_per_task == "support_loo" and not self.training:
            factor = self.loo_factor(adapted)
            if factor is not None:
                log_w = self.log_weight(adapted.params)
                adapted.params = {**adapted.params,
                                  "log_tfidf_weight": log_w + math.log(factor) if factor > 0
                                  else torch.full_like(log_w, -math.inf)}
        return adapted

    @torch.no_grad()
    def loo_factor(self, adapted: EpisodeSupport) -> float | None:
        """The multiple of ``w`` (0, or 1/8 to 64) with the lowest leave-one-out cross-entropy
        on the support set, each at its best temperature (1/8 to 8); None when a class has
        fewer than two shots. An embedding with episode BatchNorm statistics embeds the
        support set alone here."""
        y, n_way, p = adapted.support_y.long(), adapted.n_way, adapted.params
        counts = torch.bincount(y, minlength=n_way)
        if int(counts.min()) < 2:
            return None
        # ProtoNet's part: each support example against prototypes without it
        z = self.embed(p, adapted.support_x, adapted.running)
        sums = F.one_hot(y, n_way).to(z.dtype).T @ z
        heads = (sums / counts[:, None]).expand(len(z), -1, -1).clone()
        heads[torch.arange(len(z)), y] = (sums[y] - z) / (counts[y] - 1)[:, None]
        proto = self.head_logits(heads, z[:, None], p)[:, 0].double()
        # TF-IDF's part: each support text against centroids without it
        support, _, ngrams, analyzer = self.vectoriser_inputs(adapted.support_x,
                                                              adapted.support_x[:0])
        if not any(support):
            return None
        lex = torch.from_numpy(tfidf_loo_cosines(support, y.cpu().numpy(), ngrams, analyzer))
        lex = lex.to(proto) * float(self.log_weight(p).exp())
        factors = [0.0] + [2.0 ** k for k in range(-3, 7)]
        temps = torch.tensor([2.0 ** k for k in range(-3, 4)], dtype=proto.dtype)
        nll = [min(float(F.cross_entropy(t * (proto + f * lex), y)) for t in temps)
               for f in factors]
        return factors[min(range(len(factors)), key=nll.__getitem__)]

    def eval_episodes(self, tasks: list[Task]) -> tuple[Tensor, Tensor]:
        if self.weight_per_task == "support_loo":  # per task: each task gets its own weight
            return Learner.eval_episodes(self, tasks)
        return super().eval_episodes(tasks)

    def predict(self, adapted: EpisodeSupport, x: Tensor) -> Tensor:
        return super().predict(adapted, x) + self.tfidf_logits(
            adapted.support_x, adapted.support_y, adapted.n_way, x, adapted.params)

    def batched_logits(self, tasks: list[Task], params: Params, n_way: int,
                       running: bool = False) -> Tensor:
        lexical = torch.stack([self.tfidf_logits(t.support_x, t.support_y, n_way, t.query_x,
                                                 params) for t in tasks])
        return super().batched_logits(tasks, params, n_way, running) + lexical
