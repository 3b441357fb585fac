"""LookSAM (Liu et al., "Towards Efficient and Scalable Sharpness-Aware Minimization", CVPR 2022).

Every k steps (steps 0, k, 2k, ... of the SAM phase) a SAM step, which also stores the part
of the SAM gradient orthogonal to the clean gradient g (over all tensors):
    g_s = grad L(w + e),   g_v = g_s - (<g, g_s> / ||g||^2) g,   descend with g_s
In between, one forward/backward at w and
    descend with g + alpha (||g|| / ||g_v||) g_v
(g, g_s, g_v over every tensor: the mask restricts only e.) Defaults k = 5, alpha = 0.7: the
paper's LookSAM-5 setting. (kozistr/pytorch-optimizer's LookSAM projects tensor by tensor;
on a model with one tensor both are the same, which the tests use.)
"""
from __future__ import annotations

import torch

from bench.engine.variants.base import EPS, Variant, check_integer, check_number, dot, norm, register_variant


@register_variant("looksam")
class LookSAM(Variant):
    """LookSAM (Liu et al.): SAM every k steps, storing g_v; in between g + alpha ||g||/||g_v|| g_v"""

    full_gradient = True
    keeps_gradient = True

    def __init__(self, k: int = 5, alpha: float = 0.7, m: int | None = None, sam_start_epoch: int = 0):
        super().__init__(m=m, sam_start_epoch=sam_start_epoch)
        self.k = check_integer("k", k, 1)
        self.alpha = check_number("alpha", alpha, 0.0)
        self.g_v: dict[str, torch.Tensor] = {}

    def sam_step(self, step):
        return step % self.k == 0

    @torch.no_grad()
    def correct_descent(self, grads, clean):
        names = [n for n in grads if n in clean]
        g_s, g = [grads[n] for n in names], [clean[n] for n in names]
        coef = dot(g, g_s) / (norm(g) ** 2 + EPS)
        self.g_v = {n: s - coef * c for n, s, c in zip(names, g_s, g)}

    @torch.no_grad()
    def correct_plain(self, grads):
        names = [n for n in grads if n in self.g_v]
        if not names:
            return
        g, g_v = [grads[n] for n in names], [self.g_v[n] for n in names]
        torch._foreach_add_(g, g_v, alpha=float(self.alpha * norm(g) / (norm(g_v) + EPS)))

    def state_dict(self):
        return {"g_v": {n: t.detach().cpu() for n, t in self.g_v.items()}}

    def load_state_dict(self, state, device):
        self.g_v = {n: t.to(device) for n, t in state.get("g_v", {}).items()}
