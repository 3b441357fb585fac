"""Expanding a suite's points into runs: each (point, seed) resolved from its layers (the
suite's defaults, the point, the seed, ``--set``), checked on its model, de-duplicated by run id.
An error names where its field was written (``grid[2].mask``, ``--set rho``).
"""
from __future__ import annotations

import json
from typing import Any

from bench import config
from bench.config import OPTION_MAPS, ConfigError
from bench.orchestration.suite_file import SuiteError

# --- layers: where each value came from ---------------------------------------------------------

class Layer:
    """Run-config fields of one layer (defaults, a grid point, an include, --set) with origins.

    ``flat`` maps dotted keys to values (mappings given for the option maps, bench.config.OPTION_MAPS,
    are spelled as dotted keys, so layers merge field by field); ``origin`` maps each dotted key
    to the prefix of its path in the file (``grid[2].``). The layers are merged by
    :func:`bench.config.merge` (its rule: a layer naming another base optimizer starts from that
    optimizer's defaults).
    """

    def __init__(self) -> None:
        self.flat: dict[str, Any] = {}
        self.origin: dict[str, str] = {}

    @classmethod
    def of(cls, fields: dict[str, Any], prefix: str) -> Layer:
        layer = cls()
        for k, v in fields.items():
            layer.set(k, v, prefix)
        return layer

    def set(self, key: str, value: Any, prefix: str) -> None:
        if key in OPTION_MAPS and isinstance(value, dict):
            for k, v in value.items():
                self.flat[f"{key}.{k}"] = v
                self.origin[f"{key}.{k}"] = prefix
            return
        self.flat[key] = value  # (a non-mapping for an option map is kept, and rejected later)
        self.origin[key] = prefix


def origins(layers: list[Layer]) -> dict[str, str]:
    """Where each field of the merged layers was written (a later layer wins)."""
    origin: dict[str, str] = {}
    for layer in layers:
        origin.update(layer.origin)
    return origin


def _where(field_path: str, origin: dict[str, str], fallback: str) -> str:
    """The prefix to put before ``field_path`` so it names where the value came from."""
    if field_path in origin:
        return origin[field_path]
    for k, prefix in origin.items():  # a sub-field of an option map, e.g. variant_opts.p
        if k.startswith(field_path + "."):
            return prefix
    for k, prefix in origin.items():  # inside a value given whole, e.g. logging.wandb: {mode: x}
        if field_path.startswith(k + "."):
            return prefix
    top = field_path.split(".", 1)[0]
    if top in origin:
        return origin[top]
    related = {"sparsity": "mask", "mask_opts": "mask", "variant_opts": "variant"}.get(top)
    if related and related in origin:
        return origin[related]
    return fallback


def _located(exc: ConfigError, origin: dict[str, str], fallback: str, source: str) -> SuiteError:
    """A run's ConfigError, addressed by where its field was written (``grid[2].mask``, ``--set rho``)."""
    where = _where(exc.field, origin, fallback)
    if where.startswith("--set"):
        return SuiteError(exc.message, field=exc.field, allowed=exc.allowed, source="--set")
    return SuiteError(exc.message, field=f"{where}{exc.field}", allowed=exc.allowed, source=source)


# --- expansion ------------------------------------------------------------------------------------

def expand(points: list[tuple[str, dict]], seeds: list[int | None], base_layer: Layer,
            over_layer: Layer, source: str) -> dict[str, Any]:
    """Every (point, seed) resolved and checked on its model; duplicates (same run id) dropped.

    Returns ``{"runs", "run_ids", "resolved_sparsity", "variant_defaults"}``. The seeds of a
    point differ in the seed field only (each an integer >= 0, checked with the seeds list), so
    a point is resolved and checked once and its seeds written into copies of that config.
    """
    checks = ModelChecks()
    runs: list[dict] = []
    ids: list[str] = []
    seen: set[str] = set()
    resolved_sparsity: dict[str, float] = {}

    def resolve(layers: list[Layer], prefix: str) -> tuple[dict, float | None]:
        try:
            cfg = config.resolve(*(layer.flat for layer in layers))
            return cfg, checks.check(cfg)
        except ConfigError as exc:
            raise _located(exc, origins(layers), prefix, source) from None

    def add(rid: str, cfg: dict, resolved: float | None) -> None:
        seen.add(rid)
        runs.append(cfg)
        ids.append(rid)
        if resolved is not None:
            resolved_sparsity[rid] = resolved

    for prefix, point in points:
        layer = Layer.of(point, prefix)
        if "seed" in point or "seed" in over_layer.flat or seeds == [None]:  # one seed: as given
            for seed in ([None] if "seed" in point else seeds):
                seed_layer = Layer.of({} if seed is None else {"seed": seed}, "")
                cfg, resolved = resolve([base_layer, layer, seed_layer, over_layer], prefix)
                rid = config.run_id(cfg)
                if rid not in seen:
                    add(rid, cfg, resolved)
            continue
        first, resolved = resolve([base_layer, layer, Layer.of({"seed": seeds[0]}, ""), over_layer], prefix)
        ids_of = config.run_ids_by_seed(first)
        for seed in seeds:
            rid = ids_of(seed)
            if rid not in seen:
                add(rid, first if seed == seeds[0] else {**config.plain_copy(first), "seed": seed}, resolved)
    from bench.registries import variant_options

    return {"runs": runs, "run_ids": ids, "resolved_sparsity": resolved_sparsity,
            "variant_defaults": {v: variant_options(v) for v in sorted({r["variant"] for r in runs})}}


class ModelChecks:
    """Build each (model, dataset) once on CPU, and each data-free mask once per shape."""

    def __init__(self) -> None:
        self.models: dict[tuple[str, str], Any] = {}
        self.masks: dict[tuple, float | None | ConfigError] = {}

    def model(self, name: str, dataset: str):
        key = (name, dataset)
        if key not in self.models:
            import torch

            from bench.models import create_model_for

            with torch.random.fork_rng(devices=[]), torch.device("cpu"):
                torch.manual_seed(0)
                self.models[key] = create_model_for(name, dataset)
        return self.models[key]

    def check(self, cfg: dict) -> float | None:
        """The sparsity a ``match:`` resolves to (or None); ConfigError if the run cannot work."""
        if config.is_baseline(cfg):
            return None
        key = (cfg["model"], cfg["dataset"], cfg["mask"], str(cfg["sparsity"]),
               json.dumps(cfg["mask_opts"], sort_keys=True, default=str))
        if key not in self.masks:
            try:
                self.masks[key] = self._check(cfg)
            except ConfigError as exc:
                self.masks[key] = exc
        found = self.masks[key]
        if isinstance(found, ConfigError):
            raise found
        return found

    def _check(self, cfg: dict) -> float | None:
        import masks
        from masks.base import MaskError

        try:
            model = self.model(cfg["model"], cfg["dataset"])
        except Exception as exc:  # noqa: BLE001 -- any failure to build is the user's model choice
            raise ConfigError("model", f"cannot build {cfg['model']!r} for {cfg['dataset']!r}: "
                                       f"{type(exc).__name__}: {exc}") from None
        total = masks.n_trainable(model)
        if total == 0:
            raise ConfigError("model", f"{cfg['model']!r} has no trainable parameters to perturb")
        resolved = self._match(cfg, model, total)
        mask = config.make_mask(cfg, seed=0)
        if mask.needs_data:
            return resolved
        try:
            mask.build(model)
        except MaskError as exc:
            raise ConfigError("mask", f"{cfg['mask']!r} on {cfg['model']!r}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 -- a strategy rejecting this model/options
            fld = "mask_opts" if cfg["mask_opts"] else "mask"
            raise ConfigError(fld, f"{cfg['mask']!r} on {cfg['model']!r}: {type(exc).__name__}: {exc}") from None
        return resolved

    @staticmethod
    def _match(cfg: dict, model, total: int) -> float | None:
        """``match:<mask>``: the sparsity of that mask on this model (None if it needs data)."""
        import masks
        from masks.base import MaskError

        sp = cfg["sparsity"]
        if not (isinstance(sp, str) and sp.startswith("match:")):
            return None
        ref = masks.create_mask(sp.split(":", 1)[1], seed=0)  # the name was checked by config
        if ref.needs_data:
            return None
        try:
            k = masks.selection_count(ref.build(model))
        except MaskError as exc:
            raise ConfigError("sparsity", f"{sp!r} on {cfg['model']!r}: {exc}") from None
        return 1.0 - k / total
