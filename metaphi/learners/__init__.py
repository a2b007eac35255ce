"""Learners f_φ: a support set in, an adapted model out.

Every learner is registered in :data:`metaphi.registry.LEARNERS` under the name configs use.
"""
from .base import Adapted, Learner, eval_mode, train_mode
from .closed_form import R2D2
from .dg import ERM, MLDG, DGLearner, Fish
from .functional import forward, inner_loop, transductive_batchnorm
from .maml import ANIL, FOMAML, MAML, MetaSGD
from .metric import EmbeddingLearner, MatchingNet, ProtoNet
from .reptile import Reptile

__all__ = ["Adapted", "Learner", "eval_mode", "train_mode", "forward", "inner_loop",
           "transductive_batchnorm", "ANIL", "FOMAML", "MAML", "MetaSGD", "Reptile",
           "EmbeddingLearner", "MatchingNet", "ProtoNet", "R2D2", "DGLearner", "ERM", "MLDG",
           "Fish"]
