"""The three masks of the SAM-ON paper: all parameters, norm layers only, all but norm."""
from __future__ import annotations

from masks.base import Mask, full_selection, norm_param_names, register_mask, trainable


@register_mask("all")
class AllMask(Mask):
    description = "every trainable parameter (dense SAM)"

    def __init__(self, seed: int = 0):
        super().__init__(seed=seed)

    def select(self, model, data):
        return full_selection(model, trainable(model))


@register_mask("norm_only")
class NormOnlyMask(Mask):
    description = "affine parameters of normalization layers only (SAM-ON), found by module type"

    def __init__(self, seed: int = 0):
        super().__init__(seed=seed)

    def select(self, model, data):
        return full_selection(model, norm_param_names(model))


@register_mask("no_norm")
class NoNormMask(Mask):
    description = "every parameter except those of normalization layers (ablation)"

    def __init__(self, seed: int = 0):
        super().__init__(seed=seed)

    def select(self, model, data):
        norms = set(norm_param_names(model))
        return full_selection(model, [n for n in trainable(model) if n not in norms])


@register_mask("none")
class NoneMask(Mask):
    """Perturbs nothing: the run is the plain base optimizer (a baseline, like variant ``none``)."""

    description = "perturbs nothing: the plain base optimizer, a baseline (as variant none)"
    perturbs = False

    def __init__(self, seed: int = 0):
        super().__init__(seed=seed)

    def select(self, model, data):
        return {}
