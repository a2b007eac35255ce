"""Learners f_φ: a support set in, an adapted model out."""
from .base import Learner
from .functional import forward, inner_loop, transductive_batchnorm
from .maml import ANIL, FOMAML, MAML, MetaSGD
from .reptile import Reptile

__all__ = ["Learner", "forward", "inner_loop", "transductive_batchnorm", "ANIL", "FOMAML",
           "MAML", "MetaSGD", "Reptile"]
