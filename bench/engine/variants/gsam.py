"""GSAM (Zhuang et al., "Surrogate Gap Minimization Improves Sharpness-Aware Training", ICLR 2022).

    e = rho_t g / ||g||,   g_p = grad L(w + e)
    g_perp = g - (<g, g_p> / ||g_p||^2) g_p          (the clean gradient's part orthogonal to g_p)
    descend with g_p - alpha g_perp
(g, g_p over every tensor: the mask restricts only e.) With ``rho_min`` set, rho follows the
learning rate as in the paper's ImageNet runs:
    rho_t = rho_min + (rho - rho_min) lr_t / lr_max
with lr_max the base optimizer's learning rate when the optimizer was built (schedules that end
at lr 0); without it rho is constant. Default alpha = 0.2: the public PyTorch code's CIFAR
example (juntang-zhuang/GSAM; kozistr/pytorch-optimizer defaults to 0.4).
"""
from __future__ import annotations

import torch

from bench.engine.variants.base import EPS, Variant, check_number, dot, norm, register_variant


@register_variant("gsam")
class GSAM(Variant):
    """GSAM (Zhuang et al.): descend with g_p - alpha x (clean gradient orthogonal to g_p); rho_t with the lr (rho_min)"""

    full_gradient = True
    keeps_gradient = True

    def __init__(self, alpha: float = 0.2, rho_min: float | None = None, m: int | None = None,
                 sam_start_epoch: int = 0):
        super().__init__(m=m, sam_start_epoch=sam_start_epoch)
        self.alpha = check_number("alpha", alpha, 0.0)
        self.rho_min = None if rho_min is None else check_number("rho_min", rho_min, 0.0)
        self.lr_max: float | None = None

    def bind(self, sam):
        super().bind(sam)
        self.lr_max = float(sam.base_optimizer.param_groups[0]["lr"])

    def radius(self, rho):
        if self.rho_min is None or not self.lr_max:
            return rho
        lr = float(self.sam.base_optimizer.param_groups[0]["lr"])
        return self.rho_min + (rho - self.rho_min) * lr / self.lr_max

    @torch.no_grad()
    def correct_descent(self, grads, clean):
        names = [n for n in grads if n in clean]
        g_p, g = [grads[n] for n in names], [clean[n] for n in names]
        coef = float(dot(g, g_p) / (norm(g_p) ** 2 + EPS))
        for gp, c in zip(g_p, g):
            gp.add_(c - coef * gp, alpha=-self.alpha)  # g_p - alpha (g - coef g_p)

    def state_dict(self):
        return {"lr_max": self.lr_max}

    def load_state_dict(self, state, device):
        if state.get("lr_max") is not None:
            self.lr_max = float(state["lr_max"])
