"""Shared by the convnets: He initialization and the names of top-level stages."""
from __future__ import annotations

from torch import nn


def init_weights(model: nn.Module) -> None:
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


def stage_prefixes(n: int, name: str = "stages") -> list[str]:
    return [f"{name}.{i}" for i in range(n)]
