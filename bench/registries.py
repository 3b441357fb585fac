"""The registries of bench (datasets, models, variants), the model-name rule and variant options.

Masks keep their own registry in masks/. The modules that register entries (bench.data.datasets,
bench.models, bench.engine.variants) import this module; this module imports none of them: each
registry names its provider modules and imports them by name on first lookup, the way
masks.load_all discovers mask modules. So there is no import cycle, and a lookup from
anywhere sees every registered entry.
"""
from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

from masks.registry import Registry, UnknownNameError


class LazyRegistry(Registry):
    """A Registry that imports its provider modules before the first lookup."""

    def __init__(self, kind: str, providers: list[str], plugin_env: str | None = None):
        super().__init__(kind, plugin_env)
        self.providers = list(providers)
        self._loaded = False

    def load(self) -> None:
        if not self._loaded:
            for provider in self.providers:  # "module" or "module:function to call after import"
                module, _, loader = provider.partition(":")
                imported = importlib.import_module(module)
                if loader:
                    getattr(imported, loader)()
            self._loaded = True

    def get(self, name: str) -> Any:
        self.load()
        return super().get(name)

    def names(self, pattern: str = "*") -> list[str]:
        self.load()
        return super().names(pattern)

    def __contains__(self, name: object) -> bool:
        self.load()
        return super().__contains__(name)

    def items(self):
        self.load()
        return super().items()


DATASETS = LazyRegistry("dataset", ["bench.data.datasets", "bench.data.imagefolder"])
MODELS = LazyRegistry("model", ["bench.models"])
VARIANTS = LazyRegistry("variant", ["bench.engine.variants:load_all"], plugin_env="SAMBENCH_VARIANT_PATH")
_BY_KIND = {"dataset": DATASETS, "model": MODELS, "variant": VARIANTS}


def load() -> None:
    """Import every provider module (cheap: timm is imported lazily)."""
    for registry in _BY_KIND.values():
        registry.load()


def names(kind: str) -> list[str]:
    return _BY_KIND[kind].names()


# --- the model-name rule (one place: validation and bench.models.create_model use it) ---------

_WRN = re.compile(r"^wrn(\d+)_(\d+)$")
MODEL_PATTERNS = ["wrn<depth>_<width>", "timm:<name>"]


def parse_model_name(name: str) -> tuple:
    """What a model name means: ``("registered", name)``, ``("wrn", depth, width)`` or
    ``("timm", timm_name)``; raise UnknownNameError for anything else.

    A Wide ResNet needs depth = 6n + 4 with n >= 1 (10, 16, 22, 28, ...) and width >= 1.
    A timm name must be one of ``timm.list_models()`` (timm is imported only for these).
    """
    if not isinstance(name, str):
        raise UnknownNameError("model", repr(name), MODELS.names() + MODEL_PATTERNS)
    if name in MODELS:
        return ("registered", name)
    m = _WRN.match(name)
    if m:
        depth, width = int(m.group(1)), int(m.group(2))
        if depth >= 10 and (depth - 4) % 6 == 0 and width >= 1:
            return ("wrn", depth, width)
    if name.startswith("timm:") and len(name) > 5:
        import timm

        if timm.is_model(name[5:]):
            return ("timm", name[5:])
        raise UnknownNameError("timm model", name[5:], ["see timm.list_models()"])
    raise UnknownNameError("model", name, MODELS.names() + MODEL_PATTERNS)


def model_exists(name: str) -> bool:
    try:
        parse_model_name(name)
    except UnknownNameError:
        return False
    return True


# --- variant options: the registered class's keyword parameters are the schema ----------------

def variant_options(name: str) -> dict[str, Any]:
    """``{option: default}`` of a registered SAM variant, read from its ``__init__`` signature.

    Parameters without a default (required options) are not listed.
    """
    cls = VARIANTS.get(name)
    if cls not in _OPTIONS:
        params = inspect.signature(cls.__init__).parameters.values()
        _OPTIONS[cls] = {p.name: p.default for p in params
                         if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                         and p.default is not p.empty}
    return dict(_OPTIONS[cls])


_OPTIONS: dict[Any, dict[str, Any]] = {}   # variant class -> its options (signatures do not change)
