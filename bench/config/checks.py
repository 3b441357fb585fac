"""The checks a field-table row names: small factories, each a ``check(value, field)`` that raises
:class:`ConfigError` with the field path as data (no torch here; checks that need a registry
import it when they run).

    Field("epochs", 10, "training epochs", check=integer(1, MAX_EPOCHS))
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.errors import InvalidInput, did_you_mean, show

Check = Callable[[Any, str], None]


def allowing(text: str):
    """Decorator: the check's ``allowed`` text (docs/config.md's "allowed" column)."""
    def mark(check: Check) -> Check:
        check.allowed = text
        return check
    return mark


class ConfigError(InvalidInput):
    """A bad config value. ``field`` is the dotted path, ``allowed`` what would be accepted."""

    def __init__(self, field: str, message: str, allowed: Any = None, source: str | None = None):
        super().__init__(message, field=field, allowed=allowed, source=source)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def same_value(value: Any, default: Any) -> bool:
    """Equal and of one kind (2 and 2.0 are one number; True and 1 are not)."""
    if is_num(value) and is_num(default):
        return value == default
    return type(value) is type(default) and value == default


# --- factories: one per kind of value -----------------------------------------------------------

def integer(low: int, high: int | None = None, none_ok: bool = False) -> Check:
    """An integer in [low, high] (or null when ``none_ok``)."""
    @allowing(f"integer >= {low}" + (f", <= {high:,}" if high is not None else "") + (", or null" if none_ok else ""))
    def check(v: Any, field: str) -> None:
        if v is None and none_ok:
            return
        if not is_int(v) or v < low or (high is not None and v > high):
            bound = f"an integer >= {low}" + (f" and <= {high:,}" if high is not None else "")
            raise ConfigError(field, f"must be {bound}{' or null' if none_ok else ''}, got {show(v)}")
    return check


def number(low: float = 0) -> Check:
    """A number >= low."""
    @allowing(f"number >= {low:g}")
    def check(v: Any, field: str) -> None:
        if not is_num(v) or v < low:
            raise ConfigError(field, f"must be a number >= {low:g}, got {show(v)}")
    return check


def fraction(what: str = "") -> Check:
    """A number in [0, 1); ``what`` names it in the message (``a fraction ``)."""
    @allowing("number in [0, 1)")
    def check(v: Any, field: str) -> None:
        if not is_num(v) or not 0 <= v < 1:
            raise ConfigError(field, f"must be {what}in [0, 1), got {show(v)}")
    return check


@allowing("true, false")
def boolean(v: Any, field: str) -> None:
    if not isinstance(v, bool):
        raise ConfigError(field, f"must be true or false, got {show(v)}", [True, False])


def one_of(choices: tuple) -> Check:
    @allowing(", ".join(map(str, choices)))
    def check(v: Any, field: str) -> None:
        if v not in choices:
            raise ConfigError(field, f"got {show(v)}", list(choices))
    return check


def val_split(high: float) -> Check:
    """A fraction in [0, high], or ``folder`` (whether the data set has one: checked across fields)."""
    @allowing(f"number in [0, {high:g}], or folder")
    def check(v: Any, field: str) -> None:
        if v != "folder" and (not is_num(v) or not 0 <= v <= high):
            raise ConfigError(field, f"must be a fraction in [0, {high:g}] or folder, got {show(v)}")
    return check


@allowing("mapping")
def mapping(v: Any, field: str) -> None:
    if not isinstance(v, dict):
        raise ConfigError(field, f"must be a mapping, got {show(v)}")


@allowing("path, or null")
def path_or_none(v: Any, field: str) -> None:
    if v is not None and not isinstance(v, str):
        raise ConfigError(field, f"must be a path, got {show(v)}")


@allowing("auto, cpu, cuda, cuda:N")
def device(value: Any, field: str = "device") -> None:
    """auto, cpu, cuda or cuda:N."""
    ok = isinstance(value, str) and (value in ("auto", "cpu", "cuda")
                                     or (value.startswith("cuda:") and value[5:].isdigit()))
    if not ok:
        raise ConfigError(field, f"got {show(value)}", ["auto", "cpu", "cuda", "cuda:N"])


# --- names that registries hold ------------------------------------------------------------------

@allowing("`sambench list datasets`")
def dataset_name(v: Any, field: str) -> None:
    from bench.registries import DATASETS

    if not isinstance(v, str) or v not in DATASETS:
        raise ConfigError(field, f"unknown dataset {show(v)}{did_you_mean(v, DATASETS.names())}", DATASETS.names())


@allowing("`sambench list models`, wrn<depth>_<width>, timm:<name>")
def model_name(v: Any, field: str) -> None:
    from bench.registries import UnknownNameError, parse_model_name

    try:
        parse_model_name(v)
    except UnknownNameError as exc:
        names = [a for a in exc.allowed if "<" not in a]  # not the patterns (wrn<depth>_<width>)
        raise ConfigError(field, f"unknown {exc.kind} {show(exc.name)}{did_you_mean(exc.name, names)}",
                          exc.allowed) from None


@allowing("`sambench list variants`")
def variant_name(v: Any, field: str) -> None:
    from bench.registries import VARIANTS
    from masks.registry import plugin_hint

    if not isinstance(v, str) or v not in VARIANTS:
        raise ConfigError(field, f"unknown variant {show(v)}{did_you_mean(v, VARIANTS.names())}; "
                                 f"{plugin_hint('variant', VARIANTS.plugin_env)}", VARIANTS.names())


@allowing("`sambench list masks`")
def mask_name(v: Any, field: str) -> None:
    import masks
    from masks.base import MASKS
    from masks.registry import plugin_hint

    if not isinstance(v, str) or v not in masks.list_masks():
        allowed = masks.list_masks()
        raise ConfigError(field, f"unknown mask {show(v)}{did_you_mean(v, allowed)}; "
                                 f"{plugin_hint('mask', MASKS.plugin_env)}", allowed)


@allowing("number in [0, 1), match:<mask>, or null")
def sparsity(v: Any, field: str) -> None:
    """A number in [0, 1) or ``match:<mask>`` (the mask then says whether it takes one)."""
    import masks
    from masks.base import check_sparsity

    masks.load_all()
    try:
        check_sparsity(v)
    except ValueError as exc:
        raise ConfigError(field, str(exc)) from None


@allowing("null, or a mapping of bench.measure.sharpness options")
def sharpness_block(v: Any, field: str) -> None:
    """The sharpness block (its options: bench.measure.sharpness)."""
    from bench.measure.sharpness import SettingsError, check_settings

    try:
        check_settings(v)
    except SettingsError as exc:
        raise ConfigError(f"{field}{exc.field}", exc.message, exc.allowed) from None


@allowing("mapping of tensorboard, wandb, mlflow: true, false or options")
def logging_block(v: Any, field: str) -> None:
    """The loggers block (bench.loggers checks it, and that each logger's package is installed)."""
    from bench import loggers

    try:
        loggers.normalize(v)
    except loggers.LoggingError as exc:
        raise ConfigError(exc.field, exc.message, exc.allowed) from None
