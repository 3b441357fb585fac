"""Build any model by name: registered, ``wrnD_W`` or ``timm:<name>`` (never pretrained)."""
from __future__ import annotations

import functools
import inspect
import re

import torch
from torch import nn

from bench.models.wide_resnet import WideResNet
from bench.registries import MODELS, UnknownNameError, parse_model_name


def pick_device(name: str):
    """``auto``: cuda when available, else cpu; otherwise the named device."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _guess_mask_blocks(model: nn.Module) -> list[str]:
    children = dict(model.named_children())
    for container in ("blocks", "stages", "layers"):
        seq = children.get(container)
        if isinstance(seq, (nn.Sequential, nn.ModuleList)) and len(seq):
            return [f"{container}.{i}" for i in range(len(seq))]
    layers = sorted((n for n in children if re.fullmatch(r"layer\d+", n)), key=lambda n: int(n[5:]))
    if layers:
        return layers
    return [n for n, m in children.items() if any(True for _ in m.parameters())]


def _timm_model(name: str, num_classes: int, in_chans: int, img_size: int) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise UnknownNameError("timm model", name, ["see timm.list_models()"])
    kwargs = {"pretrained": False, "num_classes": num_classes, "in_chans": in_chans}
    try:
        model = timm.create_model(name, img_size=img_size, **kwargs)
    except TypeError as e:  # the model does not take img_size
        if "img_size" not in str(e):
            raise
        model = timm.create_model(name, **kwargs)
    model.mask_blocks = _guess_mask_blocks(model)
    return model


def create_model(name: str, num_classes: int, in_chans: int = 3, img_size: int = 32) -> nn.Module:
    """Build a model by name: registered, ``wrnD_W`` (D = 6n+4 >= 10) or ``timm:<name>``
    (the rule is :func:`bench.registries.parse_model_name`, shared with config validation)."""
    kind, *args = parse_model_name(name)
    if kind == "registered":
        model = MODELS.get(name)(num_classes, in_chans, img_size)
    elif kind == "wrn":
        model = WideResNet(args[0], args[1], num_classes, in_chans)
    else:
        model = _timm_model(args[0], num_classes, in_chans, img_size)
    if not hasattr(model, "mask_blocks"):
        model.mask_blocks = _guess_mask_blocks(model)
    return model


def create_model_for(name: str, dataset: str) -> nn.Module:
    """Build a model for a registered dataset's shape (classes, channels, image size)."""
    from bench.data.datasets import dataset_shape

    num_classes, in_chans, img_size = dataset_shape(dataset)
    return create_model(name, num_classes=num_classes, in_chans=in_chans, img_size=img_size)


def describe_models() -> list[tuple[str, str]]:
    """(name, one-line description) for ``sambench list models``."""
    out = [(n, " ".join(inspect.getdoc(fn).split()) if fn.__doc__ else "") for n, fn in MODELS.items()]
    out.append(("wrn<depth>_<width>", "any Wide ResNet with depth = 6n+4 >= 10, e.g. wrn40_2"))
    out.append(("timm:<name>", "any timm model, built without pretrained weights"))
    return out


def has_batchnorm(model: nn.Module) -> bool:
    """Whether the model has a BatchNorm layer (BatchNorm1d/2d/3d, SyncBatchNorm)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@functools.lru_cache(maxsize=256)
def model_has_batchnorm(name: str, dataset: str) -> bool:
    """:func:`has_batchnorm` of a model by name, for a dataset's shape (built on the meta device: no
    memory, no init cost)."""
    with torch.device("meta"):
        return has_batchnorm(create_model_for(name, dataset))
