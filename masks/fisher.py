"""SSAM-F: perturb the elements with the largest empirical Fisher information.

Score of an element: F = sum over samples of (per-sample gradient of the cross-entropy with
the TRUE labels)^2, over ``num_samples`` training samples taken from the first batches of the
data. The mask keeps the global top ``target_count`` elements. The scores are computed exactly
(masks.fisher_scores, with the tap algebra of masks.fisher_taps), in ``eval()`` mode.
"""
from __future__ import annotations

from masks.base import Mask, check_int, check_required_sparsity, check_seed, register_mask, topk_selection
from masks.fisher_scores import benchmark, fisher_diagonal  # noqa: F401 -- benchmark: this module's API


@register_mask("fisher")
class FisherMask(Mask):
    """SSAM-F: global top-target_count elements by the empirical Fisher diagonal.

    Options: ``num_samples`` (training samples from the first batches, default 1024),
    ``chunk_size`` (samples per batched pass, default 64; changes speed and memory, not the
    result), ``update_every`` (rebuild every this many epochs, default 5; 0 or None = never).
    Computed in eval mode (BatchNorm running statistics), previous mode restored.
    """

    description = "SSAM-F: top elements by empirical Fisher diagonal (exact per-sample gradient squares)"
    uses_sparsity = True
    needs_data = True

    def __init__(self, sparsity: float | str | None = None, seed: int = 0, num_samples: int = 1024,
                 chunk_size: int = 64, update_every: int | None = 5):
        super().__init__(sparsity=sparsity, seed=seed)
        check_required_sparsity(self)
        check_seed(self, seed)
        check_int(self, "num_samples", num_samples)
        check_int(self, "chunk_size", chunk_size)
        check_int(self, "update_every", update_every, minimum=0, allow_none=True)
        self.num_samples = num_samples
        self.chunk_size = chunk_size
        self.update_every = update_every or None

    def scores(self, model, data):
        return fisher_diagonal(model, data, self.num_samples, self.chunk_size, batched=True)

    def select(self, model, data):
        k = self.target_count(model, data)
        return topk_selection(model, self.scores(model, data), k, largest=True)
