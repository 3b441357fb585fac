"""The registries of bench (datasets, models, variants); masks keep their own in masks/."""
from __future__ import annotations

import re

from masks.registry import Registry, UnknownNameError  # noqa: F401

DATASETS = Registry("dataset")
MODELS = Registry("model")
VARIANTS = Registry("variant")

_WRN = re.compile(r"^wrn(\d+)_(\d+)$")


def load() -> None:
    """Import the modules that register entries (cheap: timm is imported lazily)."""
    import bench.data  # noqa: F401
    import bench.models  # noqa: F401
    import bench.variants

    bench.variants.load_all()


def names(kind: str) -> list[str]:
    load()
    return {"dataset": DATASETS, "model": MODELS, "variant": VARIANTS}[kind].names()


def model_exists(name: str) -> bool:
    load()
    if name in MODELS:
        return True
    if name.startswith("timm:") and len(name) > 5:
        return True
    m = _WRN.match(name)
    return bool(m) and (int(m.group(1)) - 4) % 6 == 0 and int(m.group(2)) >= 1
