"""SAM with a mask: the adversarial step perturbs only the parameters a mask selects.

    opt = SAM(model, base_optimizer, rho=0.5, variant="sam", mask="norm_only")

Two ways to use it (same numbers):
- two-step, as davda54/sam: ``loss.backward(); opt.first_step(zero_grad=True);
  loss2.backward(); opt.second_step(zero_grad=True)``;
- fast path: ``opt.first_step(loss=loss)`` differentiates ``loss`` only w.r.t. the
  perturbed tensors, so autograd skips every other weight gradient and stops the backward
  pass at the earliest perturbed layer.

The perturbation, with g the gradient, m the mask and T a diagonal scaling
(T = 1 for SAM; ASAM: |w| + eta elementwise, ||w|| (1 + eta) layerwise):
    p = 2:  e = rho * T^2 g / ||T g||      (norm over the masked entries for
                                            rho_norm="subset", over all for "full")
    p = inf: e = rho * T sign(g)
and e = 0 outside the mask. Unperturbed parameters are never copied.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

import masks
from bench.registries import VARIANTS

_EPS = 1e-12


# --- variants: what T and p are ------------------------------------------------------------

class Variant:
    """A SAM variant: the norm p and the diagonal scaling T of ASAM-type methods."""

    perturbs = True

    def __init__(self, p: int | str = 2):
        if p not in (2, "inf", float("inf")):
            raise ValueError(f"p={p!r}: allowed values are 2, inf")
        self.p = 2 if p == 2 else "inf"

    def scales(self, names: list[str], params: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """T for each tensor (None = 1)."""
        return [None] * len(params)


@VARIANTS.register("none")
class NoVariant(Variant):
    """plain base optimizer (SGD/AdamW baseline): no ascent step"""

    perturbs = False

    def __init__(self):
        super().__init__()


@VARIANTS.register("sam")
class SAMVariant(Variant):
    """SAM (Foret et al.): e = rho g/||g|| (p=2) or rho sign(g) (p=inf)"""


@VARIANTS.register("asam")
class ASAMVariant(Variant):
    """ASAM (Kwon et al.): e = rho T^2 g/||Tg||, T = |w|+eta (elementwise) or ||w||(1+eta) (layerwise)"""

    def __init__(self, adaptive: str = "elementwise", p: int | str = 2, eta: float = 0.01,
                 normalize_bias: bool = False):
        super().__init__(p)
        if adaptive not in ("elementwise", "layerwise"):
            raise ValueError(f"adaptive={adaptive!r}: allowed values are elementwise, layerwise")
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or eta < 0:
            raise ValueError(f"eta={eta!r}: must be a number >= 0")
        if not isinstance(normalize_bias, bool):
            raise ValueError(f"normalize_bias={normalize_bias!r}: allowed values are true, false")
        self.adaptive, self.eta, self.normalize_bias = adaptive, float(eta), normalize_bias

    def scales(self, names, params):
        out = []
        for name, w in zip(names, params):
            leaf = name.rsplit(".", 1)[-1]
            if "weight" not in leaf and not self.normalize_bias:
                out.append(None)  # biases (and BatchNorm beta) are not rescaled by default
            elif self.adaptive == "elementwise":
                out.append(w.detach().abs().add_(self.eta))
            else:
                out.append(torch.linalg.vector_norm(w.detach()).mul_(1.0 + self.eta))
        return out


def create_variant(name: str | Variant, **opts: Any) -> Variant:
    if isinstance(name, Variant):
        return name
    return VARIANTS.get(name)(**opts)


def check_variant_opts(name: str, opts: dict) -> None:
    """Raise TypeError/ValueError naming the bad option (used by config validation)."""
    import inspect

    cls = VARIANTS.get(name)
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in opts:
        if key not in allowed:
            raise TypeError(f"variant {name!r} has no option {key!r} (allowed: {', '.join(allowed) or 'none'})")
    cls(**opts)


# --- the optimizer -------------------------------------------------------------------------

class SAM(torch.optim.Optimizer):
    """Masked SAM around any base optimizer; shares the base's ``param_groups``."""

    def __init__(self, model: nn.Module, base_optimizer: torch.optim.Optimizer, rho: float = 0.05,
                 variant: str | Variant = "sam", mask: str | masks.Mask = "all",
                 rho_norm: str = "subset", freeze_bn_second: bool = False,
                 mask_data: Iterable | None = None, **variant_opts: Any):
        if rho < 0:
            raise ValueError(f"rho={rho}: must be >= 0")
        if rho_norm not in ("subset", "full"):
            raise ValueError(f"rho_norm={rho_norm!r}: allowed values are subset, full")
        self.model, self.base_optimizer = model, base_optimizer
        self.rho, self.rho_norm, self.freeze_bn_second = float(rho), rho_norm, freeze_bn_second
        self.variant = create_variant(variant, **variant_opts)
        if mask == "none":
            self.variant = create_variant("none")
        self.mask = None if not self.variant.perturbs else masks.create_mask(mask)

        super().__init__([p for g in base_optimizer.param_groups for p in g["params"]],
                         base_optimizer.defaults)
        self.param_groups = base_optimizer.param_groups
        self.defaults = base_optimizer.defaults

        self._names = {p: n for n, p in model.named_parameters()}
        self.selection: dict[str, torch.Tensor] = {}
        self._n_perturbed, self._n_params = 0, max(1, masks.n_trainable(model))
        self._perturbed: list[nn.Parameter] = []
        self._perturbed_names: list[str] = []
        self._mask_index: list[int] = []       # positions of partially masked tensors
        self._mask_values: list[torch.Tensor] = []  # their masks, in the parameter's dtype
        self._backup: list[torch.Tensor] = []
        self._bn_saved: list[tuple[nn.Module, Any, torch.Tensor | None]] = []
        self._perturbed_now = False
        if self.mask is not None and (not self.mask.needs_data or mask_data is not None):
            self.set_selection(self.mask.build(model, mask_data))

    # --- the mask ------------------------------------------------------------------------
    def set_selection(self, selection: dict[str, torch.Tensor]) -> None:
        """Install a selection {name: bool mask}; allocations happen here, not per step."""
        params = dict(self.model.named_parameters())
        unknown = [n for n in selection if n not in params]
        if unknown:
            raise ValueError(f"mask names parameters the model does not have: {unknown[:5]}")
        self.selection = {n: m for n, m in selection.items() if bool(m.any())}
        if not self.selection:
            raise masks.MaskError("the mask selects no parameter; nothing would be perturbed")
        self._perturbed_names = [n for n in params if n in self.selection]  # model order
        self._perturbed = [params[n] for n in self._perturbed_names]
        self._mask_index, self._mask_values = [], []
        for i, n in enumerate(self._perturbed_names):
            m = self.selection[n]
            if not bool(m.all()):
                self._mask_index.append(i)
                self._mask_values.append(m.to(device=params[n].device, dtype=params[n].dtype))
        self._backup = [torch.empty_like(p) for p in self._perturbed]
        self._n_perturbed = masks.selection_count(self.selection)  # counted once, not per query

    def build_mask(self, data: Iterable | None = None) -> None:
        if self.mask is not None:
            self.set_selection(self.mask.build(self.model, data))

    def on_epoch_start(self, epoch: int, epochs: int, data: Iterable | None = None) -> bool:
        """Ask a changing mask whether it updates now; True if the selection changed."""
        if self.mask is None or not self.mask.needs_update(epoch):
            return False
        self.set_selection(self.mask.update(self.model, data, epoch, epochs, self.selection))
        return True

    @property
    def n_perturbed(self) -> int:
        return self._n_perturbed

    @property
    def perturbed_fraction(self) -> float:
        return self._n_perturbed / self._n_params

    @property
    def is_sam(self) -> bool:
        return self.variant.perturbs

    # --- the two steps -------------------------------------------------------------------
    def _apply_masks(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        if self._mask_index:
            part = [grads[i] for i in self._mask_index]
            torch._foreach_mul_(part, self._mask_values)
        return grads

    def _norm_all(self, grads_all: list[torch.Tensor], names_all: list[str], params_all) -> torch.Tensor:
        scales = self.variant.scales(names_all, params_all)
        scaled = [g if t is None else g * t for g, t in zip(grads_all, scales)]
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(scaled)))

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False, loss: torch.Tensor | None = None) -> None:
        """w <- w + e(w) on the masked parameters only."""
        if not self.variant.perturbs:
            return
        if not self._perturbed:
            raise RuntimeError("the mask is not built yet: call build_mask(data) first")
        params = self._perturbed
        full = self.rho_norm == "full" and self.variant.p == 2
        if loss is not None:
            self.zero_grad(set_to_none=True)  # the descent backward must start clean
            if full:
                names_all = [n for n, p in self.model.named_parameters() if p.requires_grad]
                params_all = [p for p in self.model.parameters() if p.requires_grad]
                with torch.enable_grad():
                    grads_all = list(torch.autograd.grad(loss, params_all, allow_unused=True))
                grads_all = [torch.zeros_like(p) if g is None else g for g, p in zip(grads_all, params_all)]
                index = {n: i for i, n in enumerate(names_all)}
                grads = [grads_all[index[n]].clone() for n in self._perturbed_names]
            else:
                with torch.enable_grad():
                    grads = list(torch.autograd.grad(loss, params, allow_unused=True))
                grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
        else:
            grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]
            if full:
                pairs = [(n, p) for n, p in self.model.named_parameters() if p.grad is not None]
                names_all = [n for n, _ in pairs]
                params_all = [p for _, p in pairs]
                grads_all = [p.grad for _, p in pairs]
        grads = self._apply_masks(grads)

        scales = self.variant.scales(self._perturbed_names, params)
        if self.variant.p == "inf":
            e = torch._foreach_sign(grads)
            for i, t in enumerate(scales):
                if t is not None:
                    e[i].mul_(t)
            torch._foreach_mul_(e, self.rho)
        else:
            e = [g if t is None else g.mul_(t) for g, t in zip(grads, scales)]  # T g
            norm = self._norm_all(grads_all, names_all, params_all) if full else \
                torch.linalg.vector_norm(torch.stack(torch._foreach_norm(e)))
            for i, t in enumerate(scales):
                if t is not None:
                    e[i].mul_(t)  # T^2 g
            torch._foreach_mul_(e, self.rho / (norm + _EPS))

        torch._foreach_copy_(self._backup, params)
        torch._foreach_add_(params, e)
        self._perturbed_now = True
        if self.freeze_bn_second:
            self._freeze_bn()
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore w, then the base optimizer's step with the gradient taken at w + e."""
        if self._perturbed_now:
            torch._foreach_copy_(self._perturbed, self._backup)
            self._perturbed_now = False
            self._unfreeze_bn()
        self.base_optimizer.step()
        self._opt_called = True  # tells torch's LR schedulers that this optimizer has stepped
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self, closure=None):
        """With a closure (forward + backward, returns the loss): both SAM steps."""
        if not self.variant.perturbs:
            return self.base_optimizer.step(closure)
        if closure is None:
            raise ValueError("SAM.step needs a closure that runs forward and backward and returns the loss")
        closure = torch.enable_grad()(closure)
        loss = closure()
        self.first_step(zero_grad=True)
        closure()
        self.second_step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    # --- BatchNorm statistics in the second pass ----------------------------------------
    def _freeze_bn(self) -> None:
        self._bn_saved = []
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                tracked = None if m.num_batches_tracked is None else m.num_batches_tracked.clone()
                self._bn_saved.append((m, m.momentum, tracked))
                m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged

    def _unfreeze_bn(self) -> None:
        for m, momentum, tracked in self._bn_saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
        self._bn_saved = []

    # --- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {"base": self.base_optimizer.state_dict(), "rho": self.rho}
        if self.mask is not None and (self.mask.needs_data or self.mask.update_every):
            state["selection"] = {n: m.cpu() for n, m in self.selection.items()}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self.base_optimizer.load_state_dict(state_dict["base"])
        self.param_groups = self.base_optimizer.param_groups  # keep the link to the base
        if "selection" in state_dict:
            device = next(self.model.parameters()).device
            self.set_selection({n: m.to(device) for n, m in state_dict["selection"].items()})
