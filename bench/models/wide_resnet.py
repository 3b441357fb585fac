"""Wide ResNets (pre-activation, as in the SAM and SAM-ON code): WRN-16-4, WRN-28-10, any wrnD_W."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from bench.models.common import init_weights, stage_prefixes
from bench.registries import MODELS


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
        self.mask_blocks = stage_prefixes(3)
        init_weights(self)

    def forward(self, x):
        x = self.stages(self.stem(x))
        x = F.relu(self.bn(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def _wrn_builder(depth: int, width: int) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_chans: int = 3, img_size: int = 32) -> nn.Module:
        return WideResNet(depth, width, num_classes, in_chans)

    build.__doc__ = (f"Wide ResNet-{depth}-{width} (pre-activation BN-ReLU-conv, widths "
                     f"{16 * width}/{32 * width}/{64 * width}, BatchNorm), as in the SAM code.")
    build.__name__ = f"wrn{depth}_{width}"
    return build


MODELS.register("wrn16_4")(_wrn_builder(16, 4))
MODELS.register("wrn28_10")(_wrn_builder(28, 10))
