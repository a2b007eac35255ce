"""Backbones (Conv-4, MLP, text encoders); any nn.Module works with the learners. Each is registered in
:data:`metaphi.registry.BACKBONES` under the name configs use."""
from .backbones import Classifier, conv4, conv4_features, mlp, mlp_features
from .text import NGramBag, TextTransformer, TokenCNN

__all__ = ["Classifier", "conv4", "conv4_features", "mlp", "mlp_features", "NGramBag",
           "TextTransformer", "TokenCNN"]
