"""Suite files: a YAML grid of runs, expanded and fully validated before anything runs.

    suite = load_suite("suites/smoke.yaml", {"epochs": 1, "slurm.partition": "gpu"})
    suite.name, suite.runs (resolved run configs), suite.slurm, suite.source

Format (see the README's "Suite files")::

    name: my-suite            # required; results go to <out>/<name>/
    defaults: {...}           # run-config fields every run starts from (dotted keys allowed)
    grid: {...} | [{...}, ...]  # a mapping = cartesian product of its list values;
                              # a list of mappings = union of their products
    include: [{...}, ...]     # single extra runs (defaults + that mapping)
    seeds: [0, 1, 2]          # crossed with every run (default: the runs' own seed field)
    slurm: {...}              # executor settings (partition, cpus_per_task, runs_per_job, ...);
                              # slurm.nodes is the default of the run field nodes
    logging: {...}            # loggers for every run (bench.loggers; runtime: run ids unchanged)

A list value in a grid mapping is an axis; to give a list-valued field one value, wrap it:
``base.betas: [[0.9, 0.999]]``. Without ``grid`` the suite is ``defaults`` alone (plus
``include``); with only ``include`` and no ``grid``, just the included runs.

``--set key=value`` overrides apply to every run and win over the file (``epochs=1``,
``base.lr=0.05``); ``slurm.<key>=value`` sets an executor setting, ``name=...`` and
``seeds=[...]`` replace those keys.

Every error (unknown key or name, bad value, YAML syntax or a key given twice, a file that
expands past errors.MAX_YAML_NODES values, a mask that selects nothing on its model, no runs
at all) raises :class:`SuiteError` with the file and the field path as data, e.g.
``suites/x.yaml: grid[2].mask: unknown mask 'randm' (allowed: all, ...)``; nothing is written.
"""
from __future__ import annotations

import itertools
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import config
from bench.config import EXPERIMENT, OPTION_MAPS, RUNTIME, ConfigError
from bench.errors import InvalidInput, did_you_mean, load_yaml, show
from bench.orchestration import suite_cache

TOP_KEYS = ["defaults", "grid", "include", "logging", "name", "reference", "seeds", "slurm"]
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
LARGE_SUITE = 10_000   # runs: above this, say that expanding and listing takes a while

# slurm: key -> (type check, description)
SLURM_KEYS: dict[str, tuple[Any, str]] = {
    "partition": (str, "a partition name"),
    "gpus_per_node": ("int0", "an integer >= 0"),
    "cpus_per_task": ("int1", "an integer >= 1"),
    "mem_gb": ("pos", "a number > 0"),
    "timeout_min": ("int1", "an integer >= 1 (minutes)"),
    "account": (str, "an account name"),
    "qos": (str, "a QOS name"),
    "constraint": (str, "a node constraint"),
    "array_parallelism": ("int1", "an integer >= 1"),
    "runs_per_job": ("int1", "an integer >= 1"),
    "nodes": ("int1", "an integer >= 1 (the default of the run field nodes)"),
    "additional_parameters": (dict, "a mapping of extra sbatch options"),
}
_SLURM_CHECKS: dict[Any, Callable[[Any], bool]] = {
    str: lambda v: isinstance(v, str) and v != "",
    dict: lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
    "int0": lambda v: config._is_int(v) and v >= 0,
    "int1": lambda v: config._is_int(v) and v >= 1,
    "pos": lambda v: config._is_num(v) and v > 0 and v != float("inf"),
}


class SuiteError(InvalidInput):
    """An invalid suite file or override (exit status 2); ``source`` and ``field`` say where."""


def _err(source: str, field_path: str, message: str, allowed: Any = None) -> SuiteError:
    return SuiteError(message, field=field_path, allowed=allowed, source=source)


@dataclass
class Suite:
    name: str
    runs: list[dict]                       # resolved run configs, in suite order, de-duplicated
    slurm: dict[str, Any]
    source: Path
    run_ids: list[str] = field(default_factory=list)
    # run id -> the sparsity actually used when the config says "match:<mask>"
    resolved_sparsity: dict[str, float] = field(default_factory=dict)
    # variant name -> its options with their defaults (config.variant_options, read once)
    variant_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    # published numbers (the suite's reference: block, checked; see bench/reference.py)
    reference: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.runs)

    def items(self):
        return zip(self.run_ids, self.runs)

    def variant_options(self, cfg: dict) -> dict[str, Any]:
        """Every option of a run's variant, defaults filled in (= config.variant_options)."""
        if cfg["variant"] not in self.variant_defaults:
            return config.variant_options(cfg)
        return {**self.variant_defaults[cfg["variant"]], **cfg["variant_opts"]}


# --- the public entry ----------------------------------------------------------------------------

def load_suite(path: str | Path, overrides: dict | None = None,
               warn: Callable[[str], None] | None = None, cache: bool = False) -> Suite:
    """Read, expand and validate a suite file; raise SuiteError on the first problem.

    ``warn`` receives a note when the suite expands to more than LARGE_SUITE runs (default:
    printed to stderr), before the long part of the work. ``cache``: take the expansion from
    (and keep it in) the cache of validated suites, :mod:`bench.orchestration.suite_cache` (the command line
    does; the result is the same either way).
    """
    source, path = str(path), Path(path)
    doc = _parse_doc(_read_text(path, source), source)
    run_over, slurm_over, top_over = _split_overrides(overrides)
    name = _suite_name(doc, top_over, source)
    seeds = _seeds(doc, top_over, source)
    slurm = _slurm_settings(doc, top_over, slurm_over, source)
    reference = _reference(doc.get("reference"), source)
    defaults = _mapping_of_fields(doc.get("defaults"), source, "defaults")
    if "nodes" in slurm and "nodes" not in defaults:  # slurm.nodes: every run's nodes unless it says otherwise
        defaults = {**defaults, "nodes": slurm["nodes"]}
    if seeds != [None] and "seed" in defaults:  # replaced by the seeds list, but still checked
        seed = defaults["seed"]
        if not (config._is_int(seed) and seed >= 0):
            raise _err(source, "defaults.seed", f"must be an integer >= 0, got {show(seed)}")
    points = _points(doc, source)
    _warn_if_large(len(points) * len(seeds), source, warn)
    logging = doc.get("logging")   # a top-level block for every run (runtime: run ids unchanged)
    inputs = {"defaults": defaults, "points": [list(pt) for pt in points], "seeds": seeds, "set": run_over,
              "logging": logging}
    entry = suite_cache.key(inputs) if cache else None
    expansion = suite_cache.load(entry)
    if expansion is None:
        base_layer = _Layer.of(defaults, "defaults.")
        if logging is not None:
            base_layer.set("logging", logging, "")
        over_layer = _Layer.of(run_over, "--set ")
        expansion = _expand(points, seeds, base_layer, over_layer, source)
        suite_cache.store(entry, expansion)
    return Suite(name=name, runs=expansion["runs"], slurm=slurm, source=path, run_ids=expansion["run_ids"],
                 resolved_sparsity=expansion["resolved_sparsity"], variant_defaults=expansion["variant_defaults"],
                 reference=reference)


def _reference(block: Any, source: str) -> list[dict]:
    from bench.orchestration.reference import ReferenceError, check_reference

    try:
        return check_reference(block)
    except ReferenceError as exc:
        raise _err(source, exc.field, exc.message, exc.allowed) from None


# --- reading ---------------------------------------------------------------------------------------

def _read_text(path: Path, source: str) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise SuiteError("no such suite file", source=source) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise SuiteError(f"cannot read the suite file ({exc})", source=source) from None


def _parse_doc(text: str, source: str) -> dict:
    try:
        doc = load_yaml(text, source)
    except InvalidInput as exc:
        raise SuiteError(exc.message, source=source) from None
    if doc is None:
        raise SuiteError("empty suite file (a suite needs at least: name)", source=source)
    if not isinstance(doc, dict):
        raise SuiteError(f"must be a mapping with keys {', '.join(TOP_KEYS)}, got {type(doc).__name__}",
                         source=source)
    for key in doc:
        if key not in TOP_KEYS:
            raise _err(source, str(key), f"unknown key{did_you_mean(key, TOP_KEYS)}", TOP_KEYS)
    return doc


def _split_overrides(overrides: dict | None) -> tuple[dict, dict, dict]:
    """--set items -> (run fields, slurm settings, top-level keys name/seeds/slurm)."""
    run_over: dict[str, Any] = {}
    slurm_over: dict[str, Any] = {}
    top_over: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if not isinstance(key, str) or not key:
            raise SuiteError(f"{show(key)}: expected key=value", source="--set")
        if key.startswith("slurm."):
            slurm_over[key[6:]] = value
        elif key in ("name", "seeds", "slurm"):
            top_over[key] = value
        elif key in ("defaults", "grid", "include"):
            raise _err("--set", key, "cannot be overridden; set run fields directly (e.g. --set epochs=1)")
        else:
            _check_key("--set", "", key)
            run_over[key] = value
    return run_over, slurm_over, top_over


def _allowed_run_keys() -> list[str]:
    return sorted(list(EXPERIMENT) + list(RUNTIME))


def _check_key(source: str, prefix: str, key: Any) -> None:
    if not isinstance(key, str):
        raise _err(source, f"{prefix}{show(key)}", "keys must be strings", _allowed_run_keys())
    top = key.split(".", 1)[0]
    if top not in EXPERIMENT and top not in RUNTIME:
        raise _err(source, f"{prefix}{key}", f"unknown key{did_you_mean(top, _allowed_run_keys())}",
                   _allowed_run_keys())
    if "." in key and top not in OPTION_MAPS:
        raise _err(source, f"{prefix}{key}", f"{top} has no sub-fields (dotted keys only for "
                   f"{', '.join(OPTION_MAPS)})")
    if "." in key and not all(key.split(".")):
        raise _err(source, f"{prefix}{key}", "empty part in a dotted key")


def _suite_name(doc: dict, top_over: dict, source: str) -> str:
    name, name_src = (top_over["name"], "--set") if "name" in top_over else (doc.get("name"), source)
    if name is None:
        raise _err(source, "name", "missing (required: the results folder <out>/<name>/)")
    if not isinstance(name, str) or not NAME_RE.match(name) or name in (".", ".."):
        raise _err(name_src, "name", f"must be a folder name of letters, digits, '_', '.', '-' "
                                     f"(not starting with '.' or '-'), got {show(name)}")
    return name


def _seeds(doc: dict, top_over: dict, source: str) -> list[int | None]:
    """The seeds list, or ``[None]``: each run keeps the seed its own fields give it."""
    seeds_src = "--set" if "seeds" in top_over else source
    seeds = top_over.get("seeds", doc.get("seeds"))
    if seeds is None:
        return [None]
    if not isinstance(seeds, list) or not seeds or not all(config._is_int(s) and s >= 0 for s in seeds):
        raise _err(seeds_src, "seeds", f"must be a non-empty list of integers >= 0, got {show(seeds)}")
    return seeds


def _slurm_settings(doc: dict, top_over: dict, slurm_over: dict, source: str) -> dict[str, Any]:
    slurm = _check_slurm(doc.get("slurm"), source)
    if "slurm" in top_over:
        slurm.update(_check_slurm(top_over["slurm"], "--set"))
    slurm.update(_check_slurm(slurm_over, "--set"))
    return slurm


def _check_slurm(settings: Any, source: str) -> dict[str, Any]:
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise _err(source, "slurm", f"must be a mapping, got {show(settings)}", sorted(SLURM_KEYS))
    out = {}
    for key, value in settings.items():
        if key not in SLURM_KEYS:
            raise _err(source, f"slurm.{key}", f"unknown key{did_you_mean(key, sorted(SLURM_KEYS))}",
                       sorted(SLURM_KEYS))
        kind, desc = SLURM_KEYS[key]
        if value is None:
            continue
        if not _SLURM_CHECKS[kind](value):
            raise _err(source, f"slurm.{key}", f"must be {desc}, got {show(value)}")
        out[key] = value
    return out


def _mapping_of_fields(value: Any, source: str, path: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _err(source, path, f"must be a mapping of run fields, got {show(value)}")
    for key in value:
        _check_key(source, f"{path}.", key)
    return value


def _grid_points(grid: Any, source: str) -> list[tuple[str, dict[str, Any]]]:
    """(path prefix, mapping of one point) for every point of the grid, in order."""
    if grid is None:
        return []
    if isinstance(grid, dict):
        entries = [("grid.", grid)]
    elif isinstance(grid, list):
        if not grid:
            raise _err(source, "grid", "empty list: the suite has no runs")
        entries = []
        for i, entry in enumerate(grid):
            if not isinstance(entry, dict):
                raise _err(source, f"grid[{i}]", f"must be a mapping of run fields, got {show(entry)}")
            entries.append((f"grid[{i}].", entry))
    else:
        raise _err(source, "grid", f"must be a mapping or a list of mappings, got {show(grid)}")
    points = []
    for prefix, entry in entries:
        axes = []
        for key, value in entry.items():
            _check_key(source, prefix, key)
            values = value if isinstance(value, list) else [value]
            if not values:
                raise _err(source, f"{prefix}{key}", "empty list: the grid has no runs")
            axes.append([(key, v) for v in values])
        points.extend((prefix, dict(combo)) for combo in itertools.product(*axes))
    return points


def _points(doc: dict, source: str) -> list[tuple[str, dict[str, Any]]]:
    """Every run before seeds: the grid's points, then the includes (or defaults alone)."""
    points = _grid_points(doc.get("grid"), source)
    include = doc.get("include")
    if include is not None and not isinstance(include, list):
        raise _err(source, "include", f"must be a list of mappings (one per extra run), got {show(include)}")
    included = [(f"include[{i}].", _mapping_of_fields(entry, source, f"include[{i}]"))
                for i, entry in enumerate(include or [])]
    if "grid" not in doc and not included:
        points = [("defaults.", {})]
    points += included
    if not points:
        raise _err(source, "grid" if "grid" in doc else "include", "no runs")
    return points


def _warn_if_large(n_runs: int, source: str, warn: Callable[[str], None] | None) -> None:
    if n_runs <= LARGE_SUITE:
        return
    note = (f"warning: {source} expands to {n_runs:,} runs (before removing duplicates); checking "
            f"every one takes a while, and --dry-run prints one line per run")
    if warn is None:
        print(note, file=sys.stderr, flush=True)
    else:
        warn(note)


# --- layers: where each value came from ---------------------------------------------------------

class _Layer:
    """Run-config fields of one layer (defaults, a grid point, an include, --set) with origins.

    ``flat`` maps dotted keys to values; mappings given for base/variant_opts/mask_opts are
    flattened so that layers merge field by field. ``origin`` maps each dotted key to the
    prefix of its path in the file (``grid[2].``).
    """

    def __init__(self) -> None:
        self.flat: dict[str, Any] = {}
        self.origin: dict[str, str] = {}
        self.base_name: tuple[Any, str] | None = None  # (name, origin) if set

    @classmethod
    def of(cls, fields: dict[str, Any], prefix: str) -> _Layer:
        layer = cls()
        for k, v in fields.items():
            layer.set(k, v, prefix)
        return layer

    def set(self, key: str, value: Any, prefix: str) -> None:
        if key in OPTION_MAPS and isinstance(value, dict):
            if key == "base" and "name" in value:
                self.base_name = (value["name"], prefix)
            for k, v in value.items():
                self.flat[f"{key}.{k}"] = v
                self.origin[f"{key}.{k}"] = prefix
            return
        if key == "base.name":
            self.base_name = (value, prefix)
        self.flat[key] = value  # (a non-mapping for an option map is kept, and rejected later)
        self.origin[key] = prefix


def _compose(layers: list[_Layer]) -> tuple[dict[str, Any], dict[str, str]]:
    """Merge layers (later wins) into overrides for ``config.resolve`` and their origins."""
    flat: dict[str, Any] = {}
    origin: dict[str, str] = {}
    base_name, base_origin = EXPERIMENT["base"]["name"], None
    for layer in layers:
        if layer.base_name is not None and layer.base_name[0] != base_name:
            # another base optimizer: the previous optimizer's fields no longer apply
            for k in [k for k in flat if k.startswith("base.")]:
                flat.pop(k)
                origin.pop(k, None)
            base_name, base_origin = layer.base_name
        for k, v in layer.flat.items():
            if k in OPTION_MAPS and not isinstance(v, dict):
                for sub in [s for s in flat if s.startswith(k + ".")]:
                    flat.pop(sub)
                    origin.pop(sub, None)
            flat[k] = config.plain_copy(v)
            origin[k] = layer.origin[k]
    over: dict[str, Any] = {}
    base: dict[str, Any] = {"name": base_name}
    for k, v in flat.items():
        if k.startswith("base."):
            base[k[5:]] = v
        else:
            over[k] = v
    if "base" not in flat:
        over["base"] = base
    if base_origin is not None:
        origin.setdefault("base.name", base_origin)
    return over, origin


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

def _expand(points: list[tuple[str, dict]], seeds: list[int | None], base_layer: _Layer,
            over_layer: _Layer, source: str) -> dict[str, Any]:
    """Every (point, seed) resolved and checked on its model; duplicates (same run id) dropped.

    Returns ``{"runs", "run_ids", "resolved_sparsity", "variant_defaults"}``. The seeds of a
    point differ in the seed field only (each an integer >= 0, checked with the seeds list), so
    a point is resolved and checked once and its seeds written into copies of that config.
    """
    checks = _ModelChecks()
    runs: list[dict] = []
    ids: list[str] = []
    seen: set[str] = set()
    resolved_sparsity: dict[str, float] = {}

    def resolve(layers: list[_Layer], prefix: str) -> tuple[dict, float | None]:
        over, origin = _compose(layers)
        try:
            cfg = config.resolve(over)
            return cfg, checks.check(cfg)
        except ConfigError as exc:
            raise _located(exc, origin, prefix, source) from None

    def add(rid: str, cfg: dict, resolved: float | None) -> None:
        seen.add(rid)
        runs.append(cfg)
        ids.append(rid)
        if resolved is not None:
            resolved_sparsity[rid] = resolved

    for prefix, point in points:
        layer = _Layer.of(point, prefix)
        if "seed" in point or "seed" in over_layer.flat or seeds == [None]:  # one seed: as given
            for seed in ([None] if "seed" in point else seeds):
                seed_layer = _Layer.of({} if seed is None else {"seed": seed}, "")
                cfg, resolved = resolve([base_layer, layer, seed_layer, over_layer], prefix)
                rid = config.run_id(cfg)
                if rid not in seen:
                    add(rid, cfg, resolved)
            continue
        first, resolved = resolve([base_layer, layer, _Layer.of({"seed": seeds[0]}, ""), over_layer], prefix)
        ids_of = config.run_ids_by_seed(first)
        for seed in seeds:
            rid = ids_of(seed)
            if rid not in seen:
                add(rid, first if seed == seeds[0] else {**config.plain_copy(first), "seed": seed}, resolved)
    return {"runs": runs, "run_ids": ids, "resolved_sparsity": resolved_sparsity,
            "variant_defaults": {v: _variant_defaults(v) for v in sorted({r["variant"] for r in runs})}}


def _variant_defaults(variant: str) -> dict[str, Any]:
    from bench.registries import variant_options

    return variant_options(variant)


class _ModelChecks:
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
