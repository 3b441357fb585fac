"""Mask strategies: which parameters SAM's adversarial step perturbs.

Every module in this folder is imported on first use, so a new strategy is one new
file with ``@register_mask("name")``. Extra folders of mask modules can be named in
the environment variable ``SAMBENCH_MASK_PATH`` (``os.pathsep``-separated).
"""
from __future__ import annotations

from masks.base import (  # noqa: F401
    MASKS,
    Mask,
    MaskError,
    Selection,
    is_norm_module,
    n_trainable,
    norm_param_names,
    perturbed_fraction,
    register_mask,
    register_norm_type,
    selection_count,
)
from masks.base import (
    create_mask as _create_mask,
)
from masks.base import (
    describe_masks as _describe_masks,
)
from masks.base import (
    list_masks as _list_masks,
)
from masks.base import (
    mask_options as _mask_options,
)
from masks.base import (
    mask_perturbs as _mask_perturbs,
)
from masks.registry import UnknownNameError, import_modules  # noqa: F401

_loaded = False


def load_all() -> None:
    """Import every mask module here and in SAMBENCH_MASK_PATH (idempotent)."""
    global _loaded
    if _loaded:
        return
    import_modules("masks", __path__, ("base", "registry"), "SAMBENCH_MASK_PATH", "sambench_user_masks")
    _loaded = True  # only once every module imported: a failed import is retried, not half-loaded


def create_mask(name, **kwargs) -> Mask:
    """``create_mask("random", sparsity=0.9995, seed=0)`` or a Mask instance (returned as is)."""
    load_all()
    return _create_mask(name, **kwargs)


def list_masks(pattern: str = "*") -> list[str]:
    load_all()
    return _list_masks(pattern)


def mask_perturbs(mask) -> bool:
    """False for the ``none`` mask (a baseline run: the plain base optimizer), True for the others."""
    load_all()
    return _mask_perturbs(mask)


def describe_masks() -> list[tuple[str, str, str]]:
    load_all()
    return _describe_masks()


def mask_options(name) -> list[str]:
    """The option names of a strategy (``mask_opts`` keys it takes; sparsity and seed among them)."""
    load_all()
    return _mask_options(name)
