"""The Mask interface: which parameter elements SAM's ascent step perturbs.

A mask builds a *selection*: ``{param_name: BoolTensor of the parameter's shape}``.
Parameters absent from the selection are not perturbed at all (the optimizer never
touches, copies or differentiates them on its fast path).
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import nn

from masks.registry import PLUGIN_FILES, Registry, source_file

Selection = dict[str, torch.Tensor]

MASKS = Registry("mask", plugin_env="SAMBENCH_MASK_PATH")


class MaskError(ValueError):
    """A mask that cannot be built on this model (e.g. it selects nothing)."""


def register_mask(name: str):
    """Class decorator: ``@register_mask("name")`` makes the strategy available everywhere."""
    return MASKS.register(name)


# --- normalization layers, found by module type ---------------------------------------

_NORM_TYPES: list[type] = [
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm* (and subclasses)
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
]
if hasattr(nn, "RMSNorm"):
    _NORM_TYPES.append(nn.RMSNorm)


def register_norm_type(cls: type) -> type:
    """Declare a custom module class as a normalization layer (usable as a decorator)."""
    if cls not in _NORM_TYPES:
        _NORM_TYPES.append(cls)
    return cls


def _is_timm_norm(cls: type) -> bool:
    # timm defines norm layers that do not subclass torch's (RmsNorm, SimpleNorm, ...);
    # match them by their defining module and class, so masks need not import timm.
    return any(
        c.__module__.startswith("timm.layers") and "Norm" in c.__name__ for c in cls.__mro__
    )


def is_norm_module(module: nn.Module) -> bool:
    return isinstance(module, tuple(_NORM_TYPES)) or _is_timm_norm(type(module))


def norm_param_names(model: nn.Module) -> list[str]:
    """Names of the trainable affine parameters owned directly by normalization modules."""
    names = []
    for mod_name, module in model.named_modules():
        if not is_norm_module(module):
            continue
        for p_name, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                names.append(f"{mod_name}.{p_name}" if mod_name else p_name)
    return names


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def n_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in trainable(model).values())


# --- selections --------------------------------------------------------------------------

def full_selection(model: nn.Module, names: Iterable[str]) -> Selection:
    params = trainable(model)
    return {n: torch.ones_like(params[n], dtype=torch.bool) for n in names}


def selection_count(sel: Selection) -> int:
    return int(sum(int(m.sum()) for m in sel.values()))


def perturbed_fraction(sel: Selection, model: nn.Module) -> float:
    return selection_count(sel) / max(1, n_trainable(model))


def prune_empty(sel: Selection) -> Selection:
    return {n: m for n, m in sel.items() if bool(m.any())}


def topk_selection(model: nn.Module, scores: dict[str, torch.Tensor], k: int,
                   largest: bool = True) -> Selection:
    """Keep exactly the k elements with the largest (or smallest) score, globally."""
    names = list(scores)
    flat = torch.cat([scores[n].detach().reshape(-1).float() for n in names])
    if not 0 < k <= flat.numel():
        raise MaskError(f"cannot keep {k} of {flat.numel()} elements")
    idx = torch.topk(flat, k, largest=largest, sorted=False).indices
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[idx] = True
    out, start = {}, 0
    for n in names:
        numel = scores[n].numel()
        out[n] = keep[start:start + numel].view_as(scores[n]).to(scores[n].device)
        start += numel
    return prune_empty(out)


# --- option checks shared by the strategies -------------------------------------------

def check_required_sparsity(mask: Mask) -> None:
    if mask.sparsity is None:
        raise ValueError(
            f"mask {mask.registered_name!r} needs a sparsity: a number in [0, 1) "
            f"(fraction of elements NOT perturbed) or 'match:<mask>'"
        )


def check_int(mask: Mask, option: str, value, minimum: int = 1, allow_none: bool = False) -> None:
    """ValueError naming the option unless ``value`` is an int >= minimum (or None if allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        extra = " or None" if allow_none else ""
        raise ValueError(
            f"mask {mask.registered_name!r}: option {option} must be an integer >= {minimum}{extra}, "
            f"got {value!r}"
        )


def check_choice(mask: Mask, option: str, value, allowed: list) -> None:
    if value not in allowed:
        raise ValueError(
            f"mask {mask.registered_name!r}: option {option} got {value!r}; allowed: "
            + ", ".join(map(repr, allowed))
        )


def check_seed(mask: Mask, seed) -> None:
    check_int(mask, "seed", seed, minimum=0)


# --- the base class ------------------------------------------------------------------------

class Mask:
    """Base class of every mask strategy.

    Subclasses implement :meth:`select`. Options are keyword arguments of ``__init__``;
    ``sparsity`` (fraction of elements *not* perturbed) is either a float in [0, 1) or
    ``"match:<mask>"``, resolved on the actual model by :meth:`target_count`.

    Masks that change during training set ``update_every`` (epochs); the optimizer then
    calls :meth:`update` at the start of those epochs. A mask with ``perturbs = False``
    (``none``) makes the run a baseline: SAM steps as its base optimizer.
    """

    registered_name: str = "?"
    description: str = ""
    needs_data: bool = False
    uses_sparsity: bool = False
    perturbs: bool = True            # False: the ``none`` mask (a baseline: SAM is the base optimizer)
    update_every: int | None = None

    def __init__(self, sparsity: float | str | None = None, seed: int = 0, **options: Any):
        if options:
            raise unknown_options(self.registered_name, sorted(options), mask_options(type(self)))
        if sparsity is not None and not self.uses_sparsity:
            raise TypeError(f"mask {self.registered_name!r} takes no sparsity")
        check_sparsity(sparsity)
        self.sparsity = sparsity
        self.seed = seed

    # subclasses -----------------------------------------------------------------------
    def select(self, model: nn.Module, data: Iterable | None) -> Selection:
        raise NotImplementedError

    # public API -----------------------------------------------------------------------
    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A strategy's own ``update`` is checked like ``select`` (see :meth:`checked`)."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("update")
        if own is not None and not getattr(own, "_checked", False):
            def update(self, model, data, epoch, epochs, current, _own=own):
                return self.checked(model, "update", lambda: _own(self, model, data, epoch, epochs, current))

            update._checked = True
            update.__doc__ = own.__doc__
            cls.update = update

    def checked(self, model: nn.Module, hook: str, call) -> Selection:
        """``call()``'s selection, checked: a mapping of the model's trainable parameter names to
        bool tensors of their shapes. A strategy breaking that, or a plugin's strategy raising,
        is a MaskError naming the strategy's file and what was wrong."""
        where = f"mask {self.registered_name!r} ({source_file(type(self))})"
        try:
            sel = call()
        except MaskError:
            raise
        except Exception as exc:
            if source_file(type(self)) not in PLUGIN_FILES:
                raise
            raise MaskError(f"{where}: {hook}() raised {type(exc).__name__}: {exc}") from exc
        return check_selection(sel, model, f"{where}: {hook}()")

    def build(self, model: nn.Module, data: Iterable | None = None) -> Selection:
        if self.needs_data and data is None:
            raise MaskError(f"mask {self.registered_name!r} needs data batches to be built")
        sel = prune_empty(self.checked(model, "select", lambda: self.select(model, data)))
        if not sel:
            raise MaskError(
                f"mask {self.registered_name!r} selects no parameter of "
                f"{type(model).__name__}; nothing would be perturbed"
            )
        return sel

    def needs_update(self, epoch: int) -> bool:
        return bool(self.update_every) and epoch > 0 and epoch % self.update_every == 0

    def update(self, model: nn.Module, data: Iterable | None, epoch: int, epochs: int,
               current: Selection) -> Selection:
        """New selection at the start of ``epoch``; by default rebuilt from scratch."""
        return self.build(model, data)

    def target_count(self, model: nn.Module, data: Iterable | None = None) -> int:
        """Number of elements to perturb, from ``sparsity`` on this model."""
        total = n_trainable(model)
        if isinstance(self.sparsity, str):
            ref = create_mask(self.sparsity.split(":", 1)[1], seed=self.seed)
            k = selection_count(ref.build(model, data))
        elif self.sparsity is None:
            raise MaskError(f"mask {self.registered_name!r} needs a sparsity")
        else:
            k = math.floor(total * (1.0 - float(self.sparsity)) + 1e-9)
        if k < 1:
            raise MaskError(
                f"sparsity {self.sparsity} leaves no element of {total} to perturb "
                f"with mask {self.registered_name!r}"
            )
        return k

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sparsity={self.sparsity!r}, seed={self.seed})"


def check_selection(sel: Any, model: nn.Module, where: str) -> Selection:
    """``sel`` if it is ``{trainable parameter name: bool tensor of that parameter's shape}``;
    else MaskError saying ``where`` and what is wrong."""
    if not isinstance(sel, dict):
        raise MaskError(f"{where} returned {type(sel).__name__}, not a dict {{parameter name: bool tensor}}")
    params = trainable(model)
    for name, m in sel.items():
        if name not in params:
            close = [n for n in params if n.endswith(str(name))][:1]
            raise MaskError(f"{where} returned a mask for {name!r}, which is not a trainable parameter of "
                            f"{type(model).__name__}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
            what = f"a {m.dtype} tensor" if isinstance(m, torch.Tensor) else type(m).__name__
            raise MaskError(f"{where} returned {what} for {name!r}; a mask is a bool tensor")
        if m.shape != params[name].shape:
            raise MaskError(f"{where} returned a mask of shape {tuple(m.shape)} for {name!r}, whose shape "
                            f"is {tuple(params[name].shape)}")
    return sel


def check_sparsity(sparsity: Any) -> None:
    if sparsity is None:
        return
    if isinstance(sparsity, str):
        if not sparsity.startswith("match:"):
            raise ValueError(f"sparsity {sparsity!r}: use a number in [0, 1) or 'match:<mask>'")
        MASKS.get(sparsity.split(":", 1)[1])
        return
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity {sparsity!r} must be a number in [0, 1) or 'match:<mask>'")


def create_mask(name: "str | Mask", **kwargs: Any) -> Mask:
    if isinstance(name, Mask):
        return name
    cls = MASKS.get(name)
    allowed = mask_options(cls)
    unknown = sorted(k for k in kwargs if k not in allowed)
    if unknown and not _takes_any(cls):
        raise unknown_options(name, unknown, allowed)
    return cls(**kwargs)


def unknown_options(name: str, unknown: list[str], allowed: list[str]) -> TypeError:
    """The error for options a strategy does not take, with the one meant when it is one edit away."""
    from bench.errors import did_you_mean

    hints = "".join(did_you_mean(k, allowed) for k in unknown)
    return TypeError(f"mask {name!r} has no option {', '.join(map(repr, unknown))}{hints} "
                     f"(allowed: {', '.join(allowed) or 'none'})")


def _takes_any(cls: type) -> bool:
    """Whether a strategy's ``__init__`` takes ``**options`` (then it checks them itself)."""
    import inspect

    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values())


def list_masks(pattern: str = "*") -> list[str]:
    return MASKS.names(pattern)


def mask_options(cls_or_name: "type | str") -> list[str]:
    """The options of a strategy: the keyword parameters of its ``__init__`` (its schema)."""
    import inspect

    cls = MASKS.get(cls_or_name) if isinstance(cls_or_name, str) else cls_or_name
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def mask_perturbs(mask: "str | Mask") -> bool:
    """Whether a mask (a registered name or an instance) perturbs anything: False for ``none``, the
    baseline. Read from the class, so a name is not constructed (it may need options)."""
    return (mask if isinstance(mask, Mask) else MASKS.get(mask)).perturbs


def describe_masks() -> list[tuple[str, str, str]]:
    """(name, one-line description, options) for every registered strategy."""
    import inspect

    rows = []
    for name, cls in MASKS.items():
        sig = inspect.signature(cls.__init__)
        opts = [
            f"{p.name}={p.default!r}" if p.default is not inspect.Parameter.empty else p.name
            for p in list(sig.parameters.values())[1:]
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ]
        rows.append((name, (cls.description or (cls.__doc__ or "").strip().splitlines()[0]), ", ".join(opts)))
    return rows
