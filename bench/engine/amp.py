"""Mixed precision: autocast contexts and the dynamic loss scaler of ``amp: fp16``.

``amp: bf16`` is autocast alone. ``amp: fp16`` is autocast to float16 and a loss scaler with
the rule of ``torch.amp.GradScaler`` (same defaults), written out here because a SAM step has
two backward passes whose overflows must decide ONE skip:

    backward of S * loss                  (S: the scale, 2^16 at first)
    g = grad / S                          (unscaled; an inf/NaN in g is an overflow)
    a step with an overflow in either pass is skipped and S <- S * 0.5;
    after 2000 steps in a row without one, S <- S * 2.

Autocast runs on CUDA only; on CPU both settings train in fp32, and the fp16 scaler still runs
(scaling by a power of two is exact, so it changes no number unless a pass overflows).
"""
from __future__ import annotations

import contextlib

import torch


def autocast_factory(amp: str, device: torch.device):
    """A factory of autocast contexts for ``amp`` on ``device`` (a no-op off CUDA or for none)."""
    if amp == "none" or torch.device(device).type != "cuda":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast("cuda", dtype=dtype)


class LossScaler:
    """Dynamic loss scaling (torch.amp.GradScaler's rule and defaults), driven by bench.engine.sam.SAM."""

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000):
        self.scale_value = float(init_scale)
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self.growth_tracker = 0       # steps in a row without an overflow
        self.skipped = 0              # steps skipped for an overflow, in all

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale_value

    @torch.no_grad()
    def unscale_(self, tensors: list[torch.Tensor]) -> bool:
        """Divide by S in place; True if any entry is inf or NaN (the check and unscale of
        torch.amp.GradScaler, one kernel per device; one host sync)."""
        found = []
        by_device: dict[torch.device, list[torch.Tensor]] = {}
        for t in tensors:
            by_device.setdefault(t.device, []).append(t)
        for device, group in by_device.items():
            flag = torch.zeros(1, device=device)
            inv = torch.full((1,), 1.0 / self.scale_value, device=device)
            torch._amp_foreach_non_finite_check_and_unscale_(group, flag, inv)
            found.append(flag.cpu())
        return bool(found) and bool(torch.cat(found).sum() > 0)

    def update(self, overflow: bool) -> None:
        """After a step: back off on an overflow, grow after growth_interval clean steps."""
        if overflow:
            self.scale_value *= self.backoff_factor
            self.growth_tracker = 0
            self.skipped += 1
            return
        self.growth_tracker += 1
        if self.growth_tracker == self.growth_interval:
            self.scale_value *= self.growth_factor
            self.growth_tracker = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale_value, "growth_tracker": self.growth_tracker, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.scale_value = float(state["scale"])
        self.growth_tracker = int(state["growth_tracker"])
        self.skipped = int(state.get("skipped", 0))
