"""Whole layers chosen by their gradient norm (the layer selection of SL-SAM-style sparse SAM).

Layers are those of masks.layerwise (a module owning trainable parameters directly). At the
start and every ``update_every`` epochs, the gradient of the mean cross-entropy (true labels)
is taken on ``num_batches`` batches (model in eval mode, ``.grad`` untouched), each layer is
scored by the norm of its gradient, and layers are taken in descending score, first-fit, up to
``target_count`` elements (the count never exceeds it and no left-out layer would fit; if no
layer fits, the smallest one alone). ``per_element=True`` scores ||g_layer|| / sqrt(size), so
large layers are not favoured for their size.
"""
from __future__ import annotations

import math

from masks.base import (
    Mask,
    MaskError,
    check_choice,
    check_int,
    check_required_sparsity,
    check_seed,
    full_selection,
    register_mask,
    trainable,
)
from masks.dynamic import grad_magnitude
from masks.layerwise import model_layers


def fit_in_order(sizes: list[int], order: list[int], target: int) -> list[int]:
    """Items in ``order``, each taken if the running count stays <= target (smallest alone if none fits)."""
    chosen, count = [], 0
    for i in order:
        if count + sizes[i] <= target:
            chosen.append(i)
            count += sizes[i]
    if not chosen and sizes:
        chosen = [min(range(len(sizes)), key=lambda i: (sizes[i], i))]
    return sorted(chosen)


@register_mask("gradnorm_layers")
class GradNormLayersMask(Mask):
    """Whole layers with the largest gradient norm, first-fit to the sparsity, re-chosen every update_every epochs."""

    description = "whole layers by largest gradient norm, first-fit to the sparsity; re-chosen every update_every epochs"
    uses_sparsity = True
    needs_data = True

    def __init__(self, sparsity: float | str | None = None, seed: int = 0, update_every: int | None = 1,
                 num_batches: int = 1, per_element: bool = False):
        super().__init__(sparsity=sparsity, seed=seed)
        check_required_sparsity(self)
        check_seed(self, seed)
        check_int(self, "update_every", update_every, minimum=0, allow_none=True)
        check_int(self, "num_batches", num_batches)
        check_choice(self, "per_element", per_element, [True, False])
        self.update_every = update_every or None
        self.num_batches, self.per_element = num_batches, bool(per_element)

    def layer_scores(self, model, data) -> list[float]:
        grads = grad_magnitude(model, data, self.num_batches)
        scores = []
        for _, _, names in model_layers(model):
            sq = sum(float(grads[n].double().square().sum()) for n in names)
            size = sum(grads[n].numel() for n in names)
            scores.append(math.sqrt(sq / size) if self.per_element else math.sqrt(sq))
        return scores

    def select(self, model, data):
        layers = model_layers(model)
        if not layers:
            raise MaskError(f"{type(model).__name__} has no trainable layer")
        params = trainable(model)
        sizes = [sum(params[n].numel() for n in names) for _, _, names in layers]
        scores = self.layer_scores(model, data)
        order = sorted(range(len(layers)), key=lambda i: (-scores[i], i))
        chosen = fit_in_order(sizes, order, self.target_count(model, data))
        return full_selection(model, [n for i in chosen for n in layers[i][2]])
