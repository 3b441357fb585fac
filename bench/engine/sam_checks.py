"""What bench.engine.sam.SAM checks of its caller and of a variant, and what a logged step reports.

- :func:`check_signature`: the arguments of ``SAM(model, base_optimizer, ...)``; the davda54/sam form
  ``SAM(params, torch.optim.SGD, lr=...)`` is refused with the call to write instead;
- :func:`check_direction`: a variant's ``direction`` gives one tensor of each parameter's shape
  (a plugin's rule returning wrong shapes is named, with its file, at the run's first perturbation);
- :func:`step_stats`: rho_t, ||e|| and the ascent-gradient norm of a step the training loop logs.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bench.engine.variants import Variant


def check_signature(model: Any, base_optimizer: Any, options: dict) -> None:
    """TypeError for arguments in the davda54/sam form ``SAM(params, torch.optim.SGD, lr=...)``
    (or any other model / base optimizer that is not one), saying what to pass instead."""
    if isinstance(model, nn.Module) and isinstance(base_optimizer, torch.optim.Optimizer):
        return
    base_name = (f"{base_optimizer.__module__}.{base_optimizer.__qualname__}" if isinstance(base_optimizer, type)
                 else "torch.optim.SGD")
    if base_name.startswith("torch.optim.") and base_name.count(".") == 3:
        base_name = "torch.optim." + base_name.rsplit(".", 1)[1]  # torch.optim.sgd.SGD -> torch.optim.SGD
    hyper = {k: v for k, v in options.items() if k in ("lr", "momentum", "weight_decay", "nesterov", "betas",
                                                         "eps", "dampening")} or {"lr": 0.1}
    given = ", ".join(f"{k}={v!r}" for k, v in hyper.items())
    adaptive = ', variant="asam"' if options.get("adaptive") else ""
    got = []
    if not isinstance(model, nn.Module):
        got.append(f"model={type(model).__name__} (pass the nn.Module itself, not its parameters: the mask "
                   f"finds the normalization layers by module type)")
    if not isinstance(base_optimizer, torch.optim.Optimizer):
        what = f"the class {base_name}" if isinstance(base_optimizer, type) else type(base_optimizer).__name__
        got.append(f"base_optimizer={what} (pass an optimizer built on the model's parameters)")
    raise TypeError(
        "SAM(model, base_optimizer, rho=..., variant=..., mask=...): got " + "; ".join(got)
        + f". The davda54/sam form SAM(params, {base_name.rsplit('.', 1)[-1]}, lr=...) becomes "
        f"SAM(model, {base_name}(model.parameters(), {given}), rho=0.05{adaptive}, mask=\"all\")")


def step_stats(opt: Any, grads: list[torch.Tensor] | None, e: list[torch.Tensor]) -> dict[str, Any]:
    """What a logged step reports of its perturbation: ``rho_t`` (the variant's radius, GSAM's follows
    the learning rate), ``e_norm`` (||e||_2 over the perturbed entries) and ``ascent_grad_norm``
    (||g||_2 of the ascent gradient over the tensors it was computed for); norms as 0-dim tensors,
    so nothing waits for the device until they are read."""
    def total(ts):
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(ts))) if ts else None

    return {"rho_t": float(opt.variant.radius(opt.rho)), "e_norm": total(e), "ascent_grad_norm": total(grads)}


def check_direction(variant: Variant, names: list[str], params: list[torch.Tensor], d: Any) -> None:
    """ValueError naming the variant's file unless ``d`` is one tensor of each parameter's shape
    (checked at a run's first perturbation: a plugin's ``direction`` returning wrong shapes)."""
    from masks.registry import source_file

    where = f"variant {variant.registered_name!r} ({source_file(type(variant))}): direction()"
    if not isinstance(d, (list, tuple)) or len(d) != len(params):
        got = f"{len(d)} tensors" if isinstance(d, (list, tuple)) else type(d).__name__
        raise ValueError(f"{where} returned {got}; it returns one tensor per ascent tensor ({len(params)})")
    for name, p, x in zip(names, params, d):
        if not isinstance(x, torch.Tensor) or x.shape != p.shape:
            got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{where} returned {got} for {name!r}, whose shape is {tuple(p.shape)}")
