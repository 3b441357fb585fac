"""A tiny name -> class registry, the pattern timm uses for models, and plugin folders.

bench imports this too (for variants, models, datasets); masks imports nothing of bench but its
leaf ``bench.errors`` (bad input, "did you mean").

Plugin modules (the files in the folders of ``SAMBENCH_MASK_PATH`` / ``SAMBENCH_VARIANT_PATH``)
that cannot be imported, and two files registering one name, are a :class:`PluginError`: bad
input (exit 2), one line naming the file and what is wrong.
"""
from __future__ import annotations

import fnmatch
import os
import sys
from typing import Any, Callable

from bench.errors import InvalidInput, did_you_mean

PLUGIN_FILES: set[str] = set()   # the plugin files imported so far (absolute paths)


class UnknownNameError(KeyError, ValueError):
    """A name that is not registered; the message lists the allowed names, the ones one edit
    away, and (``hint``) how to add one."""

    def __init__(self, kind: str, name: str, allowed: list[str], hint: str = ""):
        self.kind, self.name, self.allowed = kind, name, allowed
        names = [a for a in allowed if "<" not in a]  # not the patterns (wrn<depth>_<width>)
        super().__init__(f"unknown {kind} {name!r}{did_you_mean(name, names)}; allowed: {', '.join(allowed)}"
                         + (f"; {hint}" if hint else ""))

    def __str__(self) -> str:  # KeyError would quote the whole message
        return self.args[0]


class PluginError(InvalidInput):
    """A plugin module that cannot be imported (syntax error, an exception at import), or a name
    registered by two files."""


def plugin_hint(kind: str, env: str | None) -> str:
    """How to add an entry of one's own, for unknown-name messages."""
    if not env:
        return ""
    now = os.environ.get(env)
    return f"a {kind} of your own: its file in a folder named in {env} ({f'now {now}' if now else 'not set'})"


def source_file(obj: Any) -> str:
    """The file that defines ``obj`` (a class or function), or ``"?"``."""
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    return str(getattr(module, "__file__", None) or "?")


class Registry:
    def __init__(self, kind: str, plugin_env: str | None = None):
        self.kind, self.plugin_env = kind, plugin_env
        self._entries: dict[str, Any] = {}

    def register(self, name: str | None = None) -> Callable:
        def deco(obj):
            key = name or obj.__name__
            old = self._entries.get(key)
            if old is not None and old is not obj:
                here, there = source_file(obj), source_file(old)
                if here != there:
                    raise PluginError(f"{self.kind} {key!r} is registered twice: by {there} and by {here} "
                                      f"(rename one of them)")
                # the same file imported again (a module reloaded): its new class replaces the old
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
            raise UnknownNameError(self.kind, name, self.names(), plugin_hint(self.kind, self.plugin_env))
        return self._entries[name]

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(k for k in self._entries if fnmatch.fnmatch(k, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def items(self):
        return sorted(self._entries.items())


def import_modules(package: str, path, skip: tuple[str, ...], plugin_env: str, plugin_prefix: str) -> None:
    """Import every module of ``package`` (its ``__path__``) but ``skip`` and private ones, then every
    module file in the folders listed in ``$plugin_env`` (as ``plugin_prefix.<name>``, once).

    A file that cannot be imported raises PluginError naming it (a plugin's module is removed
    again, so the next call tries it anew)."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(path):
        if info.name not in skip and not info.name.startswith("_"):
            mod_name = f"{package}.{info.name}"
            file = os.path.join(info.module_finder.path, info.name + ".py")
            with _naming(file, None):
                importlib.import_module(mod_name)
    for folder in filter(None, os.environ.get(plugin_env, "").split(os.pathsep)):
        for info in pkgutil.iter_modules([folder]):
            mod_name = f"{plugin_prefix}.{info.name}"
            if mod_name not in sys.modules:
                _import_plugin(mod_name, os.path.join(folder, info.name + ".py"), plugin_env)


def _import_plugin(mod_name: str, file: str, plugin_env: str) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(mod_name, file)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    PLUGIN_FILES.add(os.path.abspath(file))
    with _naming(file, plugin_env, mod_name):
        spec.loader.exec_module(module)


class _naming:
    """Turn an exception while importing ``file`` into one PluginError line naming the file."""

    def __init__(self, file: str, plugin_env: str | None, mod_name: str | None = None):
        self.file, self.env, self.mod_name = file, plugin_env, mod_name

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or not isinstance(exc, Exception):
            return False
        if self.mod_name is not None:
            sys.modules.pop(self.mod_name, None)
        if isinstance(exc, PluginError):
            if self.file in exc.message:
                raise exc.with_traceback(None) from None
            raise PluginError(f"{self.file}: {exc.message}") from None
        where = f"plugin {self.file} (from {self.env})" if self.env else str(self.file)
        if isinstance(exc, SyntaxError):
            line = f", line {exc.lineno}" if exc.lineno else ""
            raise PluginError(f"{where}{line}: SyntaxError: {exc.msg}") from None
        line = error_line(exc, {os.path.abspath(self.file)})
        raise PluginError(f"{where}{line}: importing it raised {type(exc).__name__}: {exc}") from None


def _last_frame(exc: BaseException, files: set[str]) -> tuple[str, int] | None:
    """(file, line) of the last traceback frame of ``exc`` in one of ``files``."""
    tb, found = exc.__traceback__, None
    while tb is not None:
        name = os.path.abspath(tb.tb_frame.f_code.co_filename)
        if name in files:
            found = (name, tb.tb_lineno)
        tb = tb.tb_next
    return found


def error_line(exc: BaseException, files: set[str]) -> str:
    """``", line N"`` of the last traceback frame in one of ``files``, or ``""``."""
    found = _last_frame(exc, files)
    return f", line {found[1]}" if found else ""


def plugin_frame(exc: BaseException) -> str:
    """``" (in plugin FILE, line N)"`` for the last traceback frame of ``exc`` in a plugin file, or
    ``""``: so an error a plugin raises while a run trains names its file."""
    found = _last_frame(exc, PLUGIN_FILES)
    return f" (in plugin {found[0]}, line {found[1]})" if found else ""
