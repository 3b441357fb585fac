"""Magnitude mask: the target_count elements with the largest (or smallest) |w|, globally."""
from __future__ import annotations

from masks.base import (
    Mask,
    check_choice,
    check_required_sparsity,
    check_seed,
    register_mask,
    topk_selection,
    trainable,
)


@register_mask("magnitude")
class MagnitudeMask(Mask):
    """Global top-k of |w| over all trainable elements (k = target_count).

    ``largest=True`` (default) keeps the largest magnitudes, ``largest=False`` the smallest.
    Built once on the weights the model has when the optimizer builds the mask.
    """

    description = "the elements with the largest |w| (largest=False: smallest), global top-k"
    uses_sparsity = True

    def __init__(self, sparsity: float | str | None = None, seed: int = 0, largest: bool = True):
        super().__init__(sparsity=sparsity, seed=seed)
        check_required_sparsity(self)
        check_seed(self, seed)
        check_choice(self, "largest", largest, [True, False])
        self.largest = bool(largest)

    def select(self, model, data):
        k = self.target_count(model, data)
        scores = {n: p.detach().abs() for n, p in trainable(model).items()}
        return topk_selection(model, scores, k, largest=self.largest)
