"""Backbones (Conv-4, ResNet-12, MLP, N-BEATS, text encoders, any timm model); any nn.Module works with
the learners. Each is registered in :data:`metaphi.registry.BACKBONES` under the name configs
use."""
from .backbones import Classifier, conv4, conv4_features, mlp, mlp_features
from .nbeats import NBeats
from .resnet import resnet12, resnet12_features
from .text import NGramBag, TextTransformer, TokenCNN
from . import timm_backbone  # noqa: F401  (registers the optional `timm` backbone)

__all__ = ["Classifier", "conv4", "conv4_features", "mlp", "mlp_features", "NBeats", "resnet12",
           "resnet12_features", "NGramBag", "TextTransformer", "TokenCNN"]
