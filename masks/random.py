"""Random masks: a fixed random subset of elements, or of whole tensors.

``random``        exactly ``target_count`` elements, uniform over *all* trainable elements
                  (global, not per tensor), drawn with a ``torch.Generator`` seeded by ``seed``.
``random_tensor`` whole parameter tensors chosen in a seeded random order (first-fit rule,
                  see :func:`first_fit`).
"""
from __future__ import annotations

import torch

from masks.base import (
    Mask,
    MaskError,
    Selection,
    check_required_sparsity,
    check_seed,
    full_selection,
    register_mask,
    trainable,
)


def sample_indices(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random k-subset of range(n), as a bool vector of length n (CPU).

    When few are drawn (min(k, n-k) <= n/16, the usual sparse-SAM case) it draws i.i.d.
    uniform indices and keeps the first distinct ones (a uniform random subset; the
    complement is drawn when k > n/2): n bytes for the bitmap plus O(min(k, n-k)) indices.
    Otherwise ``torch.randperm(n)[:k]``. ~0.1 s for 18K of 36M elements, ~2 s for half (CPU).
    """
    if not 0 <= k <= n:
        raise MaskError(f"cannot choose {k} of {n} elements")
    flip = k > n // 2
    want = n - k if flip else k
    bitmap = torch.zeros(n, dtype=torch.bool)
    if want > n // 16:
        bitmap[torch.randperm(n, generator=generator)[:want]] = True
        return ~bitmap if flip else bitmap
    got = 0
    while got < want:
        need = want - got
        cand = torch.randint(n, (need + need // 4 + 16,), generator=generator)
        cand = cand[~bitmap[cand]]
        if cand.numel():
            # keep the first occurrence of each index, in draw order
            uniq, inv = torch.unique(cand, return_inverse=True)
            first = torch.full((uniq.numel(),), cand.numel(), dtype=torch.long)
            first.scatter_reduce_(0, inv, torch.arange(cand.numel()), reduce="amin")
            cand = cand[first.sort().values][:need]
            bitmap[cand] = True
            got += cand.numel()
    return ~bitmap if flip else bitmap


def split_flat(model, flat: torch.Tensor) -> Selection:
    """Cut a flat bool vector (trainable parameters, in order) back into per-tensor masks."""
    out, start = {}, 0
    for name, p in trainable(model).items():
        out[name] = flat[start:start + p.numel()].view(p.shape).to(p.device)
        start += p.numel()
    return out


def random_selection(model, k: int, seed: int) -> Selection:
    """Exactly k elements uniformly at random over all trainable elements (seeded)."""
    g = torch.Generator().manual_seed(seed)
    total = sum(p.numel() for p in trainable(model).values())
    return split_flat(model, sample_indices(total, k, g))


def first_fit(sizes: list[int], target: int, seed: int) -> list[int]:
    """Indices of items chosen by the *first-fit* count rule (used for tensors and layers).

    Items are visited in a random order (``torch.randperm`` seeded with ``seed``); an item is
    taken when it keeps the running count <= ``target``. So the count never exceeds the
    target (the sparsity is never below the requested one) and every item left out is
    larger than the remaining gap (nothing more would fit). If no single item fits (all are
    larger than the target), the smallest item is taken alone (count > target).
    """
    if not sizes:
        return []
    order = torch.randperm(len(sizes), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen, count = [], 0
    for i in order:
        if count + sizes[i] <= target:
            chosen.append(i)
            count += sizes[i]
    if not chosen:
        chosen = [min(range(len(sizes)), key=lambda i: (sizes[i], i))]
    return sorted(chosen)


@register_mask("random")
class RandomMask(Mask):
    """Exactly target_count elements chosen uniformly at random over all trainable elements."""

    description = "a fixed random subset of elements (exact count, uniform over all tensors, seeded)"
    uses_sparsity = True

    def __init__(self, sparsity: float | str | None = None, seed: int = 0):
        super().__init__(sparsity=sparsity, seed=seed)
        check_required_sparsity(self)
        check_seed(self, seed)

    def select(self, model, data):
        return random_selection(model, self.target_count(model, data), self.seed)


@register_mask("random_tensor")
class RandomTensorMask(RandomMask):
    """Whole tensors in a seeded random order, first-fit up to target_count elements.

    Count rule (:func:`first_fit`): the perturbed count is <= target_count and no unchosen
    tensor would fit in the remaining gap; exact only when tensor sizes allow it. If every
    tensor is larger than the target, the single smallest tensor is perturbed.
    """

    description = "whole tensors chosen at random (seeded), first-fit up to the sparsity's count"

    def select(self, model, data):
        params = trainable(model)
        names = list(params)
        chosen = first_fit([params[n].numel() for n in names], self.target_count(model, data), self.seed)
        return full_selection(model, [names[i] for i in chosen])
