"""Metric-based learners: Prototypical Networks and Matching Networks.

φ is the embedding network's parameters (names prefixed ``model.``), plus a learnable scale
where the method has one. Adapting to a task is not an optimisation: the support set is
embedded and a non-parametric head (class prototypes, attention over the support set) is
built from it.

BatchNorm has two modes (``batchnorm=``). ``"episode"`` (default): the support and query
images of an episode are embedded together in one batch, so every BatchNorm layer normalises
with the statistics of that episode's support+query images, at meta-train and meta-test time,
never with statistics of other tasks (:func:`~metaphi.learners.functional.transductive_batchnorm`).
Consequently :meth:`EmbeddingLearner.predict` embeds the support set together with the inputs
it is asked about, and a prediction depends on the other inputs of the batch.
``"running"``: meta-training is the same, but in evaluation mode (``learner.eval()``:
meta-validation, meta-test, prediction) BatchNorm normalises with running statistics that
:meth:`EmbeddingLearner.fit_batchnorm` estimates for the final φ from meta-train episodes (the
mean of their batch means and unbiased variances), so every input is embedded on its own. This
is how the Prototypical Networks reference code evaluates (``model.eval()``: running statistics
kept during meta-training). ``"support"``: in evaluation mode each episode normalises with the
statistics of its support set alone (inductive, and re-estimated on every target task: an
option under domain shift, where statistics of the meta-train domain can be badly wrong).
For an embedding without BatchNorm, or with running or support statistics, the head is built
once in :meth:`~EmbeddingLearner.adapt` and reused.

All heads are written with a leading task dimension, so one code path serves a single task
(task dimension 1) and the batched fast path of :meth:`EmbeddingLearner.meta_grads`, which
embeds all tasks of a meta-batch in one call (``torch.func.vmap`` over tasks keeps per-task
BatchNorm statistics) and builds all heads with batched matrix products.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.func import vmap

from ..models import conv4_features
from ..registry import Options, register_learner
from ..tasks.sources import TaskSource, fixed_tasks
from ..tasks.task import Task
from . import batched
from .base import Adapted, Learner, eval_mode, train_mode
from .functional import Params, forward, transductive_batchnorm

Head = Any


def check_support_labels(support_x: Tensor, support_y: Tensor) -> int:
    """Validate a support set's labels (0..N-1, every class present); return N."""
    if support_y.ndim != 1:
        raise ValueError(f"support_y must be 1-D (one class label per support example), got "
                         f"shape {tuple(support_y.shape)}")
    if support_y.is_floating_point() or support_y.is_complex() or support_y.dtype == torch.bool:
        raise ValueError(f"support_y must hold integer class labels, got dtype {support_y.dtype}")
    if len(support_y) != len(support_x):
        raise ValueError(f"support set has {len(support_x)} inputs but {len(support_y)} labels; "
                         "give one label per support example")
    if len(support_y) == 0:
        raise ValueError("the support set is empty; give at least one example per class")
    low = int(support_y.min())
    if low < 0:
        raise ValueError(f"support labels must be 0..N-1, got a negative label {low}")
    n_way = int(support_y.max()) + 1
    counts = torch.bincount(support_y.long(), minlength=n_way)
    missing = torch.nonzero(counts == 0).flatten().tolist()
    if missing:
        raise ValueError(
            f"support labels must be 0..N-1 with at least one example of every class; labels go "
            f"up to {n_way - 1} but class(es) {missing[:10]} have no support example. Relabel the "
            "task's classes to 0..N-1 (FewShotSource does this) or add the missing examples")
    return n_way


def check_query_labels(query_y: Tensor, n_way: int) -> None:
    if query_y.numel() and (int(query_y.min()) < 0 or int(query_y.max()) >= n_way):
        raise ValueError(f"query labels must be in 0..{n_way - 1} (the support set has {n_way} "
                         f"classes), got labels in {int(query_y.min())}..{int(query_y.max())}")


@dataclass(eq=False)
class EpisodeSupport(Adapted):
    """What :meth:`EmbeddingLearner.adapt` returns (call it on query inputs): φ and the support
    set, plus the head when it can be built without the query inputs (an embedding without
    BatchNorm, or with running statistics)."""

    support_x: Tensor | None = None
    support_y: Tensor | None = None
    n_way: int = 0
    head: Head | None = None
    # BatchNorm with the learner's running statistics (True) or with these ones (support mode)
    running: bool | dict[str, Tensor] = False


class EmbeddingOptions(Options):
    """Options shared by the learners that embed a task and build a head from the support set."""

    name: str
    batched: bool | None = Field(
        None, description="embed a meta-batch of equally shaped tasks in one call (None: where "
        "it is the faster path)")
    batchnorm: Literal["episode", "running", "support"] = Field(
        "episode", description="BatchNorm statistics in evaluation mode: the episode's own, "
        "running statistics estimated on meta-train episodes, or the support set's own")
    batchnorm_tasks: int = Field(50, ge=1, description="batchnorm=running: meta-train episodes "
                                 "for the estimate")


class EmbeddingLearner(Learner):
    """Base for learners that embed a task's inputs and classify the query with a closed-form
    head built from the support embeddings. Subclasses implement :meth:`fit_head` and
    :meth:`head_logits` with a leading task dimension.

    ``batched`` switches the fast path of :meth:`meta_grads` on meta-batches of equally shaped
    tasks (it gives the same results as the per-task loop). It pays off where per-operation
    overhead dominates (small embeddings; many small kernels on an accelerator); for a
    compute-bound embedding on CPU (Conv-4 on 28x28 images) one big batch is slower than the
    loop, because the per-task activations fit in cache and the meta-batch's do not. ``None``
    (default) picks the faster path (:func:`metaphi.learners.batched.auto`).
    A model with dropout draws different masks on the two paths (vmap's ``randomness="different"``).
    """

    # embeddings are flattened to vectors (D,); False keeps the network's output shape (feature
    # maps for a relation module)
    flat_embeddings = True

    def __init__(self, model: nn.Module | None = None, loss: str = "ce",
                 batched: bool | None = None, batchnorm: str = "episode",
                 batchnorm_tasks: int = 50) -> None:
        if loss != "ce":
            raise ValueError(f"{type(self).__name__} is a classifier: loss must be 'ce', got "
                             f"{loss!r}")
        if batchnorm not in BATCHNORM_MODES:
            raise ValueError(f"batchnorm must be one of {BATCHNORM_MODES}, got {batchnorm!r}")
        if int(batchnorm_tasks) < 1:
            raise ValueError(f"batchnorm_tasks must be >= 1, got {batchnorm_tasks}")
        super().__init__(loss)
        self.model = transductive_batchnorm(model if model is not None else conv4_features())
        self.batched = batched
        self._bn_layers = [n for n, m in self.model.named_modules()
                           if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.batchnorm = batchnorm if self._bn_layers else "episode"
        self.batchnorm_tasks = int(batchnorm_tasks)
        if self.batchnorm == "running":
            # buffers, not parameters: they are saved with φ but are not meta-learned
            self.bn_stats = nn.Module()
            for n in self._bn_layers:
                bn = self.model.get_submodule(n)
                like = next(iter(bn.parameters()), torch.zeros(()))  # dtype and device
                c = bn.num_features
                self.bn_stats.register_buffer(_key(n, "mean"), like.new_zeros(c))
                self.bn_stats.register_buffer(_key(n, "var"), like.new_ones(c))
            self.bn_stats.register_buffer("fitted", torch.tensor(False))

    # running BatchNorm statistics -------------------------------------------------------------
    def uses_running(self) -> bool:
        """Whether evaluation mode uses running BatchNorm statistics; a clear error if it
        should but they have not been estimated yet."""
        if self.batchnorm != "running":
            return False
        if not bool(self.bn_stats.fitted):
            raise RuntimeError(
                f"{type(self).__name__}(batchnorm='running') has no running statistics yet: "
                "call learner.fit_batchnorm(meta_train_tasks) after meta-training "
                "(`metaphi train` does this), or use batchnorm='episode'")
        return True

    @torch.no_grad()
    def fit_batchnorm(self, tasks: Iterable[Task], params: Params | None = None) -> int:
        """Estimate every BatchNorm layer's running mean and variance for φ (``params``,
        default the learner's own) as the mean over ``tasks`` of the batch mean and unbiased
        batch variance of its input when the task's support+query inputs are embedded together
        (what meta-training normalised with; PyTorch's running statistics with
        ``momentum=None``). Returns the number of tasks used."""
        if self.batchnorm != "running":
            raise ValueError("fit_batchnorm needs batchnorm='running' (this learner uses "
                             "episode statistics, which need no estimate)")
        sums: dict[str, list[Tensor]] = {}

        def hook(name: str):
            def record(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
                x = inputs[0]
                dims = [0] + list(range(2, x.ndim))
                mean, var = x.mean(dims), x.var(dims, unbiased=True)
                if name in sums:
                    sums[name][0] += mean
                    sums[name][1] += var
                else:
                    sums[name] = [mean.clone(), var.clone()]
            return record

        handles = [self.model.get_submodule(n).register_forward_pre_hook(hook(n))
                   for n in self._bn_layers]
        mp = self.model_params(self.meta_params() if params is None else params)
        device = next(iter(mp.values())).device
        n = 0
        try:
            for t in tasks:
                t = t.to(device)
                forward(self.model, mp, torch.cat([t.support_x, t.query_x]))
                n += 1
        finally:
            for h in handles:
                h.remove()
        if n == 0:
            raise ValueError("fit_batchnorm got no tasks; pass meta-train tasks")
        for name, (mean, var) in sums.items():
            getattr(self.bn_stats, _key(name, "mean")).copy_(mean / n)
            getattr(self.bn_stats, _key(name, "var")).copy_(var / n)
        self.bn_stats.fitted.fill_(True)
        return n

    def prepare_eval(self, source: TaskSource, seed: int) -> None:
        if self.batchnorm == "running":
            self.fit_batchnorm(fixed_tasks(source, seed, "batchnorm", self.batchnorm_tasks))

    @torch.no_grad()
    def support_statistics(self, params: Params, x: Tensor) -> dict[str, Tensor]:
        """Every BatchNorm layer's statistics when ``x`` (a support set) is embedded alone (the
        mean and biased variance it normalises with), as running-statistics buffers."""
        stats: dict[str, Tensor] = {}

        def hook(name: str):
            def record(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
                x = inputs[0]
                dims = [0] + list(range(2, x.ndim))
                stats[f"{name}.running_mean"] = x.mean(dims)
                stats[f"{name}.running_var"] = x.var(dims, unbiased=False)
            return record

        handles = [self.model.get_submodule(n).register_forward_pre_hook(hook(n))
                   for n in self._bn_layers]
        try:
            forward(self.model, self.model_params(params), x)
        finally:
            for h in handles:
                h.remove()
        return stats

    def _running_buffers(self) -> dict[str, Tensor]:
        return {f"{n}.{stat}": getattr(self.bn_stats, _key(n, s))
                for n in self._bn_layers for stat, s in (("running_mean", "mean"),
                                                          ("running_var", "var"))}

    # heads (task dimension first) ----------------------------------------------------------
    def fit_head(self, z_support: Tensor, onehot: Tensor, params: Params) -> Head:
        """Build the head from support embeddings ``(T, S, D)`` and one-hot labels ``(T, S, N)``."""
        raise NotImplementedError

    def head_logits(self, head: Head, z_query: Tensor, params: Params) -> Tensor:
        """Logits ``(T, Q, N)`` of query embeddings ``(T, Q, D)``."""
        raise NotImplementedError

    # embedding -----------------------------------------------------------------------------
    def embed(self, params: Params, x: Tensor, running: bool | dict[str, Tensor] = False
              ) -> Tensor:
        """Embeddings ``(B, D)`` of one batch (one episode's BatchNorm statistics, or with
        ``running`` the learner's running statistics, or the statistics given as a dict:
        each input on its own)."""
        mp = self.model_params(params)
        if running is not False:
            for n in self._bn_layers:
                # BatchNorm in eval mode takes the statistics it is given; without them (episode
                # mode) it still normalises with the batch's own, so this never needs undoing
                self.model.get_submodule(n).training = False
            mp = {**mp, **(running if isinstance(running, dict) else self._running_buffers())}
        out = forward(self.model, mp, x)
        return out.flatten(1) if self.flat_embeddings else out

    def embed_tasks(self, params: Params, xs: Tensor, running: bool = False) -> Tensor:
        """Embeddings ``(T, B, D)`` of ``T`` episodes' inputs ``(T, B, ...)`` in one call;
        each episode gets its own BatchNorm statistics (or all use the running ones)."""
        if running:
            return self.embed(params, xs.flatten(0, 1), True).unflatten(0, xs.shape[:2])
        mp = self.model_params(params)
        if batched.supports(self.model):
            # One pass per layer over all episodes with shared weights; BatchNorm statistics
            # are still per episode (no vmap overhead).
            out = batched.batched_forward(self.model, mp, xs)
            return out.flatten(2) if self.flat_embeddings else out
        return vmap(lambda x: self.embed(params, x), randomness="different")(xs)

    def _logits(self, params: Params, z_s: Tensor, y_s: Tensor, n_way: int,
                z_q: Tensor) -> Tensor:
        onehot = F.one_hot(y_s.long(), n_way).to(z_s.dtype)
        return self.head_logits(self.fit_head(z_s, onehot, params), z_q, params)

    # the learner interface -----------------------------------------------------------------
    def adapt(self, support_x: Tensor, support_y: Tensor, params: Params | None = None, *,
              create_graph: bool | None = None, steps: int | None = None) -> EpisodeSupport:
        n_way = check_support_labels(support_x, support_y)
        create_graph = self.graph(create_graph)
        params = self.meta_params() if params is None else params
        if not create_graph:
            params = {n: p.detach() for n, p in params.items()}
        head = None
        # training mode normalises with the episode's statistics in either BatchNorm mode
        running: bool | dict[str, Tensor] = not self.training and self.uses_running()
        if not self.training and self.batchnorm == "support" and self._bn_layers:
            running = self.support_statistics(params, support_x)
        if not self._bn_layers or running is not False:
            with torch.set_grad_enabled(create_graph and torch.is_grad_enabled()):
                z = self.embed(params, support_x, running)[None]
                onehot = F.one_hot(support_y.long(), n_way).to(z.dtype)[None]
                head = self.fit_head(z, onehot, params)
        return EpisodeSupport(self, params, support_x, support_y, n_way, head, running)

    def predict(self, adapted: EpisodeSupport, x: Tensor) -> Tensor:
        p = adapted.params
        if adapted.head is not None:
            return self.head_logits(adapted.head, self.embed(p, x, adapted.running)[None], p)[0]
        s = len(adapted.support_x)
        z = self.embed(p, torch.cat([adapted.support_x, x]))
        return self._logits(p, z[None, :s], adapted.support_y[None], adapted.n_way, z[None, s:])[0]

    def episode(self, task: Task, params: Params | None = None,
                create_graph: bool | None = None) -> tuple[Tensor, Tensor]:
        n_way = check_support_labels(task.support_x, task.support_y)
        check_query_labels(task.query_y, n_way)
        return super().episode(task, params, create_graph)

    # batched fast path ---------------------------------------------------------------------
    def batches_tasks(self, tasks: list[Task]) -> bool:
        """Whether a meta-batch runs as one batch (``batched``, or by default where it is the
        faster path)."""
        return bool(batched.auto(self.model, tasks[0].support_x) if self.batched is None and tasks
                    else self.batched)

    def _batchable(self, tasks: list[Task]) -> int | None:
        """N when the tasks can run as one batch (same shapes, same N), else None."""
        if not self.batches_tasks(tasks) or len(tasks) < 2:
            return None
        ways = []
        for t in tasks:
            ways.append(check_support_labels(t.support_x, t.support_y))
            check_query_labels(t.query_y, ways[-1])
        if len(set(ways)) > 1 or len({t.shapes for t in tasks}) > 1:
            return None
        return ways[0]

    def batched_episodes(self, tasks: list[Task], params: Params, n_way: int,
                         running: bool = False) -> tuple[Tensor, Tensor]:
        """Per-task query losses and accuracies ``(T,)`` of equally shaped tasks, all at once
        (``running``: BatchNorm with the running statistics, in evaluation mode)."""
        y_q = torch.stack([t.query_y for t in tasks])
        logits = self.batched_logits(tasks, params, n_way, running)
        acc = (logits.argmax(-1) == y_q).to(logits.dtype).mean(1)
        return self.query_losses(logits, y_q), acc.detach()

    def batched_logits(self, tasks: list[Task], params: Params, n_way: int,
                       running: bool = False) -> Tensor:
        """Query logits ``(T, Q, N)`` of equally shaped tasks, all at once."""
        s = len(tasks[0].support_x)
        xs = torch.stack([torch.cat([t.support_x, t.query_x]) for t in tasks])
        y_s = torch.stack([t.support_y for t in tasks])
        z = self.embed_tasks(params, xs, running)
        return self._logits(params, z[:, :s], y_s, n_way, z[:, s:])

    def query_losses(self, logits: Tensor, y_q: Tensor) -> Tensor:
        """Per-task query losses ``(T,)`` of logits ``(T, Q, N)`` (the learner's ``loss_fn``,
        softmax cross-entropy, task by task)."""
        losses = F.cross_entropy(logits.flatten(0, 1), y_q.flatten(), reduction="none")
        return losses.view(len(logits), -1).mean(1)

    def eval_episodes(self, tasks: list[Task]) -> tuple[Tensor, Tensor]:
        n_way = None if self.batchnorm == "support" else self._batchable(tasks)
        if n_way is None:
            return super().eval_episodes(tasks)
        with torch.no_grad(), eval_mode(self):
            return self.batched_episodes(tasks, self.meta_params(), n_way, self.uses_running())

    def meta_loss(self, tasks: list[Task], params: Params | None = None) -> tuple[Tensor, Tensor]:
        n_way = self._batchable(tasks)
        if n_way is None:
            return super().meta_loss(tasks, params)
        params = self.meta_params() if params is None else params
        losses, accs = self.batched_episodes(tasks, params, n_way)
        return losses.mean(), accs.mean()

    def meta_grads(self, tasks: list[Task], params: Params | None = None,
                   normalize_by: float | None = None) -> tuple[Params, dict[str, float]]:
        """As :meth:`Learner.meta_grads`; one batched graph for a meta-batch of equally shaped
        tasks (memory: the whole meta-batch's graph), else the per-task loop."""
        n_way = self._batchable(tasks)
        if n_way is None:
            return super().meta_grads(tasks, params, normalize_by)
        params = self.meta_params() if params is None else params
        n = float(normalize_by) if normalize_by is not None else len(tasks)
        with train_mode(self):
            losses, accs = self.batched_episodes(tasks, params, n_way)
        return (self.grads_of(losses.sum() / n, params),
                {"loss": float(losses.detach().mean()), "metric": float(accs.mean())})


BATCHNORM_MODES = ("episode", "running", "support")


def _key(layer: str, stat: str) -> str:
    # buffer names cannot contain dots
    return f"{layer.replace('.', '_')}_{stat}"


def _scale_param(learner: nn.Module, scale: float, learn: bool) -> None:
    if learn:
        learner.scale = nn.Parameter(torch.tensor(float(scale)))
    else:
        learner.register_buffer("scale", torch.tensor(float(scale)))


def _scale(learner: nn.Module, params: Params) -> Tensor:
    return params.get("scale", learner.scale)


class ProtoNetOptions(EmbeddingOptions):
    name: str = "protonet"
    distance: Literal["sqeuclidean", "cosine"] = Field(
        "sqeuclidean", description="distance from a query to the prototypes")
    scale: float | None = Field(None, gt=0, description="initial logit scale (None: 1 for "
                                "sqeuclidean, 10 for cosine)")
    learn_scale: bool | None = Field(None, description="meta-learn the logit scale (None: "
                                     "for cosine only)")


@register_learner("protonet", options=ProtoNetOptions, model="embedding", kinds=("classification",))
class ProtoNet(EmbeddingLearner):
    """Prototypical Networks (Snell et al., 2017).

    A class's prototype is the mean embedding of its support examples; a query's logits are
    ``-scale * squared Euclidean distance`` to the prototypes (``distance="sqeuclidean"``, the
    paper's choice, scale fixed at 1) or ``scale * cosine similarity`` (``distance="cosine"``,
    with a learnable scale initialised at 10, since cosines in [-1, 1] make too flat a softmax).

    Args:
        model: the embedding network (default: Conv-4 features).
        loss: ``"ce"`` (a classifier).
        distance: ``"sqeuclidean"`` or ``"cosine"``.
        scale: initial logit scale (None: 1 for sqeuclidean, 10 for cosine).
        learn_scale: meta-learn the scale (None: for cosine only).
        batched: see :class:`EmbeddingLearner`.
        batchnorm: ``"episode"``, ``"running"`` or ``"support"`` statistics in evaluation mode
            (module docstring).
        batchnorm_tasks: meta-train episodes for the running statistics.
    """

    def __init__(self, model: nn.Module | None = None, loss: str = "ce",
                 distance: str = "sqeuclidean", scale: float | None = None,
                 learn_scale: bool | None = None, batched: bool | None = None,
                 batchnorm: str = "episode", batchnorm_tasks: int = 50) -> None:
        super().__init__(model, loss, batched, batchnorm, batchnorm_tasks)
        if distance not in ("sqeuclidean", "cosine"):
            raise ValueError(f"distance must be 'sqeuclidean' or 'cosine', got {distance!r}")
        self.distance = distance
        cosine = distance == "cosine"
        scale = (10.0 if cosine else 1.0) if scale is None else float(scale)
        learn_scale = cosine if learn_scale is None else bool(learn_scale)
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.learn_scale = learn_scale
        _scale_param(self, scale, learn_scale)

    def fit_head(self, z_support: Tensor, onehot: Tensor, params: Params) -> Tensor:
        counts = onehot.sum(1).unsqueeze(-1)  # (T, N, 1)
        return torch.bmm(onehot.transpose(1, 2), z_support) / counts  # prototypes (T, N, D)

    def head_logits(self, head: Tensor, z_query: Tensor, params: Params) -> Tensor:
        s = _scale(self, params)
        if self.distance == "cosine":
            sim = torch.bmm(F.normalize(z_query, dim=-1), F.normalize(head, dim=-1).transpose(1, 2))
            return s * sim
        # the difference form (not cdist / the expanded quadratic) keeps exact small distances
        # and a well-defined gradient at zero distance
        return -s * (z_query.unsqueeze(2) - head.unsqueeze(1)).pow(2).sum(-1)


class MatchingNetOptions(EmbeddingOptions):
    name: str = "matchingnet"
    scale: float = Field(1.0, gt=0, description="initial scale of the cosine attention")
    learn_scale: bool = Field(False, description="meta-learn the attention scale")


@register_learner("matchingnet", options=MatchingNetOptions, model="embedding",
                  kinds=("classification",))
class MatchingNet(EmbeddingLearner):
    """Matching Networks (Vinyals et al., 2016), without full context embeddings.

    A query's class distribution is attention over the support set,
    ``p(c|x) = sum_i softmax_i(scale * cos(f(x), f(x_i))) [y_i = c]``, with one embedding network
    for support and query. :meth:`predict` returns ``log p(c|x)``, so softmax cross-entropy on
    these logits is exactly the paper's negative log-likelihood.

    Args:
        model, loss, batched, batchnorm, batchnorm_tasks: as :class:`ProtoNet`.
        scale: initial attention scale (the paper's: 1).
        learn_scale: meta-learn the scale.
    """

    def __init__(self, model: nn.Module | None = None, loss: str = "ce", scale: float = 1.0,
                 learn_scale: bool = False, batched: bool | None = None,
                 batchnorm: str = "episode", batchnorm_tasks: int = 50) -> None:
        super().__init__(model, loss, batched, batchnorm, batchnorm_tasks)
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.learn_scale = bool(learn_scale)
        _scale_param(self, scale, self.learn_scale)

    def fit_head(self, z_support: Tensor, onehot: Tensor, params: Params) -> tuple[Tensor, Tensor]:
        return F.normalize(z_support, dim=-1), onehot

    def head_logits(self, head: tuple[Tensor, Tensor], z_query: Tensor, params: Params) -> Tensor:
        z_s, onehot = head
        att = _scale(self, params) * torch.bmm(F.normalize(z_query, dim=-1), z_s.transpose(1, 2))
        # log sum_{i in c} exp(att_i) - log sum_i exp(att_i), stable via logsumexp; every class
        # has a support example (checked), so no row is all -inf
        mask = onehot.transpose(1, 2).unsqueeze(1) > 0  # (T, 1, N, S)
        per_class = att.unsqueeze(2).masked_fill(~mask, float("-inf")).logsumexp(-1)
        return per_class - att.logsumexp(-1, keepdim=True)
