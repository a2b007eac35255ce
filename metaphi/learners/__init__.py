"""Learners f_φ: a support set in, an adapted model out.

Every learner is registered in :data:`metaphi.registry.LEARNERS` under the name configs use.
"""
from .base import Adapted, Learner, eval_mode, train_mode
from .baseline import Baseline, BaselinePP
from .closed_form import R2D2
from .dg import ERM, MLDG, DGLearner, Fish
from .functional import forward, inner_loop, transductive_batchnorm
from .imaml import IMAML
from .learned_opt import LearnedOptimizer
from .lexical import ProtoNetTfidf
from .maml import ANIL, FOMAML, MAML, MetaSGD
from .mamlpp import MAMLpp
from .metric import EmbeddingLearner, MatchingNet, ProtoNet
from .relation import RelationNet
from .reptile import Reptile
from .svm import MetaOptNetSVM

__all__ = ["Adapted", "Learner", "eval_mode", "train_mode", "forward", "inner_loop",
           "transductive_batchnorm", "ANIL", "FOMAML", "IMAML", "MAML", "MAMLpp", "MetaSGD",
           "Reptile", "EmbeddingLearner", "MatchingNet", "ProtoNet", "R2D2", "Baseline",
           "BaselinePP", "RelationNet", "MetaOptNetSVM", "LearnedOptimizer", "DGLearner", "ERM",
           "MLDG", "Fish", "ProtoNetTfidf"]
