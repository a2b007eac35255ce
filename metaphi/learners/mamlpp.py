"""MAML++ (Antoniou, Edwards and Storkey, "How to train your MAML", ICLR 2019).

MAML with the paper's remedies for its unstable training and its cost:

* **multi-step loss** (MSL): in meta-training a task's loss is the weighted sum of the query
  losses after every inner step; the weights start uniform and are annealed towards the last
  step over ``multi_step_loss_steps`` outer steps (:func:`multi_step_weights`), after which
  only the last step's query loss remains;
* **per-layer per-step inner learning rates** (LSLR): every adapted parameter tensor has its
  own learning rate at every inner step, meta-learned with φ (``learn_inner_lr``);
* **per-step BatchNorm weights and biases** (BNWB): the forward passes of inner step ``k``
  (the support pass at θ_k and the query pass at θ_{k+1}) use BatchNorm affine parameters of
  their own, meta-learned and not adapted in the inner loop;
* **per-step BatchNorm statistics** (BNRS): with ``batchnorm="running"`` evaluation mode
  normalises step ``k`` with running statistics of step ``k``, estimated for the final φ on
  meta-train episodes (:meth:`MAMLpp.fit_batchnorm`, called by ``metaphi train`` through
  :meth:`~metaphi.learners.Learner.prepare_eval`); with ``"episode"`` every batch is
  normalised with its own statistics, as in MAML (and as the authors' code runs its
  BatchNorm layers);
* **derivative-order annealing** (DA): first-order meta-gradients for the first
  ``first_order_steps`` outer steps, second order after;
* **cosine annealing of the outer learning rate**: the meta-optimizer's schedule
  (``meta_optimizer: {schedule: cosine}``, as in the ``omniglot-mamlpp-*`` presets).

MSL and DA depend on the outer step. It is a buffer of the learner, ``outer_step``, saved with
φ in every checkpoint: :func:`metaphi.loops.train.meta_train` sets it before every step
(:meth:`MAMLpp.set_outer_step`), and :meth:`MAMLpp.meta_backward` advances it by one, so a
hand-written loop that calls ``meta_backward`` once per step follows the schedules too, and a
resumed run continues them where it stopped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from ..registry import Options, register_learner
from ..tasks.sources import TaskSource, fixed_tasks
from ..tasks.task import Task
from .base import MODEL_PREFIX, Adapted, Learner
from .functional import (LossSpec, Params, checkpointed, forward, sgd_step,
                         transductive_batchnorm)
from .maml import _lr_key as _key


def multi_step_weights(steps: int, progress: float) -> list[float]:
    """The multi-step loss's weights of the query losses after inner steps ``1..steps``.

    ``progress`` is the fraction of the annealing period done (outer step divided by
    ``multi_step_loss_steps``). At 0 the weights are uniform; the weights of the steps before
    the last fall linearly to a floor of ``0.03 / steps`` and the last step's weight rises to
    take what they lose (they always sum to 1); from ``progress >= 1`` on only the last step
    counts. This is the paper's schedule with the outer step in place of the epoch.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if progress >= 1 or steps == 1:
        return [0.0] * (steps - 1) + [1.0]
    floor = 0.03 / steps
    early = max((1.0 - progress) / steps, floor)
    last = min((1.0 + progress * (steps - 1)) / steps, 1.0 - (steps - 1) * floor)
    return [early] * (steps - 1) + [last]


class MAMLppOptions(Options):
    name: str = "mamlpp"
    inner_lr: float = Field(0.1, gt=0, description="initial value of every per-layer per-step "
                            "inner learning rate")
    inner_steps: int = Field(5, ge=1, description="inner steps at meta-training")
    eval_inner_steps: int | None = Field(
        None, ge=1, description="inner steps in evaluation mode (default: inner_steps)")
    learn_inner_lr: bool = Field(True, description="meta-learn the per-layer per-step inner "
                                 "learning rates (LSLR)")
    multi_step_loss_steps: int = Field(
        5000, ge=0, description="outer steps over which the multi-step loss's weights are "
        "annealed to the last step (0: the last step's query loss only)")
    first_order_steps: int = Field(0, ge=0, description="derivative-order annealing: "
                                   "first-order meta-gradients for the first N outer steps")
    per_step_batchnorm: bool = Field(True, description="BatchNorm weights and biases of their "
                                     "own for every inner step (BNWB)")
    batchnorm: Literal["episode", "running"] = Field(
        "episode", description="BatchNorm statistics in evaluation mode: each batch's own, or "
        "per-step running statistics estimated on meta-train episodes (BNRS)")
    batchnorm_tasks: int = Field(50, ge=1, description="batchnorm=running: meta-train episodes "
                                 "the per-step statistics are estimated on")
    checkpoint: bool = Field(False, description="gradient checkpointing through the inner loop")


@dataclass(eq=False)
class StepAdapted(Adapted):
    """An adapted MAML++ model: ``params`` holds every tensor the network needs at the last
    inner step's index (fast weights, that step's BatchNorm weights and, with ``running``, its
    running statistics)."""

    running: bool = False


@register_learner("mamlpp", options=MAMLppOptions)
class MAMLpp(Learner):
    """MAML++ (module docstring).

    Args:
        model: the network whose initialisation is φ. Its BatchNorm layers get per-step
            affine parameters (``per_step_batchnorm``); they are meta-learned only, and every
            other parameter is adapted in the inner loop.
        loss: ``"ce"``, ``"mse"``, ``"mae"`` or a callable (see :class:`Learner`).
        inner_lr: initial value of the per-layer per-step inner learning rates.
        inner_steps: inner steps at meta-training.
        eval_inner_steps: inner steps in evaluation mode (default ``inner_steps``).
        learn_inner_lr: meta-learn the inner learning rates (else they stay at ``inner_lr``).
        multi_step_loss_steps: outer steps of the multi-step loss (:func:`multi_step_weights`).
        first_order_steps: outer steps with first-order meta-gradients.
        per_step_batchnorm: per-step BatchNorm weights and biases (else one set for all steps).
        batchnorm: ``"episode"`` or ``"running"`` statistics in evaluation mode.
        batchnorm_tasks: meta-train episodes for the running statistics.
        checkpoint: gradient checkpointing through the inner loop (as :class:`MAML`'s).
    """

    def __init__(self, model: nn.Module, loss: LossSpec = "ce", inner_lr: float = 0.1,
                 inner_steps: int = 5, eval_inner_steps: int | None = None,
                 learn_inner_lr: bool = True, multi_step_loss_steps: int = 5000,
                 first_order_steps: int = 0, per_step_batchnorm: bool = True,
                 batchnorm: str = "episode", batchnorm_tasks: int = 50,
                 checkpoint: bool = False) -> None:
        super().__init__(loss)
        if not inner_lr > 0:
            raise ValueError(f"inner_lr must be > 0, got {inner_lr}")
        if inner_steps < 1 or (eval_inner_steps is not None and eval_inner_steps < 1):
            raise ValueError("inner_steps and eval_inner_steps must be >= 1")
        if batchnorm not in ("episode", "running"):
            raise ValueError(f"batchnorm must be 'episode' or 'running', got {batchnorm!r}")
        if batchnorm_tasks < 1 or multi_step_loss_steps < 0 or first_order_steps < 0:
            raise ValueError("batchnorm_tasks must be >= 1; multi_step_loss_steps and "
                             "first_order_steps >= 0")
        self.model = transductive_batchnorm(model)
        self.inner_lr = float(inner_lr)
        self.inner_steps = int(inner_steps)
        self.eval_inner_steps = int(eval_inner_steps or inner_steps)
        self.learn_inner_lr = bool(learn_inner_lr)
        self.multi_step_loss_steps = int(multi_step_loss_steps)
        self.first_order_steps = int(first_order_steps)
        self.per_step_batchnorm = bool(per_step_batchnorm)
        self.batchnorm = batchnorm
        self.batchnorm_tasks = int(batchnorm_tasks)
        self.checkpoint = bool(checkpoint)
        # one set of per-step tensors for every step index either mode runs
        self.n_sets = max(self.inner_steps, self.eval_inner_steps)
        self.register_buffer("outer_step", torch.zeros((), dtype=torch.long))

        self._bn_layers = [n for n, m in self.model.named_modules()
                           if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.bn_weight, self.bn_bias = nn.ParameterDict(), nn.ParameterDict()
        if self.per_step_batchnorm:
            for n in self._bn_layers:
                bn = self.model.get_submodule(n)
                for attr, store in (("weight", self.bn_weight), ("bias", self.bn_bias)):
                    p = getattr(bn, attr)
                    if p is None:  # affine=False
                        continue
                    store[_key(n)] = nn.Parameter(p.detach().repeat(self.n_sets, 1))
                    del bn._parameters[attr]
                    bn.register_parameter(attr, None)  # supplied per step at every forward
        bn_affine = {f"{n}.{a}" for n in self._bn_layers for a in ("weight", "bias")}
        self._adapted = [n for n, _ in self.model.named_parameters() if n not in bn_affine]
        self.lrs = nn.ParameterDict({
            _key(n): nn.Parameter(torch.full((self.n_sets,), self.inner_lr,
                                             dtype=p.dtype, device=p.device),
                                  requires_grad=self.learn_inner_lr)
            for n, p in self.model.named_parameters() if n in self._adapted})
        if self.batchnorm == "running":
            # buffers, not parameters: saved with φ, not meta-learned
            self.bn_stats = nn.Module()
            for n in self._bn_layers:
                like = self.lrs[next(iter(self.lrs))] if len(self.lrs) else torch.zeros(())
                c = self.model.get_submodule(n).num_features
                self.bn_stats.register_buffer(_key(n) + "__mean", like.new_zeros(self.n_sets, c))
                self.bn_stats.register_buffer(_key(n) + "__var", like.new_ones(self.n_sets, c))
            self.bn_stats.register_buffer("fitted", torch.tensor(False))
        self._record: Callable[[str, Tensor], None] | None = None
        self._index = 0  # the step index of the forward pass being recorded

    # the outer step (MSL and DA) -------------------------------------------------------------
    def set_outer_step(self, step: int) -> None:
        """Tell the learner which outer step comes next (the training loop calls this)."""
        self.outer_step.fill_(int(step))

    def step_weights(self) -> list[float]:
        """The multi-step loss's weights at the current outer step (:func:`multi_step_weights`)."""
        if self.multi_step_loss_steps == 0:
            return multi_step_weights(self.inner_steps, 1.0)
        return multi_step_weights(self.inner_steps,
                                  int(self.outer_step) / self.multi_step_loss_steps)

    def second_order_now(self) -> bool:
        """Derivative-order annealing: second order from outer step ``first_order_steps`` on."""
        return int(self.outer_step) >= self.first_order_steps

    def meta_backward(self, tasks: list[Task], normalize_by: float | None = None
                      ) -> dict[str, float]:
        """As :meth:`Learner.meta_backward`, then advance ``outer_step`` by one."""
        stats = super().meta_backward(tasks, normalize_by)
        self.outer_step.add_(1)
        return stats

    # the functional core ---------------------------------------------------------------------
    def adapted_names(self) -> list[str]:
        """Model parameters the inner loop adapts: all but BatchNorm's affine parameters."""
        return list(self._adapted)

    def default_steps(self) -> int:
        return self.inner_steps if self.training else self.eval_inner_steps

    def step_params(self, params: Params, fast: Params, k: int, running: bool) -> Params:
        """Everything the network needs at step index ``k``: the fast weights, the BatchNorm
        weights of step ``k`` (from φ, ``params``) and, with ``running``, its running
        statistics."""
        k = min(k, self.n_sets - 1)
        out = dict(fast)
        for n in self._bn_layers:
            key = _key(n)
            for attr, store in (("weight", "bn_weight."), ("bias", "bn_bias.")):
                if store + key in params:
                    out[f"{n}.{attr}"] = params[store + key][k]
            if running:
                out[f"{n}.running_mean"] = getattr(self.bn_stats, key + "__mean")[k]
                out[f"{n}.running_var"] = getattr(self.bn_stats, key + "__var")[k]
        return out

    def step_forward(self, params: Params, fast: Params, x: Tensor, k: int,
                     running: bool) -> Tensor:
        """The network's output on ``x`` at step index ``k`` (:meth:`step_params`)."""
        if self._record is not None:
            self._index = min(k, self.n_sets - 1)
        if running:
            self._eval_batchnorm()
        return forward(self.model, self.step_params(params, fast, k, running), x)

    def _eval_batchnorm(self) -> None:
        # BatchNorm in eval mode takes the statistics it is given; without them it still
        # normalises with the batch's own (no running buffers), so this never needs undoing
        for n in self._bn_layers:
            self.model.get_submodule(n).training = False

    def inner_lr_of(self, params: Params, name: str) -> Tensor:
        """The per-step learning rates ``(n_sets,)`` of model parameter ``name``."""
        key = "lrs." + _key(name)
        return params[key] if key in params else self.lrs[_key(name)]

    def unroll(self, params: Params, x: Tensor, y: Tensor, steps: int, second_order: bool,
               running: bool, query: tuple[Tensor, Tensor] | None = None,
               weights: list[float] | None = None
               ) -> tuple[Params, list[Tensor], Tensor | None]:
        """``steps`` inner steps from φ (``params``) on ``(x, y)``. Returns the fast weights
        and, with ``query`` and ``weights``, the weighted query losses after every step whose
        weight is not zero (the multi-step loss's terms) and the last such query output."""
        names = self.adapted_names()
        fast = {n: p for n, p in self.model_params(params).items() if n in names}
        # the rest of φ (per-step learning rates and BatchNorm weights): inputs of a step
        rest = {n: p for n, p in params.items() if not n.startswith(MODEL_PREFIX)}
        terms: list[Tensor] = []
        out = None
        with torch.enable_grad():
            for k in range(steps):
                j = min(k, self.n_sets - 1)

                def one(p: Params, phi: Params, k: int = k, j: int = j) -> Params:
                    loss = self.loss_fn(self.step_forward(phi, p, x, k, running), y)
                    grads = torch.autograd.grad(loss, [p[n] for n in names],
                                                create_graph=second_order)
                    if not second_order:
                        grads = [g.detach() for g in grads]
                    return sgd_step(p, grads, names,
                                    {n: self.inner_lr_of(phi, n)[j] for n in names})

                fast = (checkpointed(one, fast, names, rest) if self.checkpoint and second_order
                        else one(fast, rest))
                if query is not None and weights is not None and weights[k] != 0:
                    out = self.step_forward(params, fast, query[0], k, running)
                    terms.append(weights[k] * self.loss_fn(out, query[1]))
        return fast, terms, out

    # the learner interface -------------------------------------------------------------------
    def uses_running(self) -> bool:
        """Whether evaluation mode uses the per-step running statistics (an error if they have
        not been estimated yet)."""
        if self.batchnorm != "running" or self.training:
            return False
        if not bool(self.bn_stats.fitted):
            raise RuntimeError("MAMLpp(batchnorm='running') has no running statistics yet: call "
                               "learner.fit_batchnorm(meta_train_tasks) after meta-training "
                               "(`metaphi train` does this), or use batchnorm='episode'")
        return True

    def adapt(self, support_x: Tensor, support_y: Tensor, params: Params | None = None, *,
              create_graph: bool | None = None, steps: int | None = None) -> StepAdapted:
        create_graph = self.graph(create_graph)
        steps = self.default_steps() if steps is None else int(steps)
        params = self.meta_params() if params is None else params
        running = self.uses_running()
        fast, _, _ = self.unroll(params, support_x, support_y, steps,
                              create_graph and self.second_order_now(), running)
        full = self.step_params(params, fast, steps - 1, running)
        if not create_graph:
            full = {n: p.detach() for n, p in full.items()}
        return StepAdapted(self, full, running)

    def predict(self, adapted: Adapted, x: Tensor) -> Tensor:
        if getattr(adapted, "running", False):
            self._eval_batchnorm()
        return forward(self.model, adapted.params, x)

    def episode(self, task: Task, params: Params | None = None,
                create_graph: bool | None = None) -> tuple[Tensor, Tensor]:
        """As :meth:`Learner.episode`; in meta-training (training mode, differentiable) the
        loss is the multi-step loss while its annealing lasts."""
        create_graph = self.graph(create_graph)
        weights = self.step_weights()
        if not (create_graph and self.training and weights[0] > 0):
            return super().episode(task, params, create_graph)
        params = self.meta_params() if params is None else params
        _, terms, out = self.unroll(params, task.support_x, task.support_y, self.inner_steps,
                                    self.second_order_now(), False,
                                    (task.query_x, task.query_y), weights)
        assert out is not None  # the last step's weight is never 0
        return torch.stack(terms).sum(), self.metric_fn(out, task.query_y).detach()

    # per-step running statistics -------------------------------------------------------------
    @torch.no_grad()
    def fit_batchnorm(self, tasks: Iterable[Task], params: Params | None = None) -> int:
        """Estimate the per-step running statistics for φ (``params``, default the learner's
        own): for every BatchNorm layer and step index ``k``, the mean over ``tasks`` of the
        batch mean and unbiased batch variance of its input in the passes of step ``k``
        (support at θ_k, query at θ_{k+1}) of an ``eval_inner_steps`` adaptation with batch
        statistics, what meta-training normalised with. Indices past the last step reuse its
        statistics. Returns the number of tasks used."""
        if self.batchnorm != "running":
            raise ValueError("fit_batchnorm needs batchnorm='running'")
        sums: dict[tuple[str, int], list] = {}

        def record(name: str, x: Tensor) -> None:
            dims = [0] + list(range(2, x.ndim))
            mean, var = x.mean(dims), x.var(dims, unbiased=True)
            s = sums.setdefault((name, self._index), [0.0, 0.0, 0])
            s[0], s[1], s[2] = s[0] + mean, s[1] + var, s[2] + 1

        def hook(name: str):
            return lambda _m, inputs: record(name, inputs[0].detach())

        params = self.meta_params() if params is None else params
        device = next(iter(params.values())).device
        handles = [self.model.get_submodule(n).register_forward_pre_hook(hook(n))
                   for n in self._bn_layers]
        self._record, n = record, 0
        try:
            for t in tasks:
                t = t.to(device)
                steps = self.eval_inner_steps
                ones = [1.0] * steps  # every step's query pass, for its statistics
                self.unroll(params, t.support_x, t.support_y, steps, False, False,
                            (t.query_x, t.query_y), ones)
                n += 1
        finally:
            self._record = None
            for h in handles:
                h.remove()
        if n == 0:
            raise ValueError("fit_batchnorm got no tasks; pass meta-train tasks")
        for name in self._bn_layers:
            key = _key(name)
            for k in range(self.n_sets):
                j = max(i for i in range(min(k, self.eval_inner_steps - 1) + 1)
                        if (name, i) in sums)
                s_mean, s_var, count = sums[(name, j)]
                getattr(self.bn_stats, key + "__mean")[k] = s_mean / count
                getattr(self.bn_stats, key + "__var")[k] = s_var / count
        self.bn_stats.fitted.fill_(True)
        return n

    def prepare_eval(self, source: TaskSource, seed: int) -> None:
        if self.batchnorm == "running":
            self.fit_batchnorm(fixed_tasks(source, seed, "batchnorm", self.batchnorm_tasks))
