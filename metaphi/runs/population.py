"""Population runs from a run config: ES, CMA-ES or REINFORCE over φ, then cross-task testing
like every run.

φ is either the learner's flat initialisation (``fitness.phi: vector``; with its log inner
learning rate) or a point of a search space over config settings (``fitness.phi: hyper``,
``space: {learner.inner_lr: {type: float, ...}, model.hidden: {type: categorical, ...}}``).
A candidate is scored on ``meta_batch`` tasks per generation: meta-train tasks for a vector φ
(ES then plays the role of the gradient meta-optimizer), meta-validation tasks for a hyper φ
(whose candidates are meta-trained first, so scoring them on meta-train tasks would reward
over-fitting). The deployed φ is the optimizer's center.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..learners.base import Learner
from ..loops.population import PopulationOptions, PopulationResult, population_train
from ..meta.fitness import FitnessSpec, TaskFitness, candidate_learner, phi_vector
from ..meta.space import Space
from ..registry import META_OPTIMIZERS
from .build import build_learner, build_sources
from .config import RunConfig, apply_overrides, fingerprint, plain, validate_config


@dataclass(frozen=True)
class ConfigLearner:
    """A picklable learner factory: ``(overrides or None) -> Learner`` built from a run config
    (kept as JSON, so it is hashable and travels to worker processes). Overrides are config
    paths (``{"learner.inner_lr": 0.1}``); the initial weights depend only on the config."""

    config: str

    @classmethod
    def of(cls, cfg: RunConfig) -> "ConfigLearner":
        return cls(json.dumps(plain(cfg), sort_keys=True))

    def __call__(self, overrides: dict[str, Any] | None = None) -> Learner:
        data = json.loads(self.config)
        if overrides:
            data = apply_overrides(data, overrides)
        return build_learner(validate_config(data))


def fitness_spec(cfg: RunConfig) -> FitnessSpec:
    """What the run's candidates are and which tasks score them."""
    splits = build_sources(cfg)
    f = cfg.fitness
    hyper = f.phi == "hyper"
    return FitnessSpec(ConfigLearner.of(cfg),
                       (splits.val or splits.train) if hyper else splits.train,
                       phi=f.phi, learn_inner_lr=f.learn_inner_lr, train_steps=f.train_steps,
                       train_meta_batch=f.train_meta_batch, train_lr=f.train_lr,
                       train_source=splits.train, seed=cfg.seed)


def task_fitness(cfg: RunConfig) -> TaskFitness:
    """The run's fitness function ``(phi, generation) -> float``."""
    f = cfg.fitness
    return TaskFitness(fitness_spec(cfg), n_tasks=cfg.meta_batch, seed=cfg.seed,
                       resample=f.resample, more_tasks=tuple(map(tuple, f.more_tasks)))


def build_population_optimizer(cfg: RunConfig) -> Any:
    """The run's ask/tell meta-optimizer, starting from the learner's seeded weights (vector φ)
    or from the search space (hyper φ)."""
    space = Space.from_config(cfg.space) if cfg.space else None
    x0 = (phi_vector(build_learner(cfg), cfg.fitness.learn_inner_lr)
          if cfg.fitness.phi == "vector" else None)
    entry = META_OPTIMIZERS.get(cfg.meta_optimizer.name)
    return entry.obj(cfg.meta_optimizer, x0, space, cfg.seed, cfg.steps)


def population_meta_train(cfg: RunConfig, out: Path, resume: bool,
                          progress: bool) -> tuple[PopulationResult, Learner, dict[str, Any]]:
    """Run the population search; return its result, the deployed learner (φ = the center)
    and the config overrides that rebuild it (the center's settings or inner lr)."""
    optimizer = build_population_optimizer(cfg)
    fitness = task_fitness(cfg)
    res = population_train(optimizer, fitness, out, PopulationOptions(
        generations=cfg.steps, resume=resume, workers=cfg.workers, progress=progress,
        config={"fingerprint": fingerprint(cfg)}, max_seconds=cfg.max_seconds))
    learner = candidate_learner(res.center, fitness.spec)
    if cfg.fitness.phi == "hyper":
        overrides = dict(res.center)
    else:
        overrides = ({"learner.inner_lr": float(learner.inner_lr)}
                     if cfg.fitness.learn_inner_lr else {})
    return res, learner, overrides


def population_summary(res: PopulationResult) -> dict[str, Any]:
    """The population-specific part of a run's results.json."""
    best = res.best if isinstance(res.best, dict) else None  # vectors are in best.pt
    return {"best_fitness": res.best_fitness, "best": best,
            "generations": res.generations, "evaluations": res.evaluations,
            "final_mean_fitness": res.history[-1]["mean_fitness"] if res.history else None}
