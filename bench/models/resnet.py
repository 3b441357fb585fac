"""CIFAR ResNets (He et al. 2016, option-A shortcuts): ResNet-20/32/56 and the tiny CI ResNet."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from bench.models.common import init_weights, stage_prefixes
from bench.registries import MODELS


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
        self.mask_blocks = stage_prefixes(len(widths))
        init_weights(self)

    def forward(self, x):
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


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


@MODELS.register("resnet_ci")
def resnet_ci(num_classes: int, in_chans: int = 3, img_size: int = 32) -> nn.Module:
    """Tiny BatchNorm ResNet for CI (1 BasicBlock per stage, widths 8/16/32)."""
    return CifarResNet(8, num_classes, in_chans, widths=(8, 16, 32), blocks=1)
