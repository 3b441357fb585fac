"""SAM variants: how the perturbation is found and how the descent gradient is used.

Every module in this folder is imported on first use, so a new variant is one new file
with ``@register_variant("name")`` on a :class:`Variant` subclass. Extra folders of variant
modules can be named in the environment variable ``SAMBENCH_VARIANT_PATH``
(``os.pathsep``-separated).

    import bench.engine.variants as variants
    variants.list_variants()               # ['asam', 'esam', 'fsam', 'gsam', 'looksam', 'msam', 'none', 'sam']
    v = variants.create_variant("looksam", k=5, alpha=0.7)
"""
from __future__ import annotations

from typing import Any

from bench.engine.variants.base import Variant, register_variant  # noqa: F401
from bench.registries import VARIANTS, variant_options
from masks.registry import import_modules

_loaded = False


def load_all() -> None:
    """Import every variant module here and in SAMBENCH_VARIANT_PATH (idempotent)."""
    global _loaded
    if _loaded:
        return
    import_modules("bench.engine.variants", __path__, ("base",), "SAMBENCH_VARIANT_PATH", "sambench_user_variants")
    _loaded = True  # only once every module imported: a failed import is retried, not half-loaded


def create_variant(name: str | Variant, **opts: Any) -> Variant:
    """``create_variant("gsam", alpha=0.2)``, or a Variant instance (returned as is)."""
    if isinstance(name, Variant):
        return name
    load_all()
    return VARIANTS.get(name)(**opts)


def list_variants(pattern: str = "*") -> list[str]:
    load_all()
    return VARIANTS.names(pattern)


def describe_variants() -> list[tuple[str, str, str]]:
    """(name, one-line description, options with defaults) for every registered variant."""
    load_all()
    rows = []
    for name, cls in VARIANTS.items():
        doc = (cls.__doc__ or "").strip().splitlines()
        opts = ", ".join(f"{k}={v!r}" for k, v in variant_options(name).items())
        rows.append((name, doc[0] if doc else "", opts))
    return rows
