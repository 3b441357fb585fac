"""N:M structured masks: in every run of M consecutive elements along a weight's input
dimension, the N with the highest score are perturbed (the 2:4 pattern of sparse tensor cores).

For a weight of shape (out, in, *kernel) the groups run along ``in`` for each output unit and
kernel position (a Linear weight is (out, in)); a last group shorter than M keeps
min(N, its length) elements. Tensors with fewer than two dimensions (biases, norm affine
parameters) are not perturbed. Score: ``magnitude`` |w|, or ``fisher``, the empirical Fisher
diagonal of masks.fisher (SSAM-F's score; needs data, rebuilt every ``update_every`` epochs).
So the perturbed fraction of each weight is about N/M.
"""
from __future__ import annotations

import torch

from masks.base import Mask, check_choice, check_int, check_seed, register_mask, trainable
from masks.fisher import fisher_diagonal


def nm_keep(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Bool mask of score's shape: the top n of every m consecutive entries along dim 1 (ties go
    to the lower index)."""
    moved = score.movedim(1, -1)                       # (out, *kernel, in)
    length = moved.shape[-1]
    pad = (-length) % m
    padded = torch.nn.functional.pad(moved.float(), (0, pad), value=float("-inf"))
    groups = padded.reshape(*padded.shape[:-1], -1, m)  # (..., in/m, m)
    top = groups.argsort(dim=-1, descending=True, stable=True)[..., :n]  # ties: the lower index
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    keep = keep.reshape(*padded.shape[:-1], -1)[..., :length]
    return keep.movedim(-1, 1).contiguous()


@register_mask("nm")
class NMMask(Mask):
    """N:M structured sparsity: the top n of every m consecutive input elements of each weight."""

    description = "N:M structured: top n of every m consecutive input elements of each weight (magnitude or fisher)"

    def __init__(self, seed: int = 0, n: int = 2, m: int = 4, score: str = "magnitude", num_samples: int = 1024,
                 update_every: int | None = None):
        super().__init__(seed=seed)
        check_seed(self, seed)
        check_int(self, "n", n)
        check_int(self, "m", m)
        if n > m:
            raise ValueError(f"mask 'nm': option n={n} must be <= m={m}")
        check_choice(self, "score", score, ["magnitude", "fisher"])
        check_int(self, "num_samples", num_samples)
        check_int(self, "update_every", update_every, minimum=0, allow_none=True)
        self.n, self.m, self.score, self.num_samples = n, m, score, num_samples
        self.needs_data = score == "fisher"
        self.update_every = (update_every or None) if score == "fisher" else None

    def scores(self, model, data) -> dict[str, torch.Tensor]:
        params = {k: p for k, p in trainable(model).items() if p.dim() >= 2}
        if self.score == "magnitude":
            return {k: p.detach().abs() for k, p in params.items()}
        fisher = fisher_diagonal(model, data, self.num_samples)
        return {k: fisher[k] for k in params}

    def select(self, model, data):
        return {k: nm_keep(s, self.n, self.m) for k, s in self.scores(model, data).items()}

    def __repr__(self) -> str:
        return f"NMMask({self.n}:{self.m}, score={self.score!r})"
