"""A run's mask strategy, built from its config once: while its options are checked.

A baseline (the plain base optimizer) is a run whose variant or mask perturbs nothing: the
registered ``none`` variant (bench.engine.variants.basic) or the registered ``none`` mask
(masks.basic); the rule is :func:`perturbs`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.config.checks import ConfigError
from bench.errors import did_you_mean, show

# A run whose variant or mask is one of these registered entries is a baseline: the plain base
# optimizer. Their classes say the same (``perturbs = False``: bench.engine.variants.basic,
# masks.basic; tests/test_layout.py keeps the two in step); the names are declared here, where
# no torch is imported, so that ``sambench status`` and dry-run tables tell a baseline without
# importing the registries' providers.
PLAIN = {"variant": "none", "mask": "none"}


def perturbs(variant: Any, mask: Any) -> bool:
    """Whether a run of this variant and mask perturbs (is SAM), rather than being a baseline."""
    return variant != PLAIN["variant"] and mask != PLAIN["mask"]


def is_baseline(cfg: dict[str, Any]) -> bool:
    """A plain base-optimizer run (no SAM): its variant or its mask perturbs nothing (torch-free)."""
    return not perturbs(cfg["variant"], cfg["mask"])


def mask_arguments(cfg: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of the run's mask: its options and the sparsity, if given."""
    kwargs = dict(cfg["mask_opts"])
    if cfg["sparsity"] is not None:
        kwargs["sparsity"] = cfg["sparsity"]
    return kwargs


def construct(cfg: dict[str, Any], seed: int | None = None):
    """A new ``masks.Mask`` of the run (the registered ``none`` mask for a baseline)."""
    import masks

    if is_baseline(cfg):
        return masks.create_mask(PLAIN["mask"])
    return masks.create_mask(cfg["mask"], seed=cfg["seed"] if seed is None else seed, **mask_arguments(cfg))


def blame(build: Callable[[dict[str, Any]], Any], given: dict[str, Any]) -> str | None:
    """The one given argument without which ``build(given)`` succeeds, or None: a constructor's
    error is put on the field at fault without reading its message."""
    for key in given:
        try:
            build({k: v for k, v in given.items() if k != key})
        except (TypeError, ValueError):
            continue
        return key
    return None


def checked(cfg: dict[str, Any]):
    """The run's mask, constructed to check its options (the mask's signature is the schema): a
    ConfigError goes to the sparsity or the option without which the mask can be built."""
    import masks

    if is_baseline(cfg):
        return masks.create_mask(PLAIN["mask"])
    check_option_names(cfg)
    given = {f"mask_opts.{k}": v for k, v in cfg["mask_opts"].items()}
    if cfg["sparsity"] is not None:
        given["sparsity"] = cfg["sparsity"]

    def build(fields: dict[str, Any]):
        kwargs = {k.removeprefix("mask_opts."): v for k, v in fields.items()}
        return masks.create_mask(cfg["mask"], seed=cfg["seed"], **kwargs)

    try:
        return build(given)
    except (TypeError, ValueError) as exc:
        fallback = "mask_opts" if cfg["mask_opts"] else ("sparsity" if cfg["sparsity"] is not None else "mask")
        raise ConfigError(blame(build, given) or fallback, str(exc)) from None
    except Exception as exc:  # noqa: BLE001 -- a plugin's constructor failing: say which file
        raise constructor_failed("mask", cfg["mask"], masks.base.MASKS.get(cfg["mask"]), exc) from None


def check_option_names(cfg: dict[str, Any]) -> None:
    """Every mask_opts key is an option of the mask (sparsity and seed have fields of their own)."""
    import masks

    allowed = [o for o in masks.mask_options(cfg["mask"]) if o not in ("sparsity", "seed")]
    for key in cfg["mask_opts"]:
        if key not in allowed:
            raise ConfigError(f"mask_opts.{key}", f"mask {cfg['mask']!r} has no option {show(key)}"
                              f"{did_you_mean(key, allowed)}", allowed or "none")


def constructor_failed(kind: str, name: str, cls: Any, exc: Exception) -> ConfigError:
    """A strategy's or variant's ``__init__`` raising something other than a bad-option error."""
    from masks.registry import source_file

    return ConfigError(kind, f"{kind} {name!r} ({source_file(cls)}): creating it raised "
                             f"{type(exc).__name__}: {exc}")
