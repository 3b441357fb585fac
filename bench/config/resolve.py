"""Defaults + overrides -> one resolved run config, resolved once at the entry.

:func:`merge` applies layers of overrides (dotted keys or nested mappings; later layers win) to
the table's defaults: option maps merge field by field, and a layer that names another base
optimizer starts from that optimizer's defaults (bench.config.optimizers). :func:`resolve` then
validates (bench.config.validate) and writes the canonical form: variant options equal to the
variant's defaults are dropped, so ``{}`` and ``{p: 2}`` are one experiment with one run id.

The result is a :class:`ResolvedConfig`: a plain dict (JSON, config.json) that also keeps the
mask built while its options were checked. ``resolve`` of a ResolvedConfig whose content is
unchanged returns it as it is, so the layers below the entry (train.run, the job, launch) do
not redo the work; a changed one (or a plain dict read from config.json) is resolved again.
"""
from __future__ import annotations

import copy
import json
from typing import Any

from bench.config import optimizers, run_mask
from bench.config.checks import same_value
from bench.config.fields import FIELDS, OPTION_MAPS
from bench.config.validate import validate

_IMMUTABLE = (str, int, float, bool, type(None))


def plain_copy(value: Any) -> Any:
    """A deep copy of JSON-like data (dicts, lists, scalars); much faster than copy.deepcopy."""
    if type(value) in _IMMUTABLE:
        return value
    if isinstance(value, dict):
        return {k: v if type(v) in _IMMUTABLE else plain_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [v if type(v) in _IMMUTABLE else plain_copy(v) for v in value]
    return copy.deepcopy(value)


def default_config() -> dict[str, Any]:
    return plain_copy({name: f.default for name, f in FIELDS.items()})


def set_path(cfg: dict, dotted: str, value: Any) -> None:
    """``set_path(cfg, "base.lr", 0.05)``; creates nested dicts for option maps."""
    keys = dotted.split(".")
    node = cfg
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[keys[-1]] = value


def base_name_of(layer: dict[str, Any]) -> tuple[bool, Any]:
    """(whether the layer names a base optimizer, the name): ``base.name`` or ``base: {name}``."""
    if "base.name" in layer:
        return True, layer["base.name"]
    base = layer.get("base")
    if isinstance(base, dict) and "name" in base:
        return True, base["name"]
    return False, None


def apply_layer(cfg: dict[str, Any], layer: dict[str, Any]) -> None:
    """One layer of overrides onto ``cfg`` (the base-optimizer switch first)."""
    named, name = base_name_of(layer)
    if named:
        cfg["base"] = optimizers.switch(cfg.get("base"), name)
    for key, value in layer.items():
        if isinstance(value, dict) and key in OPTION_MAPS:
            for k, v in value.items():
                set_path(cfg, f"{key}.{k}", plain_copy(v))
        else:
            set_path(cfg, key, plain_copy(value))


def merge(*layers: dict[str, Any]) -> dict[str, Any]:
    """Defaults + layers of overrides (dotted keys or nested dicts, later wins), not yet validated."""
    cfg = default_config()
    for layer in layers:
        apply_layer(cfg, layer)
    return cfg


class ResolvedConfig(dict):
    """A validated, canonical run config (see the module docstring); treat it as read-only."""

    def __init__(self, cfg: dict[str, Any], mask: Any = None):
        super().__init__(cfg)
        self.mask = mask                 # the masks.Mask built while validating (None: build one)
        self._content = _content(cfg)

    def unchanged(self) -> bool:
        """Whether its content is what was resolved (cheap: one JSON dump; False if it cannot tell)."""
        return self._content is not None and _content(self) == self._content


def _content(cfg: dict[str, Any]) -> str | None:
    try:
        return json.dumps(cfg, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        return None


def resolve(*layers: dict[str, Any]) -> ResolvedConfig:
    """Defaults + overrides -> a full, validated, canonical run config (a resolved one: itself)."""
    if len(layers) == 1 and isinstance(layers[0], ResolvedConfig) and layers[0].unchanged():
        return layers[0]
    cfg = merge(*layers)
    mask = validate(cfg)
    cfg["variant_opts"] = canonical_variant_opts(cfg["variant"], cfg["variant_opts"])
    return ResolvedConfig(cfg, mask)


def canonical_variant_opts(variant: str, opts: dict[str, Any]) -> dict[str, Any]:
    """The options that differ from the variant's defaults (the form that goes into the run id)."""
    from bench.registries import variant_options

    defaults = variant_options(variant)
    return {k: v for k, v in opts.items() if not (k in defaults and same_value(v, defaults[k]))}


def variant_options(cfg: dict[str, Any], known: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Every option of the run's variant, defaults filled in (stored beside the config): the
    registry's :func:`bench.registries.variant_options`, or ``known[variant]`` when given (what a
    cached suite read at expansion, so no registry is loaded)."""
    if known is not None and cfg["variant"] in known:
        defaults = known[cfg["variant"]]
    else:
        from bench import registries

        defaults = registries.variant_options(cfg["variant"])
    return {**defaults, **cfg["variant_opts"]}


def make_mask(cfg: dict[str, Any], seed: int | None = None):
    """The run's mask strategy (a ``masks.Mask``; the registered ``none`` mask for a baseline):
    the one validation built, for a resolved config, else a new one."""
    if (isinstance(cfg, ResolvedConfig) and cfg.mask is not None and seed in (None, cfg["seed"])
            and cfg.unchanged()):
        return cfg.mask
    return run_mask.construct(cfg, seed)


def describe(cfg: dict[str, Any]) -> str:
    """One line naming a run's experiment (for logs and reports)."""
    if run_mask.is_baseline(cfg):
        what = f"{cfg['base']['name']} (no SAM)"
    else:
        opts = ",".join(f"{k}={v}" for k, v in sorted(cfg["variant_opts"].items()))
        sparsity = "" if cfg["sparsity"] is None else f" sparsity={cfg['sparsity']}"
        mopts = ",".join(f"{k}={v}" for k, v in sorted((cfg.get("mask_opts") or {}).items()))
        what = (f"{cfg['variant']}{f'({opts})' if opts else ''} mask={cfg['mask']}{f'({mopts})' if mopts else ''}"
                f"{sparsity} rho={cfg['rho']}")
    return f"{cfg['dataset']}/{cfg['model']} {what} seed={cfg['seed']}"
