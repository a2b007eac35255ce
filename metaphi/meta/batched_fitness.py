"""Many flat-φ candidates scored at once: the fast path of population fitness.

A population meta-optimizer over a flat φ (:mod:`metaphi.meta.fitness`, ``phi="vector"``)
scores tens to hundreds of candidate initialisations per generation on the same tasks. For a
network the task-batched path supports, all candidates x tasks run as one batch per layer; for
MAML with one inner step on a ReLU MLP with a squared loss, the episode is evaluated in closed
form (:func:`_one_step_mlp_losses`), with no per-task copy of any weight matrix. Both give the
numbers of :func:`~metaphi.meta.fitness.evaluate_fitness` up to float rounding (tested).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ..learners import FOMAML, MAML, MetaSGD, batched
from ..learners.base import MODEL_PREFIX
from ..models import Classifier
from ..tasks.task import Task, stack_tasks
from .fitness import (FitnessSpec, LearnerFactory, TaskSeed, check_phi, evaluate_fitness,
                      tasks_from_seeds)


def _relu_mlp_layers(learner: MAML) -> list[tuple[str, str]] | None:
    """(weight, bias) names of the Linear layers when ``learner`` is MAML adapting every weight
    of a Linear/ReLU MLP (:func:`metaphi.models.mlp`) with one SGD step on an MSE loss: the
    case :func:`_one_step_mlp_losses` scores in closed form. None otherwise."""
    model = learner.model
    if (type(learner) not in (MAML, FOMAML) or learner.loss_kind != "mse"
            or learner.eval_inner_steps != 1 or not isinstance(model, Classifier)
            or not isinstance(model.features, torch.nn.Sequential)
            or not isinstance(model.head, torch.nn.Linear)):
        return None
    mods = list(model.features)
    if len(mods) % 2 or not all(isinstance(m, torch.nn.Linear if i % 2 == 0 else torch.nn.ReLU)
                                for i, m in enumerate(mods)):
        return None
    names = [f"{MODEL_PREFIX}features.{i}" for i in range(0, len(mods), 2)] + [
        f"{MODEL_PREFIX}head"]
    if any(getattr(m, "bias", None) is None for m in mods[0::2] + [model.head]):
        return None
    return [(n + ".weight", n + ".bias") for n in names]


# elements of one (candidates, tasks, points, width) activation tensor in a closed-form chunk
_CHUNK_ELEMENTS = 1 << 18


def _one_step_mlp_losses(layers: list[tuple[Tensor, Tensor]], lr: Tensor, sx: Tensor, sy: Tensor,
                         qx: Tensor, qy: Tensor) -> Tensor:
    """Query MSE after one inner SGD step on the support MSE, for P candidate MLPs x T tasks.

    ``layers``: per candidate (W (P, out, in), b (P, out)), ReLU between them; ``lr`` (P,);
    ``sx``/``sy`` (T, K, ·) and ``qx``/``qy`` (T, Q, ·) are shared by the candidates. Returns (P, T).

    The support gradient of a layer is ``δᵀa`` (K outer products), so the adapted layer applied
    to query activations ``a'`` is ``a'Wᵀ + b - lr (a'aᵀ δ + Σδ)``: no per-task copy of any
    weight matrix is made, and the per-task work is a K x Q kernel instead of in x out matmuls.
    This is the same episode as the autograd path (equal up to float rounding; tested).
    """
    P, (T, K), Q = len(lr), sx.shape[:2], qx.shape[1]

    def dense(a: Tensor, w: Tensor, b: Tensor) -> Tensor:  # a (P, T, n, in) -> (P, T, n, out)
        n = a.shape[2]
        return torch.baddbmm(b[:, None], a.reshape(P, T * n, -1),
                             w.transpose(1, 2)).view(P, T, n, -1)

    # in-place where a tensor has no further use: these (P, T, n, width) tensors are what the
    # time goes to, and fewer of them stay in cache
    acts, masks = [sx.expand(P, T, K, sx.shape[-1])], []
    for i, (w, b) in enumerate(layers):
        z = dense(acts[-1], w, b)
        if i + 1 < len(layers):
            masks.append(z > 0)
            acts.append(z.clamp_min_(0))
    delta = (z - sy).mul_(2.0 / (K * sy.shape[-1]))  # d(mean squared error)/d(output)
    deltas = [delta]
    for i in range(len(layers) - 1, 0, -1):
        w = layers[i][0]
        delta = torch.bmm(delta.reshape(P, T * K, -1), w).view(P, T, K, -1).mul_(masks[i - 1])
        deltas.insert(0, delta)
    a = qx.expand(P, T, Q, qx.shape[-1])
    step = lr.view(P, 1, 1, 1)
    for i, (w, b) in enumerate(layers):
        corr = ((a @ acts[i].transpose(-1, -2)) @ deltas[i]).add_(deltas[i].sum(2, keepdim=True))
        z = dense(a, w, b).sub_(corr.mul_(step))
        a = z.clamp_min_(0) if i + 1 < len(layers) else z
    return (a - qy).pow_(2).flatten(2).mean(2)


@functools.lru_cache(maxsize=8)
def _cached_learner(make_learner: LearnerFactory) -> MAML:
    return make_learner(None)


def _template_learner(spec: FitnessSpec) -> Any:
    """The spec's learner, built once per process: :func:`evaluate_population` only reads its
    structure and settings (the candidates' weights come from φ), so it can be shared."""
    try:
        return _cached_learner(spec.make_learner)
    except TypeError:  # an unhashable factory: build it each time
        return spec.make_learner(None)


def evaluate_population(phis: Sequence[Any], task_seeds: Sequence[TaskSeed],
                        spec: FitnessSpec) -> list[float]:
    """:func:`evaluate_fitness` of every φ in ``phis`` on the same tasks, as one pure function.

    For flat φ vectors (``spec.phi == "vector"``) on a network the task-batched path supports,
    all candidates x tasks run as one batch per layer: candidate c's weights are copied to its
    tasks and each task adapts its own copy, so the numbers equal per-candidate
    :func:`evaluate_fitness` up to float rounding, at a fraction of the cost for small
    networks. Otherwise the candidates are scored one by one.
    """
    if not task_seeds:
        raise ValueError("evaluate_population needs at least one task seed")
    learner = _template_learner(spec) if spec.phi == "vector" else None
    if (not phis or not isinstance(learner, MAML) or learner.loss_kind == "custom"
            or not batched.supports(learner.model)):
        return [evaluate_fitness(phi, task_seeds, spec) for phi in phis]
    tasks = stack_tasks(tasks_from_seeds(spec.source, task_seeds))
    P, T = len(phis), tasks.support_x.shape[0]
    meta = learner.meta_params()
    vecs = torch.as_tensor(np.stack([np.asarray(phi, dtype=np.float64).reshape(-1)
                                     for phi in phis]))
    n = check_phi(vecs, list(meta.values()), spec.learn_inner_lr)
    blocks, offset = {}, 0  # candidate c's weights: blocks[name][c]
    for name, p in meta.items():
        blocks[name] = vecs[:, offset:offset + p.numel()].float().reshape(P, *p.shape)
        offset += p.numel()
    # Meta-SGD's learning rates are part of φ already (per candidate, like the weights); the
    # others take the candidate's scalar inner lr.
    lr = None
    if not isinstance(learner, MetaSGD):
        lr = (vecs[:, n].exp() if spec.learn_inner_lr
              else torch.full((P,), learner.inner_lr, dtype=torch.float64)).float()
    mlp_layers = _relu_mlp_layers(learner)
    if mlp_layers is not None:
        # a few candidates at a time: each pass then touches a few MB (cache-sized) instead
        # of P times that, which is faster on a CPU for the population sizes ES uses
        width = max([tasks.support_x.shape[-1]] + [blocks[w].shape[1] for w, _ in mlp_layers])
        per_candidate = T * max(tasks.support_x.shape[1], tasks.query_x.shape[1]) * width
        chunk = max(1, _CHUNK_ELEMENTS // per_candidate)
        with torch.no_grad():
            losses = torch.cat([
                _one_step_mlp_losses([(blocks[w][c:c + chunk], blocks[b][c:c + chunk])
                                      for w, b in mlp_layers], lr[c:c + chunk],
                                     tasks.support_x, tasks.support_y, tasks.query_x,
                                     tasks.query_y)
                for c in range(0, P, chunk)])
        return [float(v) for v in losses.mean(1)]
    params = {name: b.repeat_interleave(T, dim=0).requires_grad_(True)  # (P*T, ...)
              for name, b in blocks.items()}
    lr = None if lr is None else lr.repeat_interleave(T)
    big = Task(*(t.repeat(P, *[1] * (t.dim() - 1)) for t in
                 (tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y)))
    losses, _ = learner.batched_episodes(big, params, create_graph=False,
                                         steps=learner.eval_inner_steps,
                                         task_lr=lr)
    return [float(v) for v in losses.detach().reshape(P, T).mean(1)]
