"""The Variant interface: the rule a SAM variant adds to the shared machinery of bench.engine.sam.

bench.engine.sam.SAM owns the mask, the backups, the restricted ascent, BatchNorm freezing and
checkpoints; one step of it is always the same four places:

1. the ascent gradient g (of the perturbed tensors; of every tensor where the rule needs it);
2. the perturbation e, from the variant's direction d (d = g for SAM):
       p = 2:   e = rho_t * T (T d) / ||T d||   (masked; the norm over the perturbed entries
                                                 for rho_norm="subset", over all for "full")
       p = inf: e = rho_t * T sign(d)
   then ``finish(e)`` (ESAM's random subset), and w <- w + e on the perturbed tensors only;
3. the descent gradient at w + e (the caller's backward; ESAM may pick the samples);
4. the variant's correction of the descent gradient, then the base optimizer's step.

A variant overrides only the hooks its rule needs. Every option is an explicit keyword
parameter of ``__init__`` with a default: the signature is the option schema (validation,
``sambench list variants``). Two options are shared by every perturbing variant:

``m``                m-sharpness (Foret et al., 2021, Sec. 4.1): the batch is split into groups
                     of m samples, each perturbed with its own ascent gradient, and the descent
                     gradients are averaged (None: one group, the whole batch). The variant's
                     state (EMA, g_v, GSAM's decomposition) sees the group averages.
``sam_start_epoch``  late-phase SAM (Zhou et al., "Sharpness-Aware Minimization Efficiently
                     Selects Flatter Minima Late in Training", ICLR 2025): the base optimizer
                     alone before this epoch (0: SAM from the start).
"""
from __future__ import annotations

from typing import Any

import torch

from bench.registries import VARIANTS

EPS = 1e-12


def register_variant(name: str):
    """Class decorator: ``@register_variant("name")`` makes a variant selectable everywhere."""
    return VARIANTS.register(name)


# --- option checks shared by the variants -------------------------------------------------

def check_number(option: str, value: Any, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> float:
    """``value`` as a float, or ValueError starting with ``option=`` (config validation uses that)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        lo = "" if low is None else (f" > {low}" if low_open else f" >= {low}")
        hi = "" if high is None else f" and <= {high}"
        raise ValueError(f"{option}={value!r}: must be a number{lo}{hi}")
    return float(value)


def check_integer(option: str, value: Any, low: int, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        extra = " or null" if allow_none else ""
        raise ValueError(f"{option}={value!r}: must be an integer >= {low}{extra}")
    return value


def dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """<a, b> over lists of tensors."""
    return torch.stack([(x * y).sum() for x, y in zip(a, b)]).sum()


def norm(a: list[torch.Tensor]) -> torch.Tensor:
    """||a||_2 over a list of tensors."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(a)))


class Variant:
    """Base class of every SAM variant (this base alone is plain SAM's rule: d = g)."""

    registered_name: str = "?"
    perturbs = True          # False: the base optimizer alone (the "none" baseline)
    ascent = True            # False: e comes from optimizer state (MSAM): no ascent pass at all
    full_gradient = False    # the rule reads the clean gradient of every tensor (GSAM, LookSAM)
    keeps_gradient = False   # the clean gradient (average over groups) is handed to correct_descent
    selects_data = False     # select() picks the descent's samples (ESAM); needs per-sample losses
    p: int | str = 2

    def __init__(self, m: int | None = None, sam_start_epoch: int = 0):
        self.m = check_integer("m", m, 1, allow_none=True)
        self.sam_start_epoch = check_integer("sam_start_epoch", sam_start_epoch, 0)
        self.sam = None  # the bench.engine.sam.SAM this variant serves (set by bind)

    def bind(self, sam) -> None:
        """Called once by bench.engine.sam.SAM; a variant that reads the base optimizer checks it here."""
        self.sam = sam

    # --- when --------------------------------------------------------------------------------
    def sam_step(self, step: int) -> bool:
        """Whether SAM-phase step ``step`` (0-based, counted from sam_start_epoch) perturbs."""
        return True

    # --- the ascent ----------------------------------------------------------------------------
    def radius(self, rho: float) -> float:
        """rho_t, the perturbation radius of this step."""
        return rho

    def scales(self, names: list[str], params: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """T for each perturbed tensor (None = 1)."""
        return [None] * len(params)

    def direction(self, names: list[str], params: list[torch.Tensor],
                  grads: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
        """d on the ascent tensors, from their clean gradient (None without an ascent pass).

        May return ``grads`` itself (the machinery copies it when it keeps the clean gradient).
        None: nothing to perturb along this step (it becomes a plain step at w).
        """
        return grads

    def finish(self, e: list[torch.Tensor]) -> list[torch.Tensor]:
        """Last change to e on the perturbed tensors (in place allowed)."""
        return e

    def select(self, loss_before: torch.Tensor, loss_after: torch.Tensor) -> torch.Tensor | None:
        """Indices of the samples the descent uses (None: all); per-sample losses at w and w + e."""
        return None

    # --- the descent ---------------------------------------------------------------------------
    def correct_descent(self, grads: dict[str, torch.Tensor], clean: dict[str, torch.Tensor] | None) -> None:
        """At a SAM step: change the descent gradient ``grads`` ({name: .grad} of every tensor with
        a gradient, in place), knowing the clean gradient ``clean`` ({name: g} of the ascent
        tensors, averaged over the groups; None unless ``keeps_gradient``)."""

    def correct_plain(self, grads: dict[str, torch.Tensor]) -> None:
        """At a SAM-phase step that does not perturb (LookSAM between its SAM steps)."""

    # --- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Variant state as plain tensors and numbers (EMA, stored g_v, generator state)."""
        return {}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        """Restore :meth:`state_dict`'s output."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(m={self.m}, sam_start_epoch={self.sam_start_epoch})"
