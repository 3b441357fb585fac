"""A tiny name -> class registry, the pattern timm uses for models.

bench imports this too (for variants, models, datasets); masks never imports bench.
"""
from __future__ import annotations

import fnmatch
from typing import Any, Callable


class UnknownNameError(KeyError, ValueError):
    """A name that is not registered; the message lists the allowed names."""

    def __init__(self, kind: str, name: str, allowed: list[str]):
        self.kind, self.name, self.allowed = kind, name, allowed
        super().__init__(f"unknown {kind} {name!r}; allowed: {', '.join(allowed)}")

    def __str__(self) -> str:  # KeyError would quote the whole message
        return self.args[0]


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Any] = {}

    def register(self, name: str | None = None) -> Callable:
        def deco(obj):
            key = name or obj.__name__
            if key in self._entries and self._entries[key] is not obj:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = obj
            try:
                obj.registered_name = key
            except (AttributeError, TypeError):
                pass
            return obj

        return deco

    def unregister(self, name: str) -> None:
        """Remove an entry (for tests and interactive use); unknown names are ignored."""
        self._entries.pop(name, None)

    def get(self, name: str) -> Any:
        if name not in self._entries:
            raise UnknownNameError(self.kind, name, self.names())
        return self._entries[name]

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(k for k in self._entries if fnmatch.fnmatch(k, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def items(self):
        return sorted(self._entries.items())


def import_modules(package: str, path, skip: tuple[str, ...], plugin_env: str, plugin_prefix: str) -> None:
    """Import every module of ``package`` (its ``__path__``) but ``skip`` and private ones, then every
    module file in the folders listed in ``$plugin_env`` (as ``plugin_prefix.<name>``, once)."""
    import importlib
    import importlib.util
    import os
    import pkgutil
    import sys

    for info in pkgutil.iter_modules(path):
        if info.name not in skip and not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
    for folder in filter(None, os.environ.get(plugin_env, "").split(os.pathsep)):
        for info in pkgutil.iter_modules([folder]):
            mod_name = f"{plugin_prefix}.{info.name}"
            if mod_name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(mod_name, os.path.join(folder, info.name + ".py"))
            if spec is None or spec.loader is None:
                continue
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
