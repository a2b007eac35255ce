"""The fitness of φ: its post-adaptation query loss on a fixed set of tasks, as a pure function.

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
* ``phi="hyper"``: φ is a dict of settings (config overrides such as ``learner.inner_lr``,
  ``model.hidden``); the learner they define is meta-trained for ``train_steps`` outer steps
  with Adam on the gradient meta-objective before it is scored, since an architecture has no
  value until its weights are trained.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from ..learners import Learner
from ..tasks import TaskSource
from ..tasks.sources import STREAMS, sample_tasks
from ..tasks.task import Task

TaskSeed = Sequence[int]
LearnerFactory = Callable[[dict[str, Any] | None], Learner]


@dataclass(frozen=True)
class FitnessSpec:
    """A small, picklable description of what a candidate φ is and what it is scored on.

    Args:
        make_learner: a picklable callable ``(overrides or None) -> Learner`` whose initial
            weights depend only on its arguments (e.g. :class:`metaphi.runs.ConfigLearner`).
        source: the task source the fitness tasks come from.
        phi: ``"vector"`` or ``"hyper"`` (module docstring).
        learn_inner_lr: a vector φ ends with ``log(inner_lr)``.
        train_steps: hyper φ: outer steps of gradient meta-training before scoring.
        train_meta_batch: tasks per such step.
        train_lr: Adam's learning rate for it.
        train_source: the tasks of that training (default ``source``).
        seed: the seed of that training's tasks.
    """

    make_learner: LearnerFactory
    source: TaskSource
    phi: str = "vector"
    learn_inner_lr: bool = True
    train_steps: int = 0
    train_meta_batch: int = 10
    train_lr: float = 1e-3
    train_source: TaskSource | None = None
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


def phi_vector(learner: Learner, learn_inner_lr: bool = True) -> np.ndarray:
    """φ as one flat float64 vector: the initialisation, then ``log(inner_lr)``."""
    with torch.no_grad():
        v = parameters_to_vector(list(learner.meta_params().values())).double().cpu().numpy()
    return np.concatenate([v, [math.log(learner.inner_lr)]]) if learn_inner_lr else v


def check_phi(v: torch.Tensor, params: Sequence[torch.Tensor], learn_inner_lr: bool) -> int:
    """Validate a flat φ (its last dimension) for ``params``; return the number of weights."""
    n = sum(p.numel() for p in params)
    want = n + (1 if learn_inner_lr else 0)
    if v.shape[-1] != want:
        raise ValueError(f"φ has {v.shape[-1]} numbers, the learner needs {want} "
                         f"({n} weights{' + log inner_lr' if learn_inner_lr else ''})")
    if not torch.isfinite(v).all():
        raise ValueError("φ contains NaN or inf")
    return n


def load_phi_vector(learner: Learner, phi: Any, learn_inner_lr: bool = True) -> None:
    """Write a flat φ (see :func:`phi_vector`) into ``learner`` in place."""
    v = torch.as_tensor(np.asarray(phi, dtype=np.float64)).reshape(-1)
    params = list(learner.meta_params().values())
    n = check_phi(v, params, learn_inner_lr)
    with torch.no_grad():
        vector_to_parameters(v[:n].to(params[0].dtype), params)
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


def tasks_from_seeds(source: TaskSource, task_seeds: Sequence[TaskSeed]) -> list[Task]:
    """The tasks that ``task_seeds`` name (each seed is a task generator's entropy key)."""
    return [source.sample(np.random.default_rng([int(v) for v in s])) for s in task_seeds]


def meta_train_briefly(learner: Learner, source: TaskSource, steps: int, meta_batch: int,
                       lr: float, seed: int) -> None:
    """A short gradient meta-training (outer Adam) in place: the tasks of step ``s`` are
    ``task_rng(seed, 'train', s, i)``, so every candidate trains on the same tasks."""
    opt = torch.optim.Adam(learner.parameters(), lr=lr)
    learner.train()
    for step in range(steps):
        opt.zero_grad()
        learner.meta_backward(sample_tasks(source, seed, "train", step, meta_batch))
        opt.step()


def candidate_learner(phi: Any, spec: FitnessSpec) -> Learner:
    """The learner that candidate ``phi`` defines, ready to be scored."""
    if spec.phi == "vector":
        learner = spec.make_learner(None)
        load_phi_vector(learner, phi, spec.learn_inner_lr)
        return learner
    if not isinstance(phi, dict):
        raise TypeError(f"phi='hyper' needs φ as a dict of settings, got {type(phi).__name__}")
    learner = spec.make_learner(phi)
    if spec.train_steps:
        meta_train_briefly(learner, spec.train_source or spec.source, spec.train_steps,
                           spec.train_meta_batch, spec.train_lr, spec.seed)
    return learner


def evaluate_fitness(phi: Any, task_seeds: Sequence[TaskSeed], spec: FitnessSpec) -> float:
    """Mean post-adaptation query loss of φ over the tasks named by ``task_seeds`` (lower is
    better). A pure function of its arguments; NaN if the inner loop diverges."""
    if not task_seeds:
        raise ValueError("evaluate_fitness needs at least one task seed")
    learner = candidate_learner(phi, spec)
    losses, _ = learner.eval_episodes(tasks_from_seeds(spec.source, task_seeds))
    return float(losses.mean())


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

    def task_seeds(self, generation: int) -> list[list[int]]:
        return fitness_task_seeds(self.seed, generation if self.resample else 0,
                                  self.tasks_at(generation), self.stream)

    def __call__(self, phi: Any, generation: int) -> float:
        return evaluate_fitness(phi, self.task_seeds(generation), self.spec)

    def batch(self, phis: Sequence[Any], generation: int) -> list[float]:
        """Fitness of several candidates at once
        (:func:`metaphi.meta.batched_fitness.evaluate_population`)."""
        from .batched_fitness import evaluate_population

        return evaluate_population(phis, self.task_seeds(generation), self.spec)
