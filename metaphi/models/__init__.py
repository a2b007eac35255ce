"""Backbones (Conv-4, MLP); any nn.Module works with the learners."""
from .backbones import Classifier, conv4, conv4_features, mlp

__all__ = ["Classifier", "conv4", "conv4_features", "mlp"]
