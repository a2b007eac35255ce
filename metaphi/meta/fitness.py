"""The fitness of φ: its meta-validation objective on a fixed set of tasks, as a pure function.

:func:`evaluate_fitness` ``(phi, task_seeds, spec) -> float`` depends on nothing but its
arguments (no global state, no shared RNG), so the same call gives the same number in this
process, in a worker process or, later, on another machine. ``task_seeds`` name the tasks:
each is the entropy key of a :class:`numpy.random.Generator` (the one
:func:`metaphi.tasks.task_rng` builds), so all candidates of a generation are scored on the
same tasks (common random numbers).

Two kinds of φ:

* ``phi="vector"``: φ is a flat vector, the learner's initialisation (``meta_params()``
  flattened with ``parameters_to_vector``) followed by ``log(inner_lr)`` when
  ``learn_inner_lr`` is set. ES meta-learns MAML's initialisation this way.
* ``phi="hyper"``: φ is a dict of learner settings (``inner_lr``, ``inner_steps``, ``width``,
  ``depth``, ``first_order``); the configuration is meta-trained for ``train_steps`` outer steps
  with Adam on the gradient meta-objective before it is scored, since an architecture has no
  value until its weights are trained.
"""
from __future__ import annotations

import functools
import json
import math
import os
import pickle
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import multiprocessing as mp
import numpy as np
import torch
from torch import Tensor
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from ..learners import ANIL, FOMAML, MAML, Learner, MetaSGD, batched
from ..models import Classifier, mlp
from ..tasks import SinusoidFamily, TaskSource
from ..tasks.sources import STREAMS, sample_tasks
from ..tasks.task import Task, stack_tasks

TaskSeed = Sequence[int]

LEARNERS: dict[str, type[MAML]] = {"maml": MAML, "fomaml": FOMAML, "metasgd": MetaSGD, "anil": ANIL}
HYPER_KEYS = ("inner_lr", "inner_steps", "width", "depth", "first_order")


@dataclass
class FitnessSpec:
    """A small, picklable description of what a candidate φ is scored on.

    ``family``: the task family, ``{"name": "sinusoid", **SinusoidFamily kwargs}``.
    ``learner``: ``{"name": "maml" | "fomaml" | "metasgd" | "anil", "hidden": [40, 40],
    "in_dim": 1, "out_dim": 1, "inner_lr": ..., "inner_steps": ..., "loss": "mse"}``.
    ``seed`` fixes the initial weights and the meta-training tasks of ``phi="hyper"``.
    """

    family: dict[str, Any] = field(default_factory=lambda: {"name": "sinusoid", "k_shot": 10,
                                                             "n_query": 10})
    learner: dict[str, Any] = field(default_factory=lambda: {
        "name": "maml", "hidden": [40, 40], "in_dim": 1, "out_dim": 1, "inner_lr": 0.01,
        "inner_steps": 1, "loss": "mse"})
    phi: str = "vector"
    learn_inner_lr: bool = True
    train_steps: int = 0
    train_meta_batch: int = 10
    train_outer_lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.phi not in ("vector", "hyper"):
            raise ValueError(f"FitnessSpec.phi must be 'vector' or 'hyper', got {self.phi!r}")
        if self.phi == "vector" and self.train_steps:
            raise ValueError("phi='vector' scores the given initialisation as is; train_steps "
                             "applies to phi='hyper' only")
        if self.train_steps < 0 or self.train_meta_batch < 1:
            raise ValueError(f"need train_steps >= 0 and train_meta_batch >= 1, got "
                             f"{self.train_steps}, {self.train_meta_batch}")
        build_family(self.family)
        name = self.learner.get("name", "maml")
        if name not in LEARNERS:
            raise ValueError(f"unknown learner {name!r} in FitnessSpec; choose one of {list(LEARNERS)}")


def build_family(cfg: dict[str, Any]) -> TaskSource:
    """A task source from a plain config (``{"name": "sinusoid", ...}``)."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name == "sinusoid":
        return SinusoidFamily(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    raise ValueError(f"unknown task family {name!r} for population fitness; supported: 'sinusoid'")


def build_learner(cfg: dict[str, Any], overrides: dict[str, Any] | None = None,
                  seed: int = 0) -> MAML:
    """A MAML-family learner on an MLP, with ``overrides`` (a 'hyper' φ) applied.

    The initial weights come from ``seed`` alone (a forked RNG leaves the caller's untouched).
    """
    cfg = {**cfg}
    overrides = dict(overrides or {})
    unknown = [k for k in overrides if k not in HYPER_KEYS]
    if unknown:
        raise ValueError(f"φ has settings {unknown} that the fitness does not know; use "
                         f"{list(HYPER_KEYS)}")
    hidden = list(cfg.get("hidden", [40, 40]))
    if "width" in overrides or "depth" in overrides:
        width = int(overrides.pop("width", hidden[0] if hidden else 40))
        depth = int(overrides.pop("depth", len(hidden)))
        if width < 1 or depth < 1:
            raise ValueError(f"width and depth must be >= 1, got width={width}, depth={depth}")
        hidden = [width] * depth
    cfg.update(overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = mlp(int(cfg.get("in_dim", 1)), tuple(hidden), int(cfg.get("out_dim", 1)))
    cls = LEARNERS[cfg.get("name", "maml")]
    kw: dict[str, Any] = {"loss": cfg.get("loss", "mse"), "inner_lr": float(cfg.get("inner_lr", 0.01)),
                          "inner_steps": int(cfg.get("inner_steps", 1))}
    if cls in (MAML, MetaSGD, ANIL):
        kw["first_order"] = bool(cfg.get("first_order", False))
    return cls(model, **kw)


def phi_vector(learner: MAML, learn_inner_lr: bool = True) -> np.ndarray:
    """φ as one flat float64 vector: the initialisation, then ``log(inner_lr)``."""
    with torch.no_grad():
        v = parameters_to_vector(list(learner.meta_params().values())).double().numpy()
    return np.concatenate([v, [math.log(learner.inner_lr)]]) if learn_inner_lr else v


def _check_phi(v: torch.Tensor, params: Sequence[torch.Tensor], learn_inner_lr: bool) -> int:
    """Validate a flat φ (its last dimension) for ``params``; return the number of weights."""
    n = sum(p.numel() for p in params)
    want = n + (1 if learn_inner_lr else 0)
    if v.shape[-1] != want:
        raise ValueError(f"φ has {v.shape[-1]} numbers, the learner needs {want} "
                         f"({n} weights{' + log inner_lr' if learn_inner_lr else ''})")
    if not torch.isfinite(v).all():
        raise ValueError("φ contains NaN or inf")
    return n


def load_phi_vector(learner: MAML, phi: Any, learn_inner_lr: bool = True) -> None:
    """Write a flat φ (see :func:`phi_vector`) into ``learner`` in place."""
    v = torch.as_tensor(np.asarray(phi, dtype=np.float64)).reshape(-1)
    params = list(learner.meta_params().values())
    n = _check_phi(v, params, learn_inner_lr)
    with torch.no_grad():
        vector_to_parameters(v[:n].float(), params)
    if learn_inner_lr:
        learner.inner_lr = float(math.exp(float(v[n])))


def fitness_task_seeds(seed: int, generation: int, n_tasks: int,
                       stream: str | int = "fitness") -> list[list[int]]:
    """The task seeds of one generation: ``[seed, stream id, generation, i]`` for i < n_tasks,
    the keys :func:`metaphi.tasks.task_rng` uses."""
    if n_tasks < 1:
        raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
    sid = STREAMS[stream] if isinstance(stream, str) else int(stream)
    return [[int(seed), sid, int(generation), i] for i in range(n_tasks)]


def meta_train(learner: Learner, family: TaskSource, steps: int, meta_batch: int,
               outer_lr: float, seed: int) -> None:
    """A short gradient meta-training (outer Adam) in place: the tasks of step ``s`` are
    ``task_rng(seed, 'train', s, i)``, so every candidate trains on the same tasks."""
    opt = torch.optim.Adam(learner.parameters(), lr=outer_lr)
    params = learner.meta_params()
    for step in range(steps):
        tasks = sample_tasks(family, seed, "train", step, meta_batch)
        grads, _ = learner.outer_grads(tasks, params)
        opt.zero_grad(set_to_none=False)
        for k, p in params.items():
            p.grad = grads[k]
        opt.step()


def tasks_from_seeds(family: TaskSource, task_seeds: Sequence[TaskSeed]) -> list:
    """The tasks that ``task_seeds`` name (each seed is a task generator's entropy key)."""
    return [family.sample(np.random.default_rng([int(v) for v in s])) for s in task_seeds]


def evaluate_fitness(phi: Any, task_seeds: Sequence[TaskSeed], spec: FitnessSpec) -> float:
    """Mean post-adaptation query loss of φ over the tasks named by ``task_seeds`` (lower is
    better). A pure function of its arguments; NaN if the inner loop diverges."""
    if not task_seeds:
        raise ValueError("evaluate_fitness needs at least one task seed")
    family = build_family(spec.family)
    if spec.phi == "vector":
        learner = build_learner(spec.learner, seed=spec.seed)
        load_phi_vector(learner, phi, spec.learn_inner_lr)
    else:
        if not isinstance(phi, dict):
            raise TypeError(f"phi='hyper' needs φ as a dict of settings, got {type(phi).__name__}")
        learner = build_learner(spec.learner, phi, seed=spec.seed)
        if spec.train_steps:
            meta_train(learner, family, spec.train_steps, spec.train_meta_batch,
                       spec.train_outer_lr, spec.seed)
    params = learner.meta_params()
    tasks = tasks_from_seeds(family, task_seeds)
    if hasattr(learner, "use_batched") and learner.use_batched(tasks):
        # All tasks in one pass per layer: the same episodes as the loop below, several times
        # faster for small networks (equal up to float rounding).
        losses, _ = learner.batched_episodes(stack_tasks(tasks), params, create_graph=False,
                                             steps=learner.eval_inner_steps)
        return float(losses.detach().mean())
    return sum(float(learner.episode(t, params)[0]) for t in tasks) / len(tasks)


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
    names = [f"model.features.{i}" for i in range(0, len(mods), 2)] + ["model.head"]
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
def _cached_learner(learner_json: str, seed: int) -> MAML:
    return build_learner(json.loads(learner_json), seed=seed)


def _template_learner(spec: FitnessSpec) -> MAML:
    """The spec's learner, built once per process: :func:`evaluate_population` only reads its
    structure and settings (the candidates' weights come from φ), so it can be shared."""
    return _cached_learner(json.dumps(spec.learner, sort_keys=True), int(spec.seed))


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
    if not phis or learner is None or not batched.supports(learner.model):
        return [evaluate_fitness(phi, task_seeds, spec) for phi in phis]
    family = build_family(spec.family)
    tasks = stack_tasks(tasks_from_seeds(family, task_seeds))
    P, T = len(phis), tasks.support_x.shape[0]
    meta = learner.meta_params()
    vecs = torch.as_tensor(np.stack([np.asarray(phi, dtype=np.float64).reshape(-1)
                                     for phi in phis]))
    n = _check_phi(vecs, list(meta.values()), spec.learn_inner_lr)
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
        # of P times that, which is several times faster on a CPU for the population sizes
        # ES uses (benchmarks/es_fitness_speed.py)
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


@dataclass
class TaskFitness:
    """``fitness(phi, generation)``: :func:`evaluate_fitness` on ``n_tasks`` tasks.

    With ``resample=True`` every generation draws fresh tasks (shared by all its candidates:
    common random numbers), which keeps a population search from over-fitting one task set;
    with ``resample=False`` every generation uses the tasks of generation 0.

    ``more_tasks``: ``(generation, n)`` pairs; from that generation on, score on ``n`` tasks.
    Late in a search the candidates differ by less than the task sampling moves their
    fitness, and more tasks per generation lower that noise floor (at a proportional cost).
    The count stays a function of the generation, so a resumed search is still exact.
    """

    spec: FitnessSpec
    n_tasks: int = 25
    seed: int = 0
    resample: bool = True
    stream: str = "fitness"
    more_tasks: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        self.more_tasks = tuple((int(g), int(n)) for g, n in self.more_tasks)
        gens = [g for g, _ in self.more_tasks]
        if any(g < 0 for g in gens) or gens != sorted(set(gens)):
            raise ValueError("more_tasks needs (generation, n_tasks) pairs with distinct "
                             f"generations >= 0 in increasing order, got {self.more_tasks}")
        if any(n < 1 for _, n in self.more_tasks) or self.n_tasks < 1:
            raise ValueError(f"task counts must be >= 1, got n_tasks={self.n_tasks}, "
                             f"more_tasks={self.more_tasks}")

    def tasks_at(self, generation: int) -> int:
        """How many tasks generation ``generation`` is scored on."""
        n = self.n_tasks
        for g, k in self.more_tasks:
            if generation >= g:
                n = k
        return n

    def tasks_before(self, generations: int) -> int:
        """How many tasks one candidate is scored on over generations ``0..generations-1``
        (times the population size: the task episodes a search of that length ran)."""
        starts = [0] + [g for g, _ in self.more_tasks] + [generations]
        counts = [self.n_tasks] + [n for _, n in self.more_tasks]
        return sum(n * max(0, min(b, generations) - a)
                   for a, b, n in zip(starts, starts[1:], counts))

    def task_seeds(self, generation: int) -> list[list[int]]:
        return fitness_task_seeds(self.seed, generation if self.resample else 0,
                                  self.tasks_at(generation), self.stream)

    def __call__(self, phi: Any, generation: int) -> float:
        return evaluate_fitness(phi, self.task_seeds(generation), self.spec)

    def batch(self, phis: Sequence[Any], generation: int) -> list[float]:
        """Fitness of several candidates at once (:func:`evaluate_population`)."""
        return evaluate_population(phis, self.task_seeds(generation), self.spec)


# -- parallel evaluation ---------------------------------------------------------------------
def _init_worker() -> None:
    # One intra-op thread per worker: workers already use every core, and more threads would
    # oversubscribe them.
    torch.set_num_threads(1)


def _call(args: tuple[Callable[[Any, int], float], Any, int]) -> float:
    fn, phi, generation = args
    return float(fn(phi, generation))


def _call_batch(args: tuple[Any, Sequence[Any], int]) -> list[float]:
    fn, phis, generation = args
    return [float(v) for v in fn.batch(phis, generation)]


class PopulationEvaluator:
    """Evaluates a population's candidates in parallel worker processes (serially in this
    process when ``workers <= 1``). Use as a context manager so that the workers exit.

    ``fitness_fn(phi, generation) -> float`` must be picklable (a module-level function or a
    :class:`TaskFitness`); the result does not depend on ``workers``.
    """

    def __init__(self, fitness_fn: Callable[[Any, int], float], workers: int | None = None,
                 start_method: str = "spawn") -> None:
        workers = (os.cpu_count() or 1) if workers is None else int(workers)
        if workers < 0:
            raise ValueError(f"workers must be >= 0 (0 or 1: serial), got {workers}")
        self.fitness_fn, self.workers = fitness_fn, workers
        self._pool: ProcessPoolExecutor | None = None
        if workers > 1:
            try:
                pickle.dumps(fitness_fn)
            except Exception as e:
                raise ValueError(
                    f"parallel fitness needs a picklable fitness function, but {fitness_fn!r} is "
                    f"not ({e}); define it at module level (not a lambda or a local function), "
                    "use TaskFitness, or pass workers=1") from e
            self._pool = ProcessPoolExecutor(workers, mp_context=mp.get_context(start_method),
                                             initializer=_init_worker)

    def __call__(self, candidates: Sequence[Any], generation: int) -> list[float]:
        if hasattr(self.fitness_fn, "batch"):
            # One vectorised call per worker on a contiguous slice of the population.
            k = max(1, min(self.workers, len(candidates)))
            bounds = np.linspace(0, len(candidates), k + 1).astype(int)
            jobs_b = [(self.fitness_fn, list(candidates[a:b]), generation)
                      for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
            parts = (map(_call_batch, jobs_b) if self._pool is None
                     else self._pool.map(_call_batch, jobs_b))
            return [v for part in parts for v in part]
        jobs = [(self.fitness_fn, c, generation) for c in candidates]
        if self._pool is None:
            return [_call(j) for j in jobs]
        return list(self._pool.map(_call, jobs))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "PopulationEvaluator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
