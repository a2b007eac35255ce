"""Meta-optimizers for φ that gradients cannot reach: typed search spaces, evolution
strategies (OpenAI-ES, CMA-ES), REINFORCE, and a pure, parallel fitness. The registry of
meta-optimizers (gradient and population) is :mod:`metaphi.meta.optimizers`.

Drive any of them with :func:`metaphi.loops.population.population_train`, or from a run config
(``meta_optimizer: {name: es}``) with ``metaphi train``.
"""
from .batched_fitness import evaluate_population
from .evaluator import PopulationEvaluator
from .evolution import CMAES, OpenAIES, centered_ranks
from .fitness import (FitnessSpec, TaskFitness, evaluate_fitness, fitness_task_seeds,
                      load_phi_vector, phi_vector)
from .reinforce import REINFORCE
from .space import Categorical, Float, Int, Space

__all__ = ["CMAES", "OpenAIES", "REINFORCE", "centered_ranks", "FitnessSpec",
           "PopulationEvaluator", "TaskFitness", "evaluate_fitness", "evaluate_population",
           "fitness_task_seeds", "load_phi_vector", "phi_vector", "Categorical", "Float", "Int",
           "Space"]
