"""SSAM-D: a random mask whose elements are exchanged during training (drop and grow).

Start: ``target_count`` elements uniformly at random (seeded; identical to the ``random`` mask
with the same seed). At the start of every ``update_every``-th epoch the mask

1. computes |grad| of the mean cross-entropy on ``num_batches`` batches of the data (one full
   backward per batch, model in eval mode, previous mode restored, ``.grad`` untouched);
2. drops ``n = floor(dr * live + 0.5)`` live elements, those with the smallest |grad|, where
   ``dr = drop_fraction(epoch, epochs) = drop_rate * (1 + cos(pi * epoch / epochs)) / 2``
   (``n`` is capped at the number of dead elements);
3. grows ``n`` elements among those that were dead before this update (not the ones just
   dropped): uniformly at random (``grow="random"``, seeded by ``seed`` and the epoch) or the
   largest |grad| (``grow="gradient"``).

So the live count never changes, and exactly ``n`` elements leave and ``n`` enter (the
symmetric difference between the old and new masks has ``2n`` elements).
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from masks.base import (
    Mask,
    MaskError,
    Selection,
    check_choice,
    check_int,
    check_required_sparsity,
    check_seed,
    prune_empty,
    register_mask,
    trainable,
)
from masks.fisher_taps import logits_of, model_device
from masks.random import random_selection, split_flat


def drop_fraction(epoch: int, epochs: int, drop_rate: float = 0.5) -> float:
    """Fraction of live elements exchanged at ``epoch`` (cosine decay from drop_rate to 0)."""
    if epochs <= 0:
        raise ValueError(f"epochs must be >= 1, got {epochs!r}")
    return drop_rate * (1.0 + math.cos(math.pi * epoch / epochs)) / 2.0


def n_exchanged(fraction: float, live: int, dead: int) -> int:
    """The number of elements dropped (and grown): floor(fraction * live + 0.5), at most ``dead``."""
    return max(0, min(dead, math.floor(fraction * live + 0.5)))


def grad_magnitude(model, data, num_batches: int = 1) -> dict[str, torch.Tensor]:
    """|grad| of the mean cross-entropy (true labels), averaged over the first ``num_batches``.

    Eval mode (restored afterwards); uses ``torch.autograd.grad`` so ``p.grad`` is untouched.
    """
    params = trainable(model)
    names = list(params)
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    device = model_device(model)
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for batch in data:
            x, y = batch[0].to(device), batch[1].to(device)
            loss = F.cross_entropy(logits_of(model(x)), y)
            grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
            for n, g in zip(names, grads):
                if g is not None:
                    total[n].add_(g)
            seen += 1
            if seen >= num_batches:
                break
    finally:
        model.train(was_training)
    if seen == 0:
        raise MaskError("mask 'dynamic' got no data batch to compute gradients on")
    return {n: t.abs_() for n, t in total.items()}


@register_mask("dynamic")
class DynamicMask(Mask):
    """SSAM-D: random start, then drop smallest-|grad| live elements and grow as many dead ones.

    Options: ``drop_rate`` (initial fraction exchanged, in [0, 1], default 0.5), ``grow``
    ("random" or "gradient"), ``update_every`` (epochs, default 5; 0 or None = never),
    ``num_batches`` (batches for |grad|, default 1).
    """

    description = "SSAM-D: random start, drop smallest |grad| / grow random (or largest |grad|), cosine"
    uses_sparsity = True
    needs_data = True

    def __init__(self, sparsity: float | str | None = None, seed: int = 0, drop_rate: float = 0.5,
                 grow: str = "random", update_every: int | None = 5, num_batches: int = 1):
        super().__init__(sparsity=sparsity, seed=seed)
        check_required_sparsity(self)
        check_seed(self, seed)
        if isinstance(drop_rate, bool) or not isinstance(drop_rate, (int, float)) or not 0 <= drop_rate <= 1:
            raise ValueError(f"mask 'dynamic': option drop_rate must be a number in [0, 1], got {drop_rate!r}")
        check_choice(self, "grow", grow, ["random", "gradient"])
        check_int(self, "update_every", update_every, minimum=0, allow_none=True)
        check_int(self, "num_batches", num_batches)
        self.drop_rate = float(drop_rate)
        self.grow = grow
        self.update_every = update_every or None
        self.num_batches = num_batches

    def drop_fraction(self, epoch: int, epochs: int) -> float:
        return drop_fraction(epoch, epochs, self.drop_rate)

    def select(self, model, data):
        return random_selection(model, self.target_count(model, data), self.seed)

    def update(self, model, data, epoch: int, epochs: int, current: Selection | None) -> Selection:
        if current is None:
            return self.build(model, data)
        params = trainable(model)
        unknown = sorted(set(current) - set(params))
        if unknown:
            raise MaskError(f"mask 'dynamic': the current selection names unknown parameters {unknown[:5]}")
        device = model_device(model)
        live = torch.cat([
            (current[n].to(device).reshape(-1).bool() if n in current
             else torch.zeros(p.numel(), dtype=torch.bool, device=device))
            for n, p in params.items()
        ])
        n_live = int(live.sum())
        n = n_exchanged(self.drop_fraction(epoch, epochs), n_live, live.numel() - n_live)
        if n == 0:
            return {k: v.clone() for k, v in current.items()}
        grads = grad_magnitude(model, data, self.num_batches)
        g = torch.cat([grads[k].reshape(-1).float().to(device) for k in params])

        # drop: the n live elements with the smallest |grad|
        drop = torch.topk(torch.where(live, g, torch.full_like(g, math.inf)), n, largest=False).indices
        # grow: n elements among those dead before this update
        if self.grow == "gradient":
            score = g.clone()
        else:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(epoch))
            score = torch.rand(live.numel(), generator=gen).to(device)
        score[live] = -math.inf
        grow = torch.topk(score, n, largest=True).indices
        new = live.clone()
        new[drop] = False
        new[grow] = True
        return prune_empty(split_flat(model, new))
