"""Momentum-SAM (Becker et al., "Momentum-SAM: Sharpness Aware Minimization without
Computational Overhead", 2024).

The perturbation follows the negative momentum of the base optimizer, so there is no ascent
pass (about SGD's cost):
    e = -rho v / ||v||,   descend with grad L(w + e)
v = SGD's momentum buffer, or the first moment (exp_avg) of Adam-type optimizers, as left by
the previous step; the first step (no momentum yet) is a plain step at w. The paper's rho is
much larger than SAM's (e.g. 3 for WRN-16-4 on CIFAR-100 with SGD, configs of
MarlonBecker/MSAM). Unlike the public code, which keeps the weights at w + e between steps
and applies weight decay there, the weights rest at w and the base optimizer decays w.
"""
from __future__ import annotations

import torch

from bench.engine.variants.base import Variant, register_variant

MOMENTUM_KEYS = ("momentum_buffer", "exp_avg")


@register_variant("msam")
class MSAM(Variant):
    """Momentum-SAM (Becker et al.): perturb along the base optimizer's negative momentum; no ascent pass"""

    ascent = False

    def __init__(self, m: int | None = None, sam_start_epoch: int = 0):
        super().__init__(m=m, sam_start_epoch=sam_start_epoch)

    def bind(self, sam):
        super().bind(sam)
        base = sam.base_optimizer
        sgd_momentum = all(g.get("momentum", 0) > 0 for g in base.param_groups)
        if not (sgd_momentum or all("betas" in g for g in base.param_groups)):
            raise ValueError(f"msam perturbs along the base optimizer's momentum; {type(base).__name__} "
                             f"has none (use SGD with momentum > 0 or an Adam-type optimizer)")

    def direction(self, names, params, grads):
        state = self.sam.base_optimizer.state
        bufs = []
        for p in params:
            buf = next((state[p][k] for k in MOMENTUM_KEYS if k in state.get(p, {})), None)
            if buf is None:
                return None  # no momentum yet: a plain step
            bufs.append(buf)
        return torch._foreach_neg(bufs)
