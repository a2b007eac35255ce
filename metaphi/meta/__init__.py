"""Meta-optimizers for φ that gradients cannot reach: typed search spaces, evolution
strategies (OpenAI-ES, CMA-ES), REINFORCE, and a pure, parallel fitness.

Drive any of them with :func:`metaphi.loops.population.population_train`.
"""
from .evolution import CMAES, OpenAIES, centered_ranks
from .fitness import (FitnessSpec, PopulationEvaluator, TaskFitness, build_learner,
                      evaluate_fitness, evaluate_population, fitness_task_seeds, load_phi_vector,
                      phi_vector)
from .reinforce import REINFORCE
from .space import Categorical, Float, Int, Space

__all__ = ["CMAES", "OpenAIES", "REINFORCE", "centered_ranks", "FitnessSpec",
           "PopulationEvaluator", "TaskFitness", "build_learner", "evaluate_fitness",
           "evaluate_population", "fitness_task_seeds", "load_phi_vector", "phi_vector",
           "Categorical", "Float", "Int", "Space", "make_optimizer"]


def make_optimizer(kind: str, space: Space | None = None, x0=None, seed: int = 0, **kw):
    """``'es'`` | ``'cmaes'`` | ``'reinforce'`` -> an ask/tell meta-optimizer (for configs)."""
    if kind == "es":
        return OpenAIES(x0=x0, space=space, seed=seed, **kw)
    if kind == "cmaes":
        return CMAES(x0=x0, space=space, seed=seed, **kw)
    if kind == "reinforce":
        if space is None:
            raise ValueError("meta_optimizer 'reinforce' needs a search space")
        return REINFORCE(space, seed=seed, **kw)
    raise ValueError(f"unknown meta_optimizer {kind!r}; choose 'es', 'cmaes' or 'reinforce'")
