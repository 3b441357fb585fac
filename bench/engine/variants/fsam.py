"""Friendly-SAM (Li et al., "Friendly Sharpness-Aware Minimization", CVPR 2024).

The perturbation follows the batch gradient minus an EMA of past gradients (the "full
gradient" part, which the paper finds harmful):
    step 1:  d = g,                 m <- g
    later:   d = g - sigma m,       then m <- lmbda m + (1 - lmbda) g
    e = rho d / ||d||
The EMA m (state; not the m-sharpness option m) lives on the ascent tensors (the perturbed
ones; every tensor with rho_norm="full"); a tensor that joins a changing mask starts its m at its
g, one that leaves drops it. Defaults sigma = 1, lmbda = 0.9: the public code's FriendlySAM class
(nblt/F-SAM; its run.sh uses lmbda = 0.95 for CIFAR-100).
"""
from __future__ import annotations

import torch

from bench.engine.variants.base import Variant, check_number, register_variant


@register_variant("fsam")
class FSAM(Variant):
    """Friendly-SAM (Li et al.): perturb along g - sigma x (EMA with decay lmbda of past gradients)"""

    keeps_gradient = True

    def __init__(self, sigma: float = 1.0, lmbda: float = 0.9, m: int | None = None, sam_start_epoch: int = 0):
        super().__init__(m=m, sam_start_epoch=sam_start_epoch)
        self.sigma = check_number("sigma", sigma, 0.0)
        self.lmbda = check_number("lmbda", lmbda, 0.0, 1.0)
        self.ema: dict[str, torch.Tensor] = {}

    def direction(self, names, params, grads):
        return [g if n not in self.ema else g - self.sigma * self.ema[n] for n, g in zip(names, grads)]

    @torch.no_grad()
    def correct_descent(self, grads, clean):
        ema = {}
        for n, g in clean.items():  # tensors that left the ascent set drop their m
            if n in self.ema:
                ema[n] = self.ema[n].mul_(self.lmbda).add_(g, alpha=1.0 - self.lmbda)
            else:
                ema[n] = g.detach().clone()
        self.ema = ema

    def state_dict(self):
        return {"ema": {n: t.detach().cpu() for n, t in self.ema.items()}}

    def load_state_dict(self, state, device):
        self.ema = {n: t.to(device) for n, t in state.get("ema", {}).items()}
