"""Any `timm <https://github.com/huggingface/pytorch-image-models>`_ model as a backbone.

timm is optional: it is imported when a ``timm`` backbone is built, with a clear error when it
is not installed (``pip install timm``). The model is created with ``num_classes=0`` (timm's
pooled feature extractor) and the tasks' input channels; learners that adapt a head get a
linear layer on top (:class:`~metaphi.models.Classifier`). Pretrained weights are off by
default: they are downloaded from a hub, which a machine without network access cannot do;
with weights already in timm's cache (or ``pretrained_cfg_overlay=dict(file=...)`` in
``create_kwargs``) ``pretrained: true`` loads them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field
from torch import nn

from ..registry import Options, register_backbone
from .backbones import Classifier

if TYPE_CHECKING:
    from ..tasks.sources import TaskInfo


class TimmOptions(Options):
    """``model:`` options of a timm backbone."""

    name: str = "timm"
    model_name: str = Field("resnet18", description="a timm model name (timm.list_models())")
    pretrained: bool = Field(False, description="load timm's pretrained weights (needs them "
                             "in timm's cache or network access)")
    create_kwargs: dict[str, Any] = Field(default_factory=dict, description="more keyword "
                                          "arguments for timm.create_model (e.g. drop_rate)")


def import_timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ImportError("model.name 'timm' needs the timm package: pip install timm (it is "
                          "not a dependency of metaphi)") from None
    return timm


@register_backbone("timm", options=TimmOptions, inputs=("image",))
def build_timm(o: TimmOptions, info: "TaskInfo", out_dim: int | None) -> nn.Module:
    timm = import_timm()
    features = timm.create_model(o.model_name, pretrained=o.pretrained, num_classes=0,
                                 in_chans=info.input_shape[0], **o.create_kwargs)
    if out_dim is None:
        return features
    return Classifier(features, nn.Linear(features.num_features, out_dim))
