"""Validation: the list :data:`STEPS` of small named checks, run in order; the first problem
raises :class:`ConfigError` with the field path as data.

The steps are: the keys, no NaN or infinity, then one step per row of the field table that has
a check (``_<field>``, in table order), then the checks across fields (the variant and the mask
built with their options, the processes). The mask built while its options are checked is
what :func:`validate` returns (the resolved config keeps it for the run: bench.config.resolve).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from bench.config import run_mask
from bench.config.checks import Check, ConfigError
from bench.config.fields import FIELDS, field_checks
from bench.config.run_ids import world_size
from bench.errors import did_you_mean, show

STEPS: list[Callable[[dict[str, Any]], Any]] = []


def step(fn: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
    """Add a check to ``STEPS`` (run by :func:`validate` in the order added)."""
    STEPS.append(fn)
    return fn


def validate(cfg: dict[str, Any]):
    """Raise ConfigError on the first bad field; return the run's mask (a ``masks.Mask``)."""
    made = None
    for check in STEPS:
        out = check(cfg)
        made = out if out is not None else made
    return made


@step
def _keys(cfg: dict) -> None:
    for key in cfg:
        if key not in FIELDS:
            raise ConfigError(str(key), f"unknown key{did_you_mean(key, list(FIELDS))}", sorted(FIELDS))


def _non_finite(value: Any) -> tuple[str, float] | None:
    """(path as ``.key`` / ``[i]`` parts, value) of a NaN or infinity inside value, or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else ("", value)
    items = value.items() if isinstance(value, dict) else (
        enumerate(value) if isinstance(value, (list, tuple)) else ())
    for k, v in items:
        if isinstance(v, (float, dict, list, tuple)):
            found = _non_finite(v)
            if found is not None:
                return (f"[{k}]" if isinstance(k, int) else f".{k}") + found[0], found[1]
    return None


@step
def _finite(cfg: dict) -> None:
    """No NaN or infinity anywhere: JSON cannot store them, so the run would change on disk."""
    found = _non_finite(cfg)
    if found is not None:
        path = found[0][1:]
        hint = "; an option that takes infinity spells it 'inf'" if "." in path else ""
        raise ConfigError(path, f"must be a finite number, got {found[1]}{hint}")


def _field_step(name: str, check: Check) -> Callable[[dict], None]:
    def run(cfg: dict) -> None:
        check(cfg[name], name)
    run.__name__ = run.__qualname__ = f"_{name}"
    run.__doc__ = f"The row of {name!r} in the field table: {getattr(check, '__doc__', None) or 'its check'}"
    return run


for _name, _check in field_checks():
    step(_field_step(_name, _check))


# --- across fields ------------------------------------------------------------------------------

@step
def _variant_builds(cfg: dict) -> None:
    """The variant's options, checked by constructing it: its ``__init__`` signature is the schema."""
    from bench.registries import VARIANTS, variant_options

    name, opts = cfg["variant"], cfg["variant_opts"]
    allowed = list(variant_options(name))
    for key in opts:
        if key not in allowed:
            raise ConfigError("variant_opts", f"variant {name!r} has no option {show(key)}"
                                              f"{did_you_mean(key, allowed)}", allowed or "none")
    cls = VARIANTS.get(name)
    try:
        cls(**opts)
    except (TypeError, ValueError) as exc:
        key = run_mask.blame(lambda kw: cls(**kw), opts)
        raise ConfigError("variant_opts" if key is None else f"variant_opts.{key}", str(exc)) from None
    except Exception as exc:  # noqa: BLE001 -- a plugin's constructor failing: say which file
        raise run_mask.constructor_failed("variant", name, cls, exc) from None


@step
def _validation(cfg: dict) -> None:
    """val_split: folder only for a data set with a validation folder of its own."""
    from bench.registries import DATASETS

    if cfg["val_split"] == "folder" and not getattr(DATASETS.get(cfg["dataset"]), "has_val_folder", False):
        raise ConfigError("val_split", f"dataset {cfg['dataset']!r} has no validation folder of its own; "
                                       f"hold out a fraction of its training set (e.g. 0.1)")


@step
def _mask_builds(cfg: dict):
    """The mask, constructed with its options and sparsity (returned: the run uses this one)."""
    return run_mask.checked(cfg)


@step
def _world(cfg: dict) -> None:
    """The global batch splits evenly over the processes, m-sharpness groups stay within one, and
    SyncBatchNorm (CUDA only) is not asked for on CPU."""
    world = world_size(cfg)
    if world == 1:
        return
    if cfg["batch_size"] % world:
        raise ConfigError("batch_size", f"must be divisible by the number of processes (nproc x nodes = "
                                        f"{world}), got {cfg['batch_size']}")
    m = cfg["variant_opts"].get("m")
    per_process = cfg["batch_size"] // world
    if m is not None and per_process % m:
        raise ConfigError("variant_opts.m", f"must divide the per-process batch (batch_size / processes = "
                                            f"{per_process}) so that groups stay within a process, got {m}")
    if cfg["sync_bn"] and cfg["device"] == "cpu" and _has_batchnorm(cfg):
        raise ConfigError("sync_bn", f"{cfg['model']!r} has BatchNorm, and SyncBatchNorm runs on CUDA only: "
                                     f"on CPU set sync_bn: false (BatchNorm statistics per process)", [False])


def _has_batchnorm(cfg: dict) -> bool:
    from bench.models import model_has_batchnorm

    return model_has_batchnorm(cfg["model"], cfg["dataset"])
