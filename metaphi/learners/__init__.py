"""Learners f_φ: a support set in, an adapted model out."""
from .base import Learner
from .closed_form import R2D2
from .functional import forward, inner_loop, transductive_batchnorm
from .maml import ANIL, FOMAML, MAML, MetaSGD
from .metric import EmbeddingLearner, MatchingNet, ProtoNet
from .reptile import Reptile

__all__ = ["Learner", "forward", "inner_loop", "transductive_batchnorm", "ANIL", "FOMAML",
           "MAML", "MetaSGD", "Reptile"]
__all__ += ["EmbeddingLearner", "MatchingNet", "ProtoNet", "R2D2"]
