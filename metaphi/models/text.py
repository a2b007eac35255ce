"""Text encoders trained from scratch: they take padded token ids ``(B, L)`` (pad id 0, the
mask is ``x != 0``) and return one embedding per text ``(B, D)``.

No pretrained weights can be fetched in metaphi's environment (no network beyond package
registries), so every encoder starts from random weights and learns only from meta-training.

- ``ngram_bag``: a fastText-style bag of hashed token n-grams (Joulin et al. 2017). Every
  n-gram of ``ngrams`` consecutive tokens (bytes: character n-grams across word boundaries) is
  hashed into one of ``buckets`` embeddings; the text's embedding is their mean. Hashing needs
  no vocabulary, so n-grams of scripts never seen in meta-training still get (untrained)
  embeddings. Cheap, and strong for topic and language identity.
- ``byte_cnn``: token embeddings, parallel 1-D convolutions of several widths, ReLU and a
  max-pool over positions (Kim 2014; Zhang et al. 2015 for characters).
- ``text_transformer``: a small pre-LayerNorm transformer encoder with learned positions and
  a masked mean-pool (over bytes or a BPE vocabulary learned on meta-train text).

All three are plain differentiable PyTorch (no fused kernels), so every learner works with
them: ProtoNet, Matching Networks and R2-D2 embed with them, and the MAML family adapts their
weights (or, for ANIL, the head on top) with second-order gradients.
"""
from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ..registry import Options, register_backbone
from .backbones import Classifier

if TYPE_CHECKING:
    from ..tasks.sources import TaskInfo

# torch.func.vmap (the metric learners' batched path) runs embedding_bag by a per-item loop,
# correct but with a warning on every call
warnings.filterwarnings("ignore", message=r".*batching rule for aten::_?embedding_bag")

_PRIME = 2_147_483_647  # 2^31 - 1: the rolling hash stays below 2^62 in int64
_MULT = 1_000_003


def ngram_buckets(x: Tensor, n: int, buckets: int) -> tuple[Tensor, Tensor]:
    """Bucket ids ``(B, L-n+1)`` of every n-gram of token ids ``x`` (B, L) and whether it is
    real (no pad inside). A polynomial rolling hash, offset by ``n`` so that orders differ."""
    length = x.shape[-1] - n + 1
    if length < 1:
        return x.new_zeros(x.shape[:-1] + (0,)), x.new_zeros(x.shape[:-1] + (0,), dtype=torch.bool)
    h = torch.full_like(x[..., :length], n)
    valid = torch.ones_like(h, dtype=torch.bool)
    for j in range(n):
        tok = x[..., j:j + length]
        h = (h * _MULT + tok) % _PRIME
        valid = valid & (tok != 0)
    return (h * 2654435761 + n) % buckets, valid


class _WeightedBag(torch.autograd.Function):
    """``sum_g per[i, g] * weight[ids[i, g]]`` for each row i, by ``embedding_bag`` (no
    ``(N, G, D)`` tensor). The first backward is embedding_bag's own; under ``create_graph``
    (second-order MAML) the gradient is built from differentiable ops instead, since PyTorch
    has no derivative of embedding_bag's backward."""

    generate_vmap_rule = True

    @staticmethod
    def forward(weight: Tensor, ids: Tensor, per: Tensor) -> Tensor:
        return F.embedding_bag(ids, weight, mode="sum", per_sample_weights=per)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        weight, ids, per = inputs
        ctx.save_for_backward(weight, ids, per)

    @staticmethod
    def backward(ctx, g: Tensor):
        weight, ids, per = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a gradient that can be differentiated
            rows = (g.unsqueeze(-2) * per.unsqueeze(-1)).reshape(-1, g.shape[-1])
            grad = g.new_zeros(weight.shape).index_add(0, ids.reshape(-1), rows)
            return grad, None, None
        # embedding_bag's own backward, through torch.func.vjp so that it composes with vmap
        _, pullback = torch.func.vjp(
            lambda w: F.embedding_bag(ids, w, mode="sum", per_sample_weights=per), weight)
        return pullback(g)[0], None, None


def hashed_counts(ids: Tensor, mask: Tensor, dim: int) -> Tensor:
    """The hashing trick (Weinberger et al. 2009): n-gram counts folded into ``dim`` signed
    features (bucket ``h % dim``, sign from the hash's next bit), log-scaled (``sign * log(1 +
    |v|)``, like TF-IDF's sublinear term frequency) and L2-normalised. Not learned: two texts
    that share n-grams are close in it whatever their language or script."""
    sign = ((ids // dim) % 2) * 2 - 1
    v = torch.zeros(ids.shape[:-1] + (dim,), dtype=mask.dtype, device=ids.device)
    v = v.scatter_add(-1, ids % dim, mask * sign.to(mask.dtype))
    return F.normalize(v.sign() * torch.log1p(v.abs()), dim=-1)


class NGramBag(nn.Module):
    """Mean embedding of a text's hashed token n-grams (see the module docstring), optionally
    beside its hashed n-gram counts (``lexical`` features, :func:`hashed_counts`, weighted by a
    meta-learned scale): the learned part carries what meta-training taught, the lexical part
    the plain overlap of n-grams with the support texts, which still works for a script never
    seen in meta-training. ``center`` adds a BatchNorm without affine parameters: the metric
    and MAML-family learners normalise it with each episode's own statistics, which removes
    what all texts of the episode share (its language) and keeps what tells them apart."""

    def __init__(self, buckets: int = 131072, dim: int = 64,
                 ngrams: tuple[int, ...] = (1, 2, 3, 4, 5), normalize: bool = True,
                 lexical: int = 0, center: bool = False) -> None:
        super().__init__()
        self.lexical = int(lexical)
        if self.lexical:
            self.lexical_scale = nn.Parameter(torch.tensor(1.0))
        out = dim + self.lexical
        self.center = nn.BatchNorm1d(out, affine=False) if center else nn.Identity()
        self.buckets, self.ngrams = int(buckets), tuple(int(n) for n in ngrams)
        self.embedding = nn.Embedding(self.buckets, dim)
        nn.init.normal_(self.embedding.weight, std=dim ** -0.5)
        # The mean of many n-gram embeddings is small and shrinks with the text's length; a
        # LayerNorm (no learned affine) gives every text an embedding of the same scale.
        self.norm = nn.LayerNorm(dim, elementwise_affine=False) if normalize else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        ids, masks = zip(*(ngram_buckets(x, n, self.buckets) for n in self.ngrams))
        ids_t, mask = torch.cat(ids, -1), torch.cat(masks, -1).to(self.embedding.weight.dtype)
        weights = mask / mask.sum(-1, keepdim=True).clamp_min(1.0)  # a mean over real n-grams
        lead = ids_t.shape[:-1]
        # embedding_bag sums without materialising a (B, G, D) tensor: several times faster
        out = _WeightedBag.apply(self.embedding.weight, ids_t.reshape(-1, ids_t.shape[-1]),
                                 weights.reshape(-1, ids_t.shape[-1]))
        out = self.norm(out.reshape(*lead, -1))
        if self.lexical:
            lex = hashed_counts(ids_t, mask, self.lexical) * self.lexical_scale
            out = torch.cat([out, lex * out.shape[-1] ** 0.5], -1)
        return self.center(out)


class TokenCNN(nn.Module):
    """Token embeddings, parallel 1-D convolutions (one per kernel width), ReLU, masked
    max-pool over positions, concatenated."""

    def __init__(self, vocab: int, emb: int = 32, width: int = 128,
                 kernels: tuple[int, ...] = (3, 5, 7)) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(emb, width, k, padding=k // 2) for k in kernels)

    def forward(self, x: Tensor) -> Tensor:
        mask = (x != 0).unsqueeze(1)  # (B, 1, L)
        h = self.embedding(x).transpose(1, 2)  # (B, E, L)
        outs = []
        for conv in self.convs:
            c = F.relu(conv(h))[..., :x.shape[-1]]
            # ReLU outputs are >= 0, so zeroing the pad positions masks them out of the max
            outs.append((c * mask).amax(-1))
        return torch.cat(outs, -1)


class Block(nn.Module):
    """One pre-LayerNorm transformer layer with attention written out (plain ops: double
    backward for second-order MAML, and ``torch.func`` transforms, work)."""

    def __init__(self, dim: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"model.dim ({dim}) must be a multiple of model.heads ({heads})")
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ff1, self.ff2 = nn.Linear(dim, ff), nn.Linear(ff, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor, bias: Tensor) -> Tensor:
        b, length, d = h.shape
        q, k, v = self.qkv(self.ln1(h)).view(b, length, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, d_h)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.heads) + bias
        a = self.drop(att.softmax(-1)) @ v
        h = h + self.drop(self.out(a.transpose(1, 2).reshape(b, length, d)))
        return h + self.drop(self.ff2(self.drop(F.gelu(self.ff1(self.ln2(h))))))


class TextTransformer(nn.Module):
    """Token and position embeddings, ``layers`` transformer blocks, a final LayerNorm and a
    mean-pool over the real (non-pad) positions."""

    def __init__(self, vocab: int, max_len: int, dim: int = 128, layers: int = 2, heads: int = 4,
                 ff: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim, padding_idx=0)
        self.position = nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, ff, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        length = min(x.shape[-1], self.position.num_embeddings)
        x = x[..., :length]
        mask = x != 0
        pos = torch.arange(length, device=x.device)
        h = self.embedding(x) + self.position(pos)
        # a large negative bias (not -inf) keeps an all-pad row finite
        bias = (~mask)[:, None, None, :].to(h.dtype) * -1e9
        for block in self.blocks:
            h = block(h, bias)
        m = mask.unsqueeze(-1).to(h.dtype)
        return (self.ln(h) * m).sum(1) / m.sum(1).clamp_min(1.0)


def _with_projection(features: nn.Module, in_dim: int, hidden: list[int]) -> tuple[nn.Module, int]:
    if not hidden:
        return features, in_dim
    layers: list[nn.Module] = [features]
    for h in hidden:
        layers += [nn.Linear(in_dim, h), nn.ReLU()]
        in_dim = h
    return nn.Sequential(*layers), in_dim


def _finish(features: nn.Module, dim: int, out_dim: int | None) -> nn.Module:
    return features if out_dim is None else Classifier(features, nn.Linear(dim, out_dim))


def _vocab(info: "TaskInfo") -> int:
    if info.vocab_size is None:
        raise ValueError("text encoders need the task source's vocab_size (TaskInfo.vocab_size)")
    return int(info.vocab_size)


# -- registered backbones -------------------------------------------------------------------
class NGramBagOptions(Options):
    """``model:`` options of the hashed n-gram bag (token inputs)."""

    name: str = "ngram_bag"
    dim: int = Field(64, ge=1, description="embedding size")
    buckets: int = Field(131072, ge=16, description="hash buckets (embeddings) shared by all "
                         "n-grams")
    ngrams: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5], min_length=1,
                              description="n-gram orders, in tokens (bytes or subwords)")
    normalize: bool = Field(True, description="LayerNorm (no affine) on the mean embedding")
    lexical: int = Field(0, ge=0, description="dimensions of hashed n-gram counts beside the "
                         "learned embedding (0: none)")
    center: bool = Field(False, description="BatchNorm without affine on the output (episode "
                         "statistics under the metric and MAML-family learners)")
    hidden: list[int] = Field(default_factory=list, description="Linear+ReLU layers on top")


@register_backbone("ngram_bag", options=NGramBagOptions, inputs=("tokens",))
def build_ngram_bag(o: NGramBagOptions, info: "TaskInfo", out_dim: int | None) -> nn.Module:
    if any(n < 1 for n in o.ngrams):
        raise ValueError(f"model.ngrams: orders must be >= 1, got {o.ngrams}")
    bag = NGramBag(o.buckets, o.dim, tuple(o.ngrams), o.normalize, o.lexical, o.center)
    feats, dim = _with_projection(bag, o.dim + o.lexical, o.hidden)
    return _finish(feats, dim, out_dim)


class TokenCNNOptions(Options):
    """``model:`` options of the byte (token) CNN."""

    name: str = "byte_cnn"
    emb: int = Field(32, ge=1, description="token embedding size")
    width: int = Field(128, ge=1, description="filters per kernel width")
    kernels: list[int] = Field(default_factory=lambda: [3, 5, 7], min_length=1,
                               description="kernel widths, in tokens")
    hidden: list[int] = Field(default_factory=list, description="Linear+ReLU layers on top")


@register_backbone("byte_cnn", options=TokenCNNOptions, inputs=("tokens",))
def build_byte_cnn(o: TokenCNNOptions, info: "TaskInfo", out_dim: int | None) -> nn.Module:
    cnn = TokenCNN(_vocab(info), o.emb, o.width, tuple(o.kernels))
    feats, dim = _with_projection(cnn, o.width * len(o.kernels), o.hidden)
    return _finish(feats, dim, out_dim)


class TextTransformerOptions(Options):
    """``model:`` options of the small transformer encoder."""

    name: str = "text_transformer"
    dim: int = Field(128, ge=8, description="model width")
    layers: int = Field(2, ge=1, description="transformer blocks")
    heads: int = Field(4, ge=1, description="attention heads (dim must be a multiple)")
    ff: int = Field(256, ge=1, description="feed-forward width")
    dropout: float = Field(0.1, ge=0, lt=1)


@register_backbone("text_transformer", options=TextTransformerOptions, inputs=("tokens",))
def build_text_transformer(o: TextTransformerOptions, info: "TaskInfo",
                           out_dim: int | None) -> nn.Module:
    if o.dim % o.heads:
        raise ValueError(f"model.dim ({o.dim}) must be a multiple of model.heads ({o.heads})")
    enc = TextTransformer(_vocab(info), int(info.input_shape[-1]), o.dim, o.layers, o.heads,
                          o.ff, o.dropout)
    return _finish(enc, o.dim, out_dim)
