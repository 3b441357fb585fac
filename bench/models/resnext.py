"""ResNeXt-29 for CIFAR (Xie et al. 2017): grouped-convolution bottleneck blocks."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from bench.models.common import init_weights, stage_prefixes
from bench.registries import MODELS


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
        self.mask_blocks = stage_prefixes(3)
        init_weights(self)

    def forward(self, x):
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


@MODELS.register("resnext29_32x4d")
def resnext29_32x4d(num_classes: int, in_chans: int = 3, img_size: int = 32) -> nn.Module:
    """CIFAR ResNeXt-29 32x4d (cardinality 32, base width 4, BatchNorm), 4.8M params."""
    return ResNeXt(3, 32, 4, num_classes, in_chans)
