"""The baseline and the two variants of the SAM-ON paper: none, SAM and ASAM.

SAM (Foret et al., ICLR 2021):   e = rho g / ||g||         (p = 2)
                                 e = rho sign(g)           (p = inf)
ASAM (Kwon et al., ICML 2021):   e = rho T^2 g / ||T g||   (p = 2)
                                 e = rho T sign(g)         (p = inf)
    T = |w| + eta (elementwise) or ||w|| (1 + eta) (layerwise, one value per tensor), on
    tensors named weight; biases (BatchNorm beta included) get T = 1 unless normalize_bias.
    Defaults: eta = 0.01 (the ASAM paper and code), p = 2, elementwise.
"""
from __future__ import annotations

import torch

from bench.engine.variants.base import Variant, check_number, register_variant


def check_p(p) -> int | str:
    if p not in (2, "inf", float("inf")):
        raise ValueError(f"p={p!r}: allowed values are 2, inf")
    return 2 if p == 2 else "inf"


@register_variant("none")
class NoVariant(Variant):
    """plain base optimizer (SGD/AdamW baseline): no ascent step"""

    perturbs = False

    def __init__(self):
        super().__init__()


@register_variant("sam")
class SAMVariant(Variant):
    """SAM (Foret et al.): e = rho g/||g|| (p=2) or rho sign(g) (p=inf)"""

    def __init__(self, p: int | str = 2, m: int | None = None, sam_start_epoch: int = 0):
        super().__init__(m=m, sam_start_epoch=sam_start_epoch)
        self.p = check_p(p)


@register_variant("asam")
class ASAMVariant(Variant):
    """ASAM (Kwon et al.): e = rho T^2 g/||Tg||, T = |w|+eta (elementwise) or ||w||(1+eta) (layerwise)"""

    def __init__(self, adaptive: str = "elementwise", p: int | str = 2, eta: float = 0.01,
                 normalize_bias: bool = False, m: int | None = None, sam_start_epoch: int = 0):
        super().__init__(m=m, sam_start_epoch=sam_start_epoch)
        self.p = check_p(p)
        if adaptive not in ("elementwise", "layerwise"):
            raise ValueError(f"adaptive={adaptive!r}: allowed values are elementwise, layerwise")
        self.eta = check_number("eta", eta, 0.0)
        if not isinstance(normalize_bias, bool):
            raise ValueError(f"normalize_bias={normalize_bias!r}: allowed values are true, false")
        self.adaptive, self.normalize_bias = adaptive, normalize_bias

    def scales(self, names, params):
        out = []
        for name, w in zip(names, params):
            leaf = name.rsplit(".", 1)[-1]
            if "weight" not in leaf and not self.normalize_bias:
                out.append(None)  # biases (and BatchNorm beta) are not rescaled by default
            elif self.adaptive == "elementwise":
                out.append(w.detach().abs().add_(self.eta))
            else:
                out.append(torch.linalg.vector_norm(w.detach()).mul_(1.0 + self.eta))
        return out
