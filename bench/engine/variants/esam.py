"""ESAM (Du et al., "Efficient Sharpness-aware Minimization for Improved Training of Neural
Networks", ICLR 2022).

Stochastic weight perturbation (SWP), with B_i ~ Bernoulli(beta) drawn per element each step:
    e = (rho / beta) * B ⊙ g / ||g||
(the norm over the whole masked g, as in the paper; only the drawn elements move).
Sharpness-sensitive data selection (SDS): with l_i(w) the loss of sample i,
    B+ = the floor(gamma |B|) samples (at least one) with the largest l_i(w + e) - l_i(w)
    descent gradient = grad of the mean loss over B+ at w + e
(gamma = 1 turns SDS off). The per-sample losses at w + e come from a forward without
gradient over the whole batch, then the descent forward/backward runs on B+ alone (BatchNorm
statistics of B+), as in the public code.

Defaults beta = 0.6, gamma = 0.5: the public code's CIFAR command (dydjw9/Efficient_SAM).
The public code draws whole tensors per step and normalizes over the drawn ones; this follows
the paper's per-element formula. The draws come from a generator of this variant, seeded by
``seed`` (None: torch.initial_seed() when built) and kept in checkpoints.

Through ``SAM.step(closure)`` only SWP applies: a closure returns one mean loss, not the
per-sample losses SDS needs, so the descent uses the whole batch (a warning says so once when
gamma < 1). The training step (bench.engine.step.train_step) does both.
"""
from __future__ import annotations

import torch

from bench.engine.variants.base import Variant, check_integer, check_number, register_variant


@register_variant("esam")
class ESAM(Variant):
    """ESAM (Du et al.): Bernoulli(beta) elements perturbed x 1/beta; descent on the gamma share of samples whose loss rose most"""

    def __init__(self, beta: float = 0.6, gamma: float = 0.5, seed: int | None = None, m: int | None = None,
                 sam_start_epoch: int = 0):
        super().__init__(m=m, sam_start_epoch=sam_start_epoch)
        self.beta = check_number("beta", beta, 0.0, 1.0, low_open=True)
        self.gamma = check_number("gamma", gamma, 0.0, 1.0, low_open=True)
        self.seed = check_integer("seed", seed, 0, allow_none=True)
        self._generator: torch.Generator | None = None
        self._saved_state: torch.Tensor | None = None

    @property
    def selects_data(self) -> bool:
        return self.gamma < 1.0

    def _gen(self, device: torch.device) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(torch.initial_seed() if self.seed is None else self.seed)
            if self._saved_state is not None:
                self._generator.set_state(self._saved_state)
                self._saved_state = None
        return self._generator

    def bind(self, sam) -> None:
        super().bind(sam)
        if self.seed is None:  # fix the seed now, so a resumed run draws from the same stream
            self.seed = int(torch.initial_seed()) % (2 ** 63)

    def finish(self, e):
        if self.beta == 1.0:
            return e
        gen = self._gen(e[0].device)
        for t in e:
            keep = torch.rand(t.shape, generator=gen, device=t.device) < self.beta
            t.mul_(keep.to(t.dtype)).div_(self.beta)
        return e

    def select(self, loss_before, loss_after):
        if not self.selects_data:
            return None
        k = max(1, int(self.gamma * loss_after.numel()))
        rise = (loss_after - loss_before).detach().float()
        return torch.topk(rise, k, sorted=False).indices.sort().values  # in batch order

    def state_dict(self):
        state = {"seed": self.seed}
        if self._generator is not None:
            state["generator"] = self._generator.get_state()
        return state

    def load_state_dict(self, state, device):
        self.seed = state.get("seed", self.seed)
        self._generator = None
        self._saved_state = state.get("generator")
