"""Layer-wise masks: perturb whole chosen layers or blocks.

A *layer* is a module that owns trainable parameters directly (``named_parameters(recurse=False)``),
in registration order (``model.named_modules()``); parameters owned by the model itself (e.g. a
ViT's ``cls_token``/``pos_embed``) form one layer named ``"<model>"``. A *block* is an entry of
the model's ``mask_blocks`` attribute (a list of submodule names, e.g. bench's WRN has
``["stages.0", "stages.1", "stages.2"]``); without it, the children of the first of
``stages`` / ``blocks`` / ``layers`` / ``features`` that the model has, else its top-level
children.

Exactly one selection mode:

``blocks=[2, 3]``     every parameter inside blocks 2 and 3 (1-based).
``first=k``           the first k layers.
``last=k``            the last k layers.
``types=[...]``       layers whose class (or a base class) has one of these names, case-insensitive;
                      ``"norm"`` = every normalization layer (``masks.base.is_norm_module``).
``sparsity=s``        whole layers in a seeded random order, first-fit up to ``target_count``
                      elements (the rule of ``random_tensor``, :func:`masks.random.first_fit`):
                      the count never exceeds the target and no left-out layer would fit.

``norm_only=True`` restricts the candidates to normalization layers before the mode applies:
``blocks`` -> the norm layers inside those blocks; ``first``/``last`` -> the first/last k norm
layers; ``sparsity`` -> random norm layers. (Not with ``types``: use ``types=["norm"]``.)
"""
from __future__ import annotations

import torch
from torch import nn

from masks.base import (
    Mask,
    MaskError,
    check_choice,
    check_int,
    check_seed,
    is_norm_module,
    register_mask,
    trainable,
)
from masks.random import first_fit

MODES = ("blocks", "first", "last", "types", "sparsity")
BLOCK_CONTAINERS = ("stages", "blocks", "layers", "features")


def model_layers(model: nn.Module) -> list[tuple[str, nn.Module, list[str]]]:
    """(module name, module, its trainable parameter names) for every layer, in order."""
    params = trainable(model)
    out = []
    for mod_name, module in model.named_modules():
        names = [f"{mod_name}.{p}" if mod_name else p for p, _ in module.named_parameters(recurse=False)]
        names = [n for n in names if n in params]
        if names:
            out.append((mod_name or "<model>", module, names))
    return out


def model_blocks(model: nn.Module) -> list[str]:
    """The names of the model's blocks (see the module docstring)."""
    declared = getattr(model, "mask_blocks", None)
    if declared is not None:
        if isinstance(declared, str) or not all(isinstance(b, str) for b in declared):
            raise MaskError(f"{type(model).__name__}.mask_blocks must be a list of submodule names")
        for b in declared:
            try:
                model.get_submodule(b)
            except AttributeError:
                raise MaskError(f"{type(model).__name__}.mask_blocks names {b!r}, not a submodule") from None
        return list(declared)
    for attr in BLOCK_CONTAINERS:
        container = getattr(model, attr, None)
        if isinstance(container, nn.Module):
            children = [n for n, _ in container.named_children()]
            if children:
                return [f"{attr}.{c}" for c in children]
    return [n for n, _ in model.named_children()]


def _type_names(module: nn.Module) -> set[str]:
    return {c.__name__.lower() for c in type(module).__mro__ if c not in (nn.Module, object)}


@register_mask("layerwise")
class LayerwiseMask(Mask):
    """Whole chosen layers or blocks; exactly one of blocks / first / last / types / sparsity."""

    description = "whole layers or blocks: blocks=[..] | first=k | last=k | types=[..] | sparsity; norm_only"
    uses_sparsity = True

    def __init__(self, sparsity: float | str | None = None, seed: int = 0, blocks: list[int] | int | None = None,
                 first: int | None = None, last: int | None = None, types: list[str] | str | None = None,
                 norm_only: bool = False):
        super().__init__(sparsity=sparsity, seed=seed)
        check_seed(self, seed)
        given = [m for m, v in zip(MODES, (blocks, first, last, types, sparsity)) if v is not None]
        if len(given) != 1:
            what = "none given" if not given else "got " + ", ".join(given)
            raise ValueError(f"mask 'layerwise' takes exactly one of the options {', '.join(MODES)} ({what})")
        if isinstance(blocks, int) and not isinstance(blocks, bool):
            blocks = [blocks]
        if blocks is not None:
            if (not isinstance(blocks, (list, tuple)) or not blocks
                    or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in blocks)):
                raise ValueError(f"mask 'layerwise': option blocks must be a non-empty list of 1-based block "
                                 f"indices (integers >= 1), got {blocks!r}")
            blocks = sorted(set(blocks))
        if first is not None:
            check_int(self, "first", first)
        if last is not None:
            check_int(self, "last", last)
        if isinstance(types, str):
            types = [types]
        if types is not None:
            if (not isinstance(types, (list, tuple)) or not types
                    or not all(isinstance(t, str) and t for t in types)):
                raise ValueError(f"mask 'layerwise': option types must be a non-empty list of module type "
                                 f"names (e.g. ['Conv2d'] or ['norm']), got {types!r}")
            types = list(types)
        check_choice(self, "norm_only", norm_only, [True, False])
        if norm_only and types is not None:
            raise ValueError("mask 'layerwise': options norm_only and types conflict; use types=['norm', ...]")
        self.mode = given[0]
        self.blocks, self.first, self.last, self.types = blocks, first, last, types
        self.norm_only = bool(norm_only)

    def layers(self, model) -> list[tuple[str, nn.Module, list[str]]]:
        layers = model_layers(model)
        if self.norm_only:
            layers = [layer for layer in layers if is_norm_module(layer[1])]
            if not layers:
                raise MaskError(
                    f"mask 'layerwise' with norm_only=True: {type(model).__name__} has no trainable "
                    f"normalization layer (found by module type; declare custom ones with "
                    f"masks.register_norm_type)"
                )
        return layers

    def select(self, model, data):
        layers = self.layers(model)
        if self.mode == "blocks":
            names = model_blocks(model)
            bad = [b for b in self.blocks if b > len(names)]
            if bad:
                listing = ", ".join(f"{i}={n}" for i, n in enumerate(names, 1)) or "none"
                raise MaskError(f"mask 'layerwise': blocks {bad} out of range; "
                                f"{type(model).__name__} has {len(names)} blocks ({listing})")
            prefixes = tuple(names[b - 1] + "." for b in self.blocks)
            chosen = [p for _, _, ps in layers for p in ps if p.startswith(prefixes)]
        elif self.mode in ("first", "last"):
            k = self.first if self.mode == "first" else self.last
            if k > len(layers):
                kind = "normalization layers" if self.norm_only else "layers with trainable parameters"
                raise MaskError(f"mask 'layerwise': {self.mode}={k} but {type(model).__name__} has only "
                                f"{len(layers)} {kind}")
            picked = layers[:k] if self.mode == "first" else layers[len(layers) - k:]
            chosen = [p for _, _, ps in picked for p in ps]
        elif self.mode == "types":
            wanted = {t.lower() for t in self.types}
            found: set[str] = set()
            chosen = []
            for _, module, ps in layers:
                names = _type_names(module)
                if is_norm_module(module):
                    names.add("norm")
                hit = names & wanted
                if hit:
                    found |= hit
                    chosen += ps
            missing = [t for t in self.types if t.lower() not in found]
            if missing:
                present = sorted({type(m).__name__ for _, m, _ in layers})
                raise MaskError(f"mask 'layerwise': types {missing} match no layer of {type(model).__name__}; "
                                f"its layer types: {', '.join(present)} (or 'norm')")
        else:  # sparsity
            params = trainable(model)
            sizes = [sum(params[p].numel() for p in ps) for _, _, ps in layers]
            picked = first_fit(sizes, self.target_count(model, data), self.seed)
            chosen = [p for i in picked for p in layers[i][2]]
        params = trainable(model)
        return {n: torch.ones_like(params[n], dtype=torch.bool) for n in chosen}

    def __repr__(self) -> str:
        opt = {"blocks": self.blocks, "first": self.first, "last": self.last, "types": self.types,
               "sparsity": self.sparsity}[self.mode]
        return f"LayerwiseMask({self.mode}={opt!r}, norm_only={self.norm_only}, seed={self.seed})"
