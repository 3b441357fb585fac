"""Models: CIFAR ResNets, pre-activation Wide ResNets, ResNeXt-29, ViTs (timm), tiny CI models.

``create_model(name, num_classes, in_chans, img_size)`` builds any registered model, any
``wrn<depth>_<width>`` and any timm model as ``timm:<name>`` (never pretrained). Every
model adapts to ``in_chans`` and ``img_size`` (the convnets end in global average
pooling) and carries ``mask_blocks``: the ordered module-name prefixes of its top-level
blocks/stages, used by layerwise mask strategies.

timm is imported lazily, only when a ViT or a ``timm:`` model is built.
"""
from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from bench.registries import MODELS, UnknownNameError, parse_model_name


def pick_device(name: str):
    """``auto``: cuda when available, else cpu; otherwise the named device."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, a=5 ** 0.5)  # torch's default for Linear
            if m.bias is not None:
                bound = 1 / m.weight.shape[1] ** 0.5
                nn.init.uniform_(m.bias, -bound, bound)


def _stage_prefixes(n: int, name: str = "stages") -> list[str]:
    return [f"{name}.{i}" for i in range(n)]


# --- CIFAR ResNet (He et al. 2016, option-A shortcuts) ------------------------------------

class _ShortcutA(nn.Module):
    """Parameter-free shortcut: subsample by stride, zero-pad the new channels."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.stride, self.extra = stride, planes - in_planes

    def forward(self, x):
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        lo = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, lo, self.extra - lo))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = (_ShortcutA(in_planes, planes, stride) if stride != 1 or in_planes != planes
                         else nn.Identity())

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images: 3 stages of n BasicBlocks (widths w, 2w, 4w)."""

    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 3,
                 widths: tuple[int, int, int] = (16, 32, 64), blocks: int | None = None):
        super().__init__()
        n = blocks if blocks is not None else (depth - 2) // 6
        if blocks is None and ((depth - 2) % 6 or n < 1):
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages, in_planes = [], widths[0]
        for i, w in enumerate(widths):
            layers = []
            for j in range(n):
                layers.append(BasicBlock(in_planes, w, 2 if (i > 0 and j == 0) else 1))
                in_planes = w
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        self.mask_blocks = _stage_prefixes(len(widths))
        _init_weights(self)

    def forward(self, x):
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


# --- Wide ResNet (pre-activation; as in the SAM / SAM-ON code) ----------------------------

class _WideUnit(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, with a 1x1 conv shortcut on the
    pre-activated input when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(in_planes, planes, 1, stride, 0, bias=False)
                         if stride != 1 or in_planes != planes else None)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        out = self.conv1(o)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + (self.shortcut(o) if self.shortcut is not None else x)


class WideResNet(nn.Module):
    """WRN-depth-k: conv3x3(16), 3 groups of (depth-4)/6 pre-activation units (16k, 32k, 64k),
    BN-ReLU, global average pool, linear."""

    def __init__(self, depth: int, width: int, num_classes: int = 10, in_chans: int = 3,
                 dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 or depth < 10 or width < 1:
            raise ValueError(f"WRN depth must be 6n+4 (>= 10) and width >= 1, got {depth}, {width}")
        n = (depth - 4) // 6
        widths = (16 * width, 32 * width, 64 * width)
        self.stem = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        stages, in_planes = [], 16
        for i, w in enumerate(widths):
            units = []
            for j in range(n):
                units.append(_WideUnit(in_planes, w, 2 if (i > 0 and j == 0) else 1, dropout))
                in_planes = w
            stages.append(nn.Sequential(*units))
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(in_planes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        self.mask_blocks = _stage_prefixes(3)
        _init_weights(self)

    def forward(self, x):
        x = self.stages(self.stem(x))
        x = F.relu(self.bn(x))
        return self.fc(torch.flatten(self.pool(x), 1))


# --- ResNeXt-29 (CIFAR) ----------------------------------------------------------------

class _ResNeXtBlock(nn.Module):
    def __init__(self, in_planes: int, group_width: int, cardinality: int, stride: int):
        super().__init__()
        out = 2 * group_width
        self.conv1 = nn.Conv2d(in_planes, group_width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(group_width)
        self.conv2 = nn.Conv2d(group_width, group_width, 3, stride, 1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(group_width)
        self.conv3 = nn.Conv2d(group_width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != out:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out, 1, stride, bias=False),
                                          nn.BatchNorm2d(out))

    def forward(self, x):
        o = F.relu(self.bn1(self.conv1(x)))
        o = F.relu(self.bn2(self.conv2(o)))
        o = self.bn3(self.conv3(o))
        return F.relu(o + self.shortcut(x))


class ResNeXt(nn.Module):
    """CIFAR ResNeXt (Xie et al. 2017): conv3x3(64), 3 stages of bottleneck blocks with
    grouped 3x3 convs (group width C*d, doubling per stage; output 2x group width)."""

    def __init__(self, blocks: int = 3, cardinality: int = 32, base_width: int = 4,
                 num_classes: int = 10, in_chans: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True))
        stages, in_planes = [], 64
        for i in range(3):
            gw = cardinality * base_width * 2 ** i
            layers = []
            for j in range(blocks):
                layers.append(_ResNeXtBlock(in_planes, gw, cardinality, 2 if (i > 0 and j == 0) else 1))
                in_planes = 2 * gw
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        self.mask_blocks = _stage_prefixes(3)
        _init_weights(self)

    def forward(self, x):
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


# --- ViTs (timm) -----------------------------------------------------------------------

def _patch_for(img_size: int, patch: int) -> int:
    """The largest patch size <= ``patch`` that divides ``img_size``."""
    return next(p for p in range(min(patch, img_size), 0, -1) if img_size % p == 0)


def _vit(num_classes: int, in_chans: int, img_size: int, *, dim: int, depth: int, heads: int,
         patch: int) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=img_size, patch_size=_patch_for(img_size, patch),
                              in_chans=in_chans, num_classes=num_classes, embed_dim=dim,
                              depth=depth, num_heads=heads)
    model.mask_blocks = [f"blocks.{i}" for i in range(depth)]
    return model


# --- registered builders: (num_classes, in_chans, img_size) -> nn.Module -------------------

@MODELS.register("resnet20")
def resnet20(num_classes: int, in_chans: int = 3, img_size: int = 32) -> nn.Module:
    """CIFAR ResNet-20 (3x3 BasicBlocks, widths 16/32/64, BatchNorm), 0.27M params."""
    return CifarResNet(20, num_classes, in_chans)


@MODELS.register("resnet32")
def resnet32(num_classes: int, in_chans: int = 3, img_size: int = 32) -> nn.Module:
    """CIFAR ResNet-32 (5 BasicBlocks per stage, widths 16/32/64, BatchNorm), 0.46M params."""
    return CifarResNet(32, num_classes, in_chans)


@MODELS.register("resnet56")
def resnet56(num_classes: int, in_chans: int = 3, img_size: int = 32) -> nn.Module:
    """CIFAR ResNet-56 (9 BasicBlocks per stage, widths 16/32/64, BatchNorm), 0.85M params."""
    return CifarResNet(56, num_classes, in_chans)


def _wrn_builder(depth: int, width: int) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_chans: int = 3, img_size: int = 32) -> nn.Module:
        return WideResNet(depth, width, num_classes, in_chans)

    build.__doc__ = (f"Wide ResNet-{depth}-{width} (pre-activation BN-ReLU-conv, widths "
                     f"{16 * width}/{32 * width}/{64 * width}, BatchNorm), as in the SAM code.")
    build.__name__ = f"wrn{depth}_{width}"
    return build


MODELS.register("wrn16_4")(_wrn_builder(16, 4))
MODELS.register("wrn28_10")(_wrn_builder(28, 10))


@MODELS.register("resnext29_32x4d")
def resnext29_32x4d(num_classes: int, in_chans: int = 3, img_size: int = 32) -> nn.Module:
    """CIFAR ResNeXt-29 32x4d (cardinality 32, base width 4, BatchNorm), 4.8M params."""
    return ResNeXt(3, 32, 4, num_classes, in_chans)


@MODELS.register("vit_t")
def vit_t(num_classes: int, in_chans: int = 3, img_size: int = 32) -> nn.Module:
    """ViT-Tiny via timm (dim 192, depth 12, 3 heads, patch 4, LayerNorm); the patch is the
    largest size <= 4 that divides img_size."""
    return _vit(num_classes, in_chans, img_size, dim=192, depth=12, heads=3, patch=4)


@MODELS.register("vit_s")
def vit_s(num_classes: int, in_chans: int = 3, img_size: int = 32) -> nn.Module:
    """ViT-Small via timm (dim 384, depth 12, 6 heads, patch 4, LayerNorm); the patch is the
    largest size <= 4 that divides img_size."""
    return _vit(num_classes, in_chans, img_size, dim=384, depth=12, heads=6, patch=4)


@MODELS.register("vit_s32")
def vit_s32(num_classes: int, in_chans: int = 3, img_size: int = 224) -> nn.Module:
    """ViT-S/32 via timm (dim 384, depth 12, 6 heads, patch 32, LayerNorm; timm's
    vit_small_patch32_224 shape), the SAM-ON paper's ImageNet model; the patch is the largest size
    <= 32 that divides img_size."""
    return _vit(num_classes, in_chans, img_size, dim=384, depth=12, heads=6, patch=32)


@MODELS.register("resnet_ci")
def resnet_ci(num_classes: int, in_chans: int = 3, img_size: int = 32) -> nn.Module:
    """Tiny BatchNorm ResNet for CI (1 BasicBlock per stage, widths 8/16/32)."""
    return CifarResNet(8, num_classes, in_chans, widths=(8, 16, 32), blocks=1)


@MODELS.register("vit_ci")
def vit_ci(num_classes: int, in_chans: int = 3, img_size: int = 32) -> nn.Module:
    """Tiny LayerNorm ViT for CI via timm (dim 32, depth 2, 2 heads); patch img_size/4 when
    that divides (2 on 8x8, 8 on 32x32), else the largest <= img_size/4 that divides."""
    return _vit(num_classes, in_chans, img_size, dim=32, depth=2, heads=2,
                patch=max(1, img_size // 4))


# --- timm models ----------------------------------------------------------------------

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


# --- public API ------------------------------------------------------------------------

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
    from bench.data import dataset_shape

    num_classes, in_chans, img_size = dataset_shape(dataset)
    return create_model(name, num_classes=num_classes, in_chans=in_chans, img_size=img_size)


def describe_models() -> list[tuple[str, str]]:
    """(name, one-line description) for ``sambench list models``."""
    out = [(n, " ".join(inspect.getdoc(fn).split()) if fn.__doc__ else "") for n, fn in MODELS.items()]
    out.append(("wrn<depth>_<width>", "any Wide ResNet with depth = 6n+4 >= 10, e.g. wrn40_2"))
    out.append(("timm:<name>", "any timm model, built without pretrained weights"))
    return out


@functools.lru_cache(maxsize=256)
def has_batchnorm(name: str, dataset: str) -> bool:
    """Whether the model has a BatchNorm layer (built on the meta device: no memory, no init cost)."""
    with torch.device("meta"):
        model = create_model_for(name, dataset)
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
