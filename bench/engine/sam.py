"""SAM with a mask and a variant: the adversarial step perturbs only the parameters a mask selects.

    opt = SAM(model, base_optimizer, rho=0.5, variant="sam", mask="norm_only", **variant_options)

Two ways to use it (same numbers):
- two-step, as davda54/sam: ``loss.backward(); opt.first_step(zero_grad=True);
  loss2.backward(); opt.second_step(zero_grad=True)``;
- fast path: ``opt.first_step(loss=loss)`` differentiates ``loss`` only w.r.t. the
  perturbed tensors, so autograd skips every other weight gradient and stops the backward
  pass at the earliest perturbed layer.
``opt.step(closure)`` runs a whole step; bench.engine.step.train_step is the training step.

One step, for every variant (bench/variants holds each variant's rule):
1. the ascent gradient g:  ``_ascent_gradient`` (the perturbed tensors; every tensor where the
   rule needs the clean gradient (GSAM, LookSAM) or for rho_norm="full");
2. the perturbation:       ``_perturb``, with d the variant's direction (d = g for SAM) and T a
                           diagonal scaling (ASAM; T = 1 otherwise):
       p = 2:   e = rho_t T (T d) / ||T d||   (norm over the masked entries for
                                               rho_norm="subset", over all for "full")
       p = inf: e = rho_t T sign(d)
   e = 0 outside the mask; unperturbed parameters are never copied;
3. the descent gradient at w + e: the caller's backward (``.grad``);
4. ``second_step``: restore w, the variant's correction of the descent gradient, the base
   optimizer's step.

Across processes (``comm``, a :class:`bench.engine.distributed.Comm`), ``ascent="synced"`` averages g over
the processes before step 2 in ONE bucketed all-reduce of the ascent tensors only (for SAM-ON a
few KB), so e is the one-process perturbation of the global batch; ``ascent="local"`` perturbs
with each process's own g (m-sharpness with m = the per-process batch). The clean gradient a
variant keeps is the global-batch average in both modes (averaged at step 4 when the ascent was
not). With a loss scaler (``amp: fp16``) both passes are scaled; g is unscaled before step 2, and
an inf/NaN in either pass (agreed across processes) skips the step: w restored, no correction,
no base step, the scale backed off. Gradient accumulation: ``accumulate_ascent(loss, weight)``
once per micro-batch, then ``first_step()`` perturbs once with their sum.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterable

import torch
from torch import nn

import masks
from bench.config import CHOICES, PLAIN
from bench.engine.sam_checks import check_direction, check_signature, step_stats
from bench.engine.variants import Variant, create_variant
from bench.engine.variants.base import EPS


def make_variant(variant: str | Variant, mask: Any, **options: Any) -> Variant:
    """The variant a run uses: the named one (its options checked), or the registered plain
    variant when the mask perturbs nothing (the ``none`` mask: a baseline)."""
    chosen = create_variant(variant, **options)
    return chosen if masks.mask_perturbs(mask) else create_variant(PLAIN["variant"])


class SAM(torch.optim.Optimizer):
    """Masked SAM around any base optimizer; shares the base's ``param_groups``."""

    record_stats = False   # set for the steps a training loop logs: ``stats`` then holds step_stats

    def __init__(self, model: nn.Module, base_optimizer: torch.optim.Optimizer, rho: float = 0.05,
                 variant: str | Variant = "sam", mask: str | masks.Mask = "all",
                 rho_norm: str = "subset", freeze_bn_second: bool = False, comm: Any = None,
                 ascent: str = "synced", scaler: Any = None, **variant_opts: Any):
        check_signature(model, base_optimizer, variant_opts)
        if rho < 0:
            raise ValueError(f"rho={rho}: must be >= 0")
        for name, value in (("rho_norm", rho_norm), ("ascent", ascent)):  # the run config's choices
            if value not in CHOICES[name]:
                raise ValueError(f"{name}={value!r}: allowed values are {', '.join(CHOICES[name])}")
        self.model, self.base_optimizer = model, base_optimizer
        self.comm, self.ascent_mode, self.scaler = comm, ascent, scaler
        self.rho, self.rho_norm, self.freeze_bn_second = float(rho), rho_norm, freeze_bn_second
        self.variant = make_variant(variant, mask, **variant_opts)
        self.mask = masks.create_mask(mask) if self.variant.perturbs else None

        super().__init__([p for g in base_optimizer.param_groups for p in g["params"]],
                         base_optimizer.defaults)
        self.param_groups = base_optimizer.param_groups
        self.defaults = base_optimizer.defaults

        self._trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.selection: dict[str, torch.Tensor] = {}
        self._n_perturbed, self._n_params = 0, max(1, masks.n_trainable(model))
        self._perturbed: list[nn.Parameter] = []     # P: the perturbed tensors, model order
        self._perturbed_names: list[str] = []
        self._ascent: list[nn.Parameter] = []        # A ⊇ P: the tensors whose ascent gradient is computed
        self._ascent_names: list[str] = []
        self._p_index: list[int] = []                # position of each tensor of P in A
        self._mask_index: list[int] = []             # positions (in P) of partially masked tensors
        self._mask_values: list[torch.Tensor] = []   # their masks, in the parameter's dtype
        self._backup: list[torch.Tensor] = []
        self._bn_saved: list[tuple[nn.Module, Any, torch.Tensor | None]] = []
        self._perturbed_now = False
        self._direction_checked = False  # a variant's direction() is checked at the first perturbation
        self._clean: dict[str, torch.Tensor] | None = None  # the clean gradient, kept for the variant
        self._groups = 0                             # ascents taken in this step (m-sharpness groups)
        self._acc: list[torch.Tensor] | None = None  # the ascent gradient summed over micro-batches
        self._overflow = False                       # fp16: this process's ascent gradient overflowed
        self.epoch = 0                               # set by on_epoch_start (late-phase SAM)
        self.sam_steps = 0                           # steps taken in the SAM phase (LookSAM's counter)
        self.variant.bind(self)
        if self.mask is not None and not self.mask.needs_data:
            self.set_selection(self.mask.build(model))

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
        if self.rho_norm == "full" or self.variant.full_gradient:
            self._ascent_names = [n for n, _ in self._trainable]
        else:
            self._ascent_names = list(self._perturbed_names)
        self._ascent = [params[n] for n in self._ascent_names]
        position = {n: i for i, n in enumerate(self._ascent_names)}
        self._p_index = [position[n] for n in self._perturbed_names]
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
        """Record the epoch (late-phase SAM) and ask a changing mask whether it updates now;
        True if the selection changed."""
        self.epoch = epoch
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
        """A perturbing variant (not the plain base optimizer)."""
        return self.variant.perturbs

    @property
    def in_sam_phase(self) -> bool:
        """A perturbing variant at or after its ``sam_start_epoch``."""
        return self.variant.perturbs and self.epoch >= self.variant.sam_start_epoch

    @property
    def sam_now(self) -> bool:
        """Whether the coming step perturbs (LookSAM: only every k-th step of the SAM phase)."""
        return self.in_sam_phase and self.variant.sam_step(self.sam_steps)

    @property
    def world(self) -> int:
        """Processes the run spans (1 without a comm)."""
        return 1 if self.comm is None else self.comm.world

    @property
    def sync_ascent(self) -> bool:
        """Whether g is averaged over the processes before the perturbation: ascent synced, more
        than one process, and one group per step (m-sharpness groups lie within a process)."""
        return self.world > 1 and self.ascent_mode == "synced" and self.variant.m is None

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to differentiate: times the loss scale under fp16, else itself."""
        return loss if self.scaler is None else self.scaler.scale(loss)

    def groups(self, batch_size: int) -> list[slice]:
        """The groups of m samples a step perturbs separately (m-sharpness; one group by default)."""
        m = self.variant.m
        if m is None or m >= batch_size:
            return [slice(0, batch_size)]
        return [slice(i, min(i + m, batch_size)) for i in range(0, batch_size, m)]

    # --- 1. the ascent gradient ----------------------------------------------------------
    def _loss_gradient(self, loss: torch.Tensor, weight: float = 1.0) -> list[torch.Tensor]:
        """autograd.grad of weight x the (scaled) loss restricted to the ascent tensors: no other
        tensor is differentiated."""
        with torch.enable_grad():
            loss = self.scale_loss(loss if weight == 1.0 else loss * weight)
            grads = torch.autograd.grad(loss, self._ascent, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, self._ascent)]

    @torch.no_grad()
    def accumulate_ascent(self, loss: torch.Tensor, weight: float = 1.0) -> None:
        """Add ``weight`` x the gradient of ``loss`` on the ascent tensors to this step's ascent
        gradient (gradient accumulation: once per micro-batch, then ``first_step()`` perturbs once).
        The first call of a step clears .grad, so the descent backward starts clean."""
        if self._groups == 0 and self._acc is None:
            self.zero_grad(set_to_none=True)
        if not (self.sam_now and self.variant.ascent):
            return
        if not self._perturbed:
            raise RuntimeError("the mask is not built yet: call build_mask(data) first")
        g = self._loss_gradient(loss, weight)
        if self._acc is None:
            self._acc = g
        else:
            torch._foreach_add_(self._acc, g)

    def _ascent_gradient(self) -> list[torch.Tensor] | None:
        """g on the ascent tensors: the accumulated gradient of the losses handed over (fast path),
        else a copy of their .grad (filled by the caller's backward); then averaged over the
        processes in one bucketed all-reduce (ascent synced) and unscaled (fp16). None when it
        holds an inf/NaN (the step will be skipped)."""
        if self._acc is not None:
            grads, self._acc = self._acc, None
        else:
            grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in self._ascent]
        if self.sync_ascent:
            self.comm.average_(grads, tag="ascent")
        if self.scaler is not None and self.scaler.unscale_(grads):
            self._overflow = True
            return None
        return grads

    def _keep_clean(self, grads: list[torch.Tensor], weight: float) -> None:
        """Accumulate weight * g: the clean gradient averaged over the step's groups."""
        if self._clean is None:
            self._clean = {n: g * weight for n, g in zip(self._ascent_names, grads)}
        else:
            for n, g in zip(self._ascent_names, grads):
                self._clean[n].add_(g, alpha=weight)

    # --- 2. the perturbation -------------------------------------------------------------
    def _apply_masks(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        if self._mask_index:
            part = [tensors[i] for i in self._mask_index]
            torch._foreach_mul_(part, self._mask_values)
        return tensors

    def _scaled_norm(self, names: list[str], params: list[torch.Tensor], d: list[torch.Tensor]) -> torch.Tensor:
        """||T d|| over the given tensors."""
        scaled = [x if t is None else x * t for x, t in zip(d, self.variant.scales(names, params))]
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(scaled)))

    def _perturbation(self, d: list[torch.Tensor]) -> list[torch.Tensor]:
        """e = rho_t T (T d)/||T d|| (p = 2) or rho_t T sign(d) (p = inf) on the perturbed tensors,
        masked; d is the direction on the ascent tensors (changed in place)."""
        rho = self.variant.radius(self.rho)
        params = self._perturbed
        scales = self.variant.scales(self._perturbed_names, params)
        if self.variant.p == "inf":
            e = torch._foreach_sign(self._apply_masks([d[i] for i in self._p_index]))
            for x, t in zip(e, scales):
                if t is not None:
                    x.mul_(t)
            torch._foreach_mul_(e, rho)
            return e
        full = self._scaled_norm(self._ascent_names, self._ascent, d) if self.rho_norm == "full" else None
        e = self._apply_masks([d[i] for i in self._p_index])
        e = [x if t is None else x.mul_(t) for x, t in zip(e, scales)]  # T d
        norm = full if full is not None else torch.linalg.vector_norm(torch.stack(torch._foreach_norm(e)))
        for x, t in zip(e, scales):
            if t is not None:
                x.mul_(t)  # T^2 d
        torch._foreach_mul_(e, rho / (norm + EPS))
        return e

    def _perturb(self, grads: list[torch.Tensor] | None) -> None:
        """w <- w + e on the perturbed tensors (the backup holds exactly those tensors)."""
        d = self.variant.direction(self._ascent_names, self._ascent, grads)
        if d is None:
            return  # nothing to perturb along (MSAM before its momentum exists)
        if not self._direction_checked:
            check_direction(self.variant, self._ascent_names, self._ascent, d)
            self._direction_checked = True
        e = self.variant.finish(self._perturbation(d))
        if self.record_stats:
            self.stats = step_stats(self, grads, e)
        torch._foreach_copy_(self._backup, self._perturbed)
        torch._foreach_add_(self._perturbed, e)
        self._perturbed_now = True

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False, loss: torch.Tensor | None = None, weight: float = 1.0) -> None:
        """The ascent: g (from ``loss`` on the fast path, from the micro-batches handed to
        ``accumulate_ascent``, else from .grad), then w <- w + e on the masked parameters only.
        Nothing happens at steps that do not perturb (see ``sam_now``).

        ``weight``: this group's share of the batch when a step has several (m-sharpness); the
        clean gradient a variant keeps is their weighted sum. On the fast path the first group
        of a step clears .grad, so the descent backward starts clean.
        """
        if loss is not None:
            self.accumulate_ascent(loss)
        if self.sam_now:
            if not self._perturbed:
                raise RuntimeError("the mask is not built yet: call build_mask(data) first")
            grads = self._ascent_gradient() if self.variant.ascent else None
            self._groups += 1
            if not self._overflow:  # after an overflow w stays: the step will be skipped
                if grads is not None and self.variant.keeps_gradient:
                    self._keep_clean(grads, weight)
                self._perturb(grads)
                if self._perturbed_now and self.freeze_bn_second and self.variant.ascent:
                    self._freeze_bn()  # (MSAM has one pass only: its statistics are kept)
        if zero_grad:
            self.zero_grad(set_to_none=True)

    # --- 3. the descent gradient: the caller's backward at w + e -----------------------
    @torch.no_grad()
    def unperturb(self) -> None:
        """Restore w on the perturbed tensors (after the descent backward of a group)."""
        if self._perturbed_now:
            torch._foreach_copy_(self._perturbed, self._backup)
            self._perturbed_now = False
            self._unfreeze_bn()

    # --- 4. the base step ------------------------------------------------------------------
    def _descent_grads(self) -> dict[str, torch.Tensor]:
        return {n: p.grad for n, p in self._trainable if p.grad is not None}

    def _overflowed(self) -> bool:
        """fp16: unscale the descent gradient in .grad and say whether either pass of this step
        overflowed, on every process alike (the descent gradient is averaged by DDP; a local
        ascent's overflow is shared in one all-reduce of a flag)."""
        if self.scaler is None:
            return False
        overflow = self.scaler.unscale_([p.grad for _, p in self._trainable if p.grad is not None])
        ascent = self._overflow
        if self.world > 1 and not self.sync_ascent and self.variant.perturbs and self.variant.ascent:
            ascent = self.comm.any(ascent, device=self._trainable[0][1].device)
        return overflow or ascent

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore w, the variant's correction of the descent gradient, the base optimizer's step
        (fp16: the whole step skipped after an overflow in either pass, the scale backed off)."""
        self.unperturb()
        overflow = self._overflowed()
        if not overflow:
            if self.in_sam_phase:
                rule = type(self.variant)
                if self.variant.sam_step(self.sam_steps):
                    if rule.correct_descent is not Variant.correct_descent:
                        if self._clean is not None and self.world > 1 and not self.sync_ascent:
                            self.comm.average_(list(self._clean.values()), tag="clean")
                        self.variant.correct_descent(self._descent_grads(), self._clean)
                elif rule.correct_plain is not Variant.correct_plain:
                    self.variant.correct_plain(self._descent_grads())
                self.sam_steps += 1
            self.base_optimizer.step()
            self._opt_called = True  # tells torch's LR schedulers that this optimizer has stepped
        if self.scaler is not None:
            self.scaler.update(overflow)
        self._clean, self._groups, self._acc, self._overflow = None, 0, None, False
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self, closure=None):
        """One whole step. ``closure`` runs forward and backward at the current weights and returns
        the loss; the caller zeroes the gradients before the step (as with davda54/sam).

        - A step that perturbs: closure at w (the ascent gradient, in .grad), w <- w + e, closure
          at w + e, restore w, the variant's correction, the base step. MSAM (no ascent pass):
          w <- w + e from the momentum, closure at w + e, restore, base step.
        - Any other step (variant none, before ``sam_start_epoch``, LookSAM between its SAM
          steps): closure at w, the variant's correction (LookSAM), the base step.
        Returns the closure's loss at w (MSAM: at w + e).

        ESAM: only the random weight subset applies; its data selection needs per-sample losses,
        which a closure does not give, so the descent uses the whole batch (warned once when
        gamma < 1; bench.engine.step.train_step does both). ``m`` (m-sharpness) splits the batch, which
        a closure hides: it raises here (use train_step, or first_step/unperturb per group).
        """
        if not self.variant.perturbs:
            return self.base_optimizer.step(closure)
        if closure is None:
            raise ValueError("SAM.step needs a closure that runs forward and backward and returns the loss")
        if self.scaler is not None:
            raise ValueError("fp16 loss scaling scales each backward pass, which a closure hides: use "
                             "bench.engine.step.train_step")
        if self.variant.m is not None:
            raise ValueError(f"m={self.variant.m} (m-sharpness) splits the batch, which a closure hides: "
                             "use bench.engine.step.train_step, or first_step/unperturb per group and second_step")
        if self.variant.selects_data and not getattr(self, "_warned_selection", False):
            self._warned_selection = True
            warnings.warn(f"{self.variant.registered_name}: step(closure) cannot select samples (the closure "
                          "returns one mean loss); the descent uses the whole batch", stacklevel=2)
        closure = torch.enable_grad()(closure)
        if not self.sam_now:
            loss = closure()
            self.second_step()
            return loss
        loss = None
        if self.variant.ascent:
            loss = closure()
            self.first_step(zero_grad=True)
        else:
            self.first_step()
        descent_loss = closure()
        self.second_step()
        return descent_loss if loss is None else loss

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
        state = {"base": self.base_optimizer.state_dict(), "rho": self.rho, "sam_steps": self.sam_steps,
                 "variant": self.variant.state_dict()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self.mask is not None and (self.mask.needs_data or self.mask.update_every):
            state["selection"] = {n: m.cpu() for n, m in self.selection.items()}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self.base_optimizer.load_state_dict(state_dict["base"])
        self.param_groups = self.base_optimizer.param_groups  # keep the link to the base
        device = next(self.model.parameters()).device
        if "selection" in state_dict:
            self.set_selection({n: m.to(device) for n, m in state_dict["selection"].items()})
        self.sam_steps = int(state_dict.get("sam_steps", 0))
        self.variant.load_state_dict(state_dict.get("variant", {}), device)
        if self.scaler is not None and "scaler" in state_dict:
            self.scaler.load_state_dict(state_dict["scaler"])
