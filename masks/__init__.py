"""Mask strategies: which parameters SAM's adversarial step perturbs.

Every module in this folder is imported on first use, so a new strategy is one new
file with ``@register_mask("name")``. Extra folders of mask modules can be named in
the environment variable ``SAMBENCH_MASK_PATH`` (``os.pathsep``-separated).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys

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
from masks.registry import UnknownNameError  # noqa: F401

_loaded = False


def load_all() -> None:
    """Import every mask module here and in SAMBENCH_MASK_PATH (idempotent)."""
    global _loaded
    if _loaded:
        return
    for info in pkgutil.iter_modules(__path__):
        if info.name not in ("base", "registry") and not info.name.startswith("_"):
            importlib.import_module(f"masks.{info.name}")
    for folder in filter(None, os.environ.get("SAMBENCH_MASK_PATH", "").split(os.pathsep)):
        for info in pkgutil.iter_modules([folder]):
            mod_name = f"sambench_user_masks.{info.name}"
            if mod_name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(mod_name, os.path.join(folder, info.name + ".py"))
            if spec is None or spec.loader is None:
                continue
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
    _loaded = True  # only once every module imported: a failed import is retried, not half-loaded


def create_mask(name, **kwargs) -> Mask:
    """``create_mask("random", sparsity=0.9995, seed=0)`` or a Mask instance (returned as is)."""
    load_all()
    return _create_mask(name, **kwargs)


def list_masks(pattern: str = "*") -> list[str]:
    load_all()
    return _list_masks(pattern)


def describe_masks() -> list[tuple[str, str, str]]:
    load_all()
    return _describe_masks()
