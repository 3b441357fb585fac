"""Models: CIFAR ResNets, pre-activation Wide ResNets, ResNeXt-29, ViTs (timm), tiny CI models.

``create_model(name, num_classes, in_chans, img_size)`` builds any registered model, any
``wrn<depth>_<width>`` and any timm model as ``timm:<name>`` (never pretrained). Every
model adapts to ``in_chans`` and ``img_size`` (the convnets end in global average
pooling) and carries ``mask_blocks``: the ordered module-name prefixes of its top-level
blocks/stages, used by layerwise mask strategies.

timm is imported lazily, only when a ViT or a ``timm:`` model is built.
"""
from bench.models import resnet, resnext, vit, wide_resnet  # noqa: F401  (register the families)
from bench.models.factory import (  # noqa: F401
    create_model,
    create_model_for,
    describe_models,
    has_batchnorm,
    model_has_batchnorm,
    pick_device,
)
from bench.models.resnet import BasicBlock, CifarResNet  # noqa: F401
from bench.models.resnext import ResNeXt  # noqa: F401
from bench.models.wide_resnet import WideResNet  # noqa: F401
