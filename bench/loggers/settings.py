"""A run's ``logging`` block (a runtime field: never in the run id): backends, their options, checks.

    logging:
      tensorboard: true                      # event files in the run folder
      wandb: {project: sambench, mode: offline}
      mlflow: {tracking_uri: file:./mlruns}
"""
from __future__ import annotations

import importlib.util
from typing import Any

from bench.errors import InvalidInput, did_you_mean, show

DEFAULTS: dict[str, Any] = {"tensorboard": True, "wandb": False, "mlflow": False}


BACKENDS = tuple(DEFAULTS)


# options of a backend given as a mapping (a mapping turns the backend on)
OPTIONS: dict[str, dict[str, Any]] = {
    "tensorboard": {},
    "wandb": {"project": "sambench", "entity": None, "mode": None, "tags": []},
    "mlflow": {"tracking_uri": None, "experiment": None},
}


WANDB_MODES = ["online", "offline", "disabled"]


# module to import -> the pip extra that installs it
EXTRAS = {"tensorboard": ("tensorboard", "sambench"), "wandb": ("wandb", "wandb"),
          "mlflow": ("mlflow", "mlflow")}


class LoggingError(InvalidInput):
    """A bad ``logging`` block or a logger whose package is not installed (exit 2).

    ``field`` is the dotted path inside the run config, ``allowed`` what would be accepted.
    """

    def __init__(self, field: str, message: str, allowed: Any = None):
        super().__init__(message, field=field, allowed=allowed)


def missing_package(backend: str) -> str | None:
    """A message naming the extra to install when ``backend``'s package is absent, else None."""
    module, extra = EXTRAS[backend]
    if importlib.util.find_spec(module) is not None:
        return None
    how = "pip install -e ." if extra == "sambench" else f"pip install -e .[{extra}]"
    return f"needs the {module} package, which is not installed ({how}, or pip install 'sambench[{extra}]')"


def normalize(block: Any, field: str = "logging") -> dict[str, Any]:
    """Check a ``logging`` block; return ``{backend: None (off) | {option: value} (on)}``.

    Each backend is ``true``/``false`` or a mapping of its options (a mapping means on).
    Raises LoggingError naming the field; a backend that is on but whose package is missing is
    an error too (naming the pip extra), so it is caught before anything is written.
    """
    if block is None:
        block = {}
    if not isinstance(block, dict):
        raise LoggingError(field, f"must be a mapping, got {show(block)}", list(BACKENDS))
    out: dict[str, Any] = {}
    for key in block:
        if key not in DEFAULTS:
            raise LoggingError(f"{field}.{key}", f"unknown logger{did_you_mean(key, BACKENDS)}", list(BACKENDS))
    for backend, default in DEFAULTS.items():
        value = block.get(backend, default)
        where = f"{field}.{backend}"
        if isinstance(value, bool):
            opts = dict(OPTIONS[backend]) if value else None
        elif isinstance(value, dict) and OPTIONS[backend]:
            opts = dict(OPTIONS[backend])
            for k, v in value.items():
                if k not in OPTIONS[backend]:
                    raise LoggingError(f"{where}.{k}", f"unknown option{did_you_mean(k, OPTIONS[backend])}",
                                       sorted(OPTIONS[backend]))
                opts[k] = v
            _check_options(backend, opts, where)
        else:
            allowed = [True, False] + (["a mapping of options"] if OPTIONS[backend] else [])
            raise LoggingError(where, f"must be true or false{' or a mapping' if OPTIONS[backend] else ''}, "
                                      f"got {show(value)}", allowed)
        if opts is not None:
            problem = missing_package(backend)
            if problem:
                raise LoggingError(where, problem)
        out[backend] = opts
    return out


def _check_options(backend: str, opts: dict, where: str) -> None:
    for k, v in opts.items():
        if k == "mode":
            if v is not None and v not in WANDB_MODES:
                raise LoggingError(f"{where}.mode", f"got {show(v)}", WANDB_MODES)
        elif k == "tags":
            if not (isinstance(v, list) and all(isinstance(t, str) for t in v)):
                raise LoggingError(f"{where}.tags", f"must be a list of strings, got {show(v)}")
        elif v is not None and not isinstance(v, str):
            raise LoggingError(f"{where}.{k}", f"must be a string, got {show(v)}")
        elif k == "project" and v is None:
            raise LoggingError(f"{where}.project", "must be a string, got None")


def from_flag(text: str) -> dict[str, bool]:
    """``--log tensorboard,wandb`` -> a logging block with exactly those on (``none``: all off)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["none"]:
        return {b: False for b in BACKENDS}
    for n in names:
        if n not in BACKENDS:
            raise LoggingError("--log", f"unknown logger {n!r}{did_you_mean(n, BACKENDS)}", list(BACKENDS) + ["none"])
    return {b: b in names for b in BACKENDS}
