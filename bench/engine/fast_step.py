"""The fast SAM step: the update math between the passes in fused foreach ops on buffers
allocated once, and optionally the whole step under ``torch.compile``.

    step = FastStep(model, opt, criterion, amp_ctx, reference, compiled=True)
    logits, loss = step(x, y)          # the same step as reference(x, y): bench.engine.step.train_step

The reference is :func:`bench.engine.step.train_step` with :class:`bench.engine.sam.SAM` (eager, one formula per
line); this is the same step in fewer kernels (tests/test_fast_step.py holds them equal):

1. clean forward, with only the perturbed tensors P requiring a gradient, and ``autograd.grad``
   of the loss w.r.t. P (a compiled backward computes every gradient its graph was built for);
2. ``FusedUpdate.perturb``: g masked (one ``_foreach_mul_``), ASAM's T = |w| + eta into a buffer
   made once, e = rho T (T g) / ||T g|| (p = 2) or rho T sign(g) (p = inf) in place on g, the
   backup of P (SAM's own buffers) and w <- w + e: a handful of foreach launches, no allocation
   besides the gradients autograd returns and the norm's scalars;
3. forward and backward at w + e (``.grad``);
4. ``FusedUpdate.restore`` (one ``_foreach_copy_``), then ``SAM.second_step``: its bookkeeping and
   the base optimizer's step (torch's foreach implementation on CUDA).

``compiled=True`` wraps steps 1-2 and 3-4 (but the base step) in ``torch.compile``: inductor in
its default mode (``COMPILE_MODE``; max-autotune's kernel search costs minutes on a large model,
and CUDA graphs ("reduce-overhead") are not tried: the step changes the parameters in place and
breaks its graphs at the two backward passes). The base step stays eager because its learning
rate changes every step (a constant of a compiled graph). What the fast path does not
cover (``unsupported``: other variants, m-sharpness, rho_norm="full", freeze_bn_second,
layerwise ASAM, fp16 loss scaling, several processes; bench.engine.train also keeps steps of several
micro-batches on the reference) and every step that does not perturb run the reference.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from bench.engine.variants.base import EPS, Variant
from bench.engine.variants.basic import ASAMVariant, SAMVariant

COMPILE_MODE: str | None = None       # torch.compile's default mode (see the module docstring)
BACKEND = "inductor"                  # torch.compile's backend for FastStep(compiled=True)
RECOMPILE_LIMIT = 64                  # compiled steps per process (one per model and mask)


def unsupported(opt) -> str | None:
    """Why the fast path cannot run this SAM's steps (None: it can)."""
    variant = opt.variant
    if not variant.perturbs:
        return "no SAM step to speed up (plain base optimizer)"
    if type(variant) not in (SAMVariant, ASAMVariant):
        return f"variant {variant.registered_name} (fused: sam, asam)"
    if variant.m is not None:
        return "m-sharpness"
    if opt.rho_norm != "subset":
        return f"rho_norm={opt.rho_norm}"
    if opt.freeze_bn_second:
        return "freeze_bn_second"
    if getattr(opt, "scaler", None) is not None:
        return "fp16 loss scaling"
    if getattr(opt, "comm", None) is not None:
        return "several processes"
    if isinstance(variant, ASAMVariant) and variant.adaptive != "elementwise":
        return f"asam adaptive={variant.adaptive}"
    return None


def scaled_positions(variant: Variant, names: list[str]) -> list[int]:
    """Positions of the tensors ASAM rescales (named weight, or all with normalize_bias); none for SAM."""
    if not isinstance(variant, ASAMVariant):
        return []
    return [i for i, n in enumerate(names) if variant.normalize_bias or "weight" in n.rsplit(".", 1)[-1]]


class FusedUpdate:
    """The perturbation and the restore of one selection (one mask), on buffers allocated once.

    ``params``/``backup``: SAM's perturbed tensors and their backups; ``mask_index``/``mask_values``:
    its partially masked tensors; ``scale_buffers``: T for ASAM's rescaled tensors.
    """

    def __init__(self, opt):
        variant = opt.variant
        self.params, self.backup = opt._perturbed, opt._backup
        self.mask_index, self.mask_values = opt._mask_index, opt._mask_values
        self.p = variant.p
        self.eta = getattr(variant, "eta", 0.0)
        self.scaled = scaled_positions(variant, opt._perturbed_names)
        self.scale_buffers = [torch.empty_like(self.params[i]) for i in self.scaled]
        ids = {id(p) for p in self.params}
        self.others = [p for _, p in opt._trainable if id(p) not in ids]  # no gradient in the ascent

    def _scales(self) -> list[torch.Tensor]:
        """T = |w| + eta on the rescaled tensors, written into the buffers (three foreach launches)."""
        if self.scaled:
            torch._foreach_copy_(self.scale_buffers, [self.params[i] for i in self.scaled])
            torch._foreach_abs_(self.scale_buffers)
            torch._foreach_add_(self.scale_buffers, self.eta)
        return self.scale_buffers

    @torch.no_grad()
    def perturb(self, grads: list[torch.Tensor | None], rho: float) -> None:
        """w <- w + e on the perturbed tensors; ``grads`` (g on them) becomes e in place."""
        e = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, self.params)]
        if self.mask_index:
            torch._foreach_mul_([e[i] for i in self.mask_index], self.mask_values)
        scales = self._scales()
        scaled = [e[i] for i in self.scaled]
        if self.p == "inf":
            torch._foreach_sign_(e)
            if scaled:
                torch._foreach_mul_(scaled, scales)
            torch._foreach_mul_(e, rho)
        else:
            if scaled:
                torch._foreach_mul_(scaled, scales)    # T g
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(e)))
            if scaled:
                torch._foreach_mul_(scaled, scales)    # T^2 g
            torch._foreach_mul_(e, rho / (norm + EPS))
        torch._foreach_copy_(self.backup, self.params)
        torch._foreach_add_(self.params, e)

    @torch.no_grad()
    def restore(self) -> None:
        torch._foreach_copy_(self.params, self.backup)


class FastStep:
    """A callable ``(x, y) -> (logits, loss)``: bench.engine.step.train_step, faster where it can be.

    ``reference``: ``(x, y) -> (logits, loss)``, the step it stands in for (bench.engine.step.train_step
    on the same model and optimizer), run where the fast path does not apply;
    ``forward``: the model, or its torch.compile wrapper (what the eager fused passes call);
    ``compiled``: the two passes of a SAM step under torch.compile (the plain model inside) with
    ``backend`` (default ``BACKEND``; tests also use "aot_eager": the same graphs, no code generation).
    During the clean forward only the perturbed tensors require a gradient, so a compiled backward,
    which computes every gradient its graph was built for, stays as short as the eager one.
    """

    def __init__(self, model, opt, criterion, amp_ctx: Callable[[], Any], reference: Callable[[Any, Any], Any],
                 compiled: bool = False, forward=None, backend: str | None = None):
        self.model, self.opt, self.criterion, self.amp_ctx = model, opt, criterion, amp_ctx
        self.reference = reference
        self.forward = model if forward is None else forward
        self.compiled = compiled
        self.reason = unsupported(opt)
        self.update: FusedUpdate | None = None
        self._inner = model if compiled else self.forward
        self._ascent, self._descent = self._ascent_pass, self._descent_pass
        if compiled:
            import torch._dynamo

            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
            backend = backend or BACKEND
            mode = COMPILE_MODE if backend == "inductor" else None
            self._ascent = torch.compile(self._ascent_pass, backend=backend, mode=mode)
            self._descent = torch.compile(self._descent_pass, backend=backend, mode=mode)

    @property
    def fused(self) -> bool:
        """Whether SAM steps take the fast path (else all of them run the reference)."""
        return self.reason is None

    def describe(self) -> dict:
        """What result.json records: whether SAM steps ran fused and compiled, or why not."""
        return {"compiled": self.compiled and self.fused, "fused": self.fused, "reason": self.reason}

    def __call__(self, x, y):
        opt = self.opt
        if self.reason is not None or not opt.sam_now:
            return self.reference(x, y)
        if self.update is None or self.update.backup is not opt._backup:  # a new selection
            if not opt._perturbed:
                raise RuntimeError("the mask is not built yet: call build_mask(data) first")
            self.update = FusedUpdate(opt)
        opt.zero_grad(set_to_none=True)
        frozen = self.update.others
        for p in frozen:
            p.requires_grad_(False)
        try:
            out, loss = self._ascent(x, y, opt.variant.radius(opt.rho))
        finally:
            for p in frozen:
                p.requires_grad_(True)
        self._descent(x, y)
        opt.second_step(zero_grad=True)  # bookkeeping (LR schedulers, step counter) and the base step
        return out, loss

    def _ascent_pass(self, x, y, rho: float):
        """Steps 1-2: the clean forward, g on the perturbed tensors, w <- w + e; (logits, loss)."""
        with self.amp_ctx():
            out = self._inner(x)
            loss = self.criterion(out, y)
        grads = torch.autograd.grad(loss, self.update.params, allow_unused=True)
        self.update.perturb(list(grads), rho)
        return out, loss

    def _descent_pass(self, x, y) -> None:
        """Steps 3-4 but the base step: forward and backward at w + e into .grad, then restore w."""
        with self.amp_ctx():
            loss = self.criterion(self._inner(x), y)
        loss.backward()
        self.update.restore()
