"""Suite files: a YAML grid of runs, expanded and fully validated before anything runs.

    suite = load_suite("suites/smoke.yaml", {"epochs": 1, "slurm.partition": "gpu"})
    suite.name, suite.runs (resolved run configs), suite.slurm, suite.source

Format (see DESIGN.md)::

    name: my-suite            # required; results go to <out>/<name>/
    defaults: {...}           # run-config fields every run starts from (dotted keys allowed)
    grid: {...} | [{...}, ...]  # a mapping = cartesian product of its list values;
                              # a list of mappings = union of their products
    include: [{...}, ...]     # single extra runs (defaults + that mapping)
    seeds: [0, 1, 2]          # crossed with every run (default [0])
    slurm: {...}              # executor settings (partition, cpus_per_task, runs_per_job, ...)

A list value in a grid mapping is an axis; to give a list-valued field one value, wrap it:
``base.betas: [[0.9, 0.999]]``. Without ``grid`` the suite is ``defaults`` alone (plus
``include``); with only ``include`` and no ``grid``, just the included runs.

``--set key=value`` overrides apply to every run and win over the file (``epochs=1``,
``base.lr=0.05``); ``slurm.<key>=value`` sets an executor setting, ``name=...`` and
``seeds=[...]`` replace those keys.

Every error (unknown key or name, bad value, YAML syntax, a mask that selects nothing on its
model, no runs at all) raises :class:`SuiteError` naming the file and the field path, e.g.
``suites/x.yaml: grid[2].mask: unknown mask 'randm' (allowed: all, ...)``; nothing is written.
"""
from __future__ import annotations

import copy
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import config as C
from bench.cli import InvalidInput
from masks.registry import UnknownNameError

TOP_KEYS = ["defaults", "grid", "include", "name", "reference", "seeds", "slurm"]
OPTION_MAPS = ("base", "variant_opts", "mask_opts")
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

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
    "additional_parameters": (dict, "a mapping of extra sbatch options"),
}


class SuiteError(InvalidInput):
    """An invalid suite file or override (exit status 2); the message names file and field."""


@dataclass
class Suite:
    name: str
    runs: list[dict]                       # resolved run configs, in suite order, de-duplicated
    slurm: dict[str, Any]
    source: Path
    run_ids: list[str] = field(default_factory=list)
    # run id -> the sparsity actually used when the config says "match:<mask>"
    resolved_sparsity: dict[str, float] = field(default_factory=dict)
    # published numbers (the suite's reference: block, checked; see bench/reference.py)
    reference: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.runs)

    def items(self):
        return zip(self.run_ids, self.runs)


# --- small helpers --------------------------------------------------------------------------

def _err(source: str, path: str, message: str, allowed: Any = None) -> SuiteError:
    if source == "--set":
        return SuiteError(f"--set {C.ConfigError(path, message, allowed).render()}")
    return SuiteError(C.ConfigError(path, message, allowed, source).render())


def _allowed_run_keys() -> list[str]:
    return sorted(list(C.EXPERIMENT) + list(C.RUNTIME))


def _check_key(source: str, prefix: str, key: Any) -> None:
    if not isinstance(key, str):
        raise _err(source, f"{prefix}{key!r}", "keys must be strings", _allowed_run_keys())
    top = key.split(".", 1)[0]
    if top not in C.EXPERIMENT and top not in C.RUNTIME:
        raise _err(source, f"{prefix}{key}", "unknown key", _allowed_run_keys())
    if "." in key and top not in OPTION_MAPS:
        raise _err(source, f"{prefix}{key}", f"{top} has no sub-fields (dotted keys only for "
                   f"{', '.join(OPTION_MAPS)})")
    if "." in key and not all(key.split(".")):
        raise _err(source, f"{prefix}{key}", "empty part in a dotted key")


class _Layer:
    """Run-config fields of one layer (defaults, a grid point, an include, --set) with origins.

    ``flat`` maps dotted keys to values; mappings given for base/variant_opts/mask_opts are
    flattened so that layers merge field by field. ``origin`` maps each dotted key to the
    prefix of its path in the file (``grid[2].``) and the key as written.
    """

    def __init__(self) -> None:
        self.flat: dict[str, Any] = {}
        self.origin: dict[str, tuple[str, str]] = {}
        self.base_name: tuple[str, tuple[str, str]] | None = None  # (name, origin) if set

    def set(self, key: str, value: Any, prefix: str) -> None:
        if key in OPTION_MAPS and isinstance(value, dict):
            if key == "base" and "name" in value:
                self.base_name = (value["name"], (prefix, "base.name"))
            for k, v in value.items():
                self.flat[f"{key}.{k}"] = v
                self.origin[f"{key}.{k}"] = (prefix, f"{key}.{k}")
            return
        if key == "base.name":
            self.base_name = (value, (prefix, key))
        self.flat[key] = value  # (a non-mapping for an option map is kept, and rejected later)
        self.origin[key] = (prefix, key)


def _compose(layers: list[_Layer]) -> tuple[dict[str, Any], dict[str, tuple[str, str]]]:
    """Merge layers (later wins) into overrides for ``config.resolve`` and their origins."""
    flat: dict[str, Any] = {}
    origin: dict[str, tuple[str, str]] = {}
    base_name, base_origin = C.EXPERIMENT["base"]["name"], None
    for layer in layers:
        if layer.base_name is not None and layer.base_name[0] != base_name:
            # another base optimizer: the previous optimizer's fields no longer apply
            for k in [k for k in flat if k.startswith("base.")]:
                flat.pop(k)
                origin.pop(k, None)
            base_name, base_origin = layer.base_name[0], layer.base_name[1]
        for k, v in layer.flat.items():
            if k in OPTION_MAPS and not isinstance(v, dict):
                for sub in [s for s in flat if s.startswith(k + ".")]:
                    flat.pop(sub)
                    origin.pop(sub, None)
            flat[k] = copy.deepcopy(v)
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


def _where(field_path: str, origin: dict[str, tuple[str, str]], fallback: str) -> str:
    """The prefix to put before ``field_path`` so it names where the value came from."""
    if field_path in origin:
        return origin[field_path][0]
    for k, (prefix, _) in origin.items():  # a sub-field of an option map, e.g. variant_opts.p
        if k.startswith(field_path + "."):
            return prefix
    top = field_path.split(".", 1)[0]
    if top in origin:
        return origin[top][0]
    related = {"sparsity": "mask", "mask_opts": "mask", "variant_opts": "variant"}.get(top)
    if related and related in origin:
        return origin[related][0]
    return fallback


# --- reading ---------------------------------------------------------------------------------

def _read_yaml(path: Path, source: str) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SuiteError(f"{source}: no such suite file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise SuiteError(f"{source}: cannot read the suite file ({exc})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        detail = f"{context}, {problem}" if context else problem
        raise SuiteError(f"{source}: {where}YAML syntax error: {detail}") from None


def _split_overrides(overrides: dict | None, source: str):
    run_over: dict[str, Any] = {}
    slurm_over: dict[str, Any] = {}
    top_over: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if not isinstance(key, str) or not key:
            raise SuiteError(f"--set {key!r}: expected key=value")
        if key.startswith("slurm."):
            slurm_over[key[6:]] = value
        elif key in ("name", "seeds", "slurm"):
            top_over[key] = value
        elif key in ("defaults", "grid", "include"):
            raise SuiteError(f"--set {key}: cannot be overridden; set run fields directly "
                             f"(e.g. --set epochs=1)")
        else:
            _check_key("--set", "", key)
            run_over[key] = value
    return run_over, slurm_over, top_over


def _check_slurm(settings: Any, source: str, prefix: str = "slurm.") -> dict[str, Any]:
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise _err(source, prefix.rstrip("."), f"must be a mapping, got {settings!r}", sorted(SLURM_KEYS))
    out = {}
    for key, value in settings.items():
        if key not in SLURM_KEYS:
            raise _err(source, f"{prefix}{key}", "unknown key", sorted(SLURM_KEYS))
        kind, desc = SLURM_KEYS[key]
        if value is None:
            continue
        ok = {
            str: lambda v: isinstance(v, str) and v != "",
            dict: lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
            "int0": lambda v: C._is_int(v) and v >= 0,
            "int1": lambda v: C._is_int(v) and v >= 1,
            "pos": lambda v: C._is_num(v) and v > 0,
        }[kind](value)
        if not ok:
            raise _err(source, f"{prefix}{key}", f"must be {desc}, got {value!r}")
        out[key] = value
    return out


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
                raise _err(source, f"grid[{i}]", f"must be a mapping of run fields, got {entry!r}")
            entries.append((f"grid[{i}].", entry))
    else:
        raise _err(source, "grid", f"must be a mapping or a list of mappings, got {grid!r}")
    points = []
    for prefix, entry in entries:
        axes = []
        for key, value in entry.items():
            _check_key(source, prefix, key)
            values = value if isinstance(value, list) else [value]
            if not values:
                raise _err(source, f"{prefix}{key}", "empty list: the grid has no runs")
            axes.append([(key, v) for v in values])
        for combo in itertools.product(*axes):
            points.append((prefix, dict(combo)))
    return points


def _check_mapping(value: Any, source: str, path: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _err(source, path, f"must be a mapping of run fields, got {value!r}")
    prefix = f"{path}."
    for key in value:
        _check_key(source, prefix, key)
    return value


# --- model / mask checks ---------------------------------------------------------------------

class _ModelChecks:
    """Build each (model, dataset) once on CPU, and each data-free mask once per shape."""

    def __init__(self) -> None:
        self.models: dict[tuple[str, str], Any] = {}
        self.masks: dict[tuple, tuple[str | None, str | None, float | None]] = {}

    def model(self, name: str, dataset: str):
        key = (name, dataset)
        if key not in self.models:
            import torch

            from bench import models as M
            from bench.data import dataset_shape

            num_classes, in_chans, img_size = dataset_shape(dataset)
            with torch.random.fork_rng(devices=[]), torch.device("cpu"):
                torch.manual_seed(0)
                self.models[key] = M.create_model(name, num_classes=num_classes, in_chans=in_chans,
                                                  img_size=img_size)
        return self.models[key]

    def check(self, cfg: dict) -> tuple[str | None, str | None, float | None]:
        """(field, message) of the first problem, or (None, None), and the resolved sparsity."""
        if cfg["variant"] == "none" or cfg["mask"] == "none":
            return None, None, None
        opts_key = json.dumps(cfg["mask_opts"], sort_keys=True, default=str)
        key = (cfg["model"], cfg["dataset"], cfg["mask"], str(cfg["sparsity"]), opts_key)
        if key not in self.masks:
            self.masks[key] = self._check(cfg)
        return self.masks[key]

    def _check(self, cfg: dict):
        import masks
        from masks.base import MaskError

        try:
            model = self.model(cfg["model"], cfg["dataset"])
        except Exception as exc:  # noqa: BLE001 -- any failure to build is the user's model choice
            return "model", f"cannot build {cfg['model']!r} for {cfg['dataset']!r}: {type(exc).__name__}: {exc}", None
        total = masks.n_trainable(model)
        if total == 0:
            return "model", f"{cfg['model']!r} has no trainable parameters to perturb", None
        try:
            mask = C.make_mask(cfg, seed=0)
        except (TypeError, ValueError) as exc:
            return ("sparsity" if "sparsity" in str(exc) else "mask_opts"), str(exc), None
        resolved = None
        sp = cfg["sparsity"]
        if isinstance(sp, str) and sp.startswith("match:"):
            ref_name = sp.split(":", 1)[1]
            try:
                ref = masks.create_mask(ref_name, seed=0)
            except (TypeError, ValueError) as exc:
                return "sparsity", f"{sp!r}: {exc}", None
            if not ref.needs_data:
                try:
                    k = masks.selection_count(ref.build(model))
                except MaskError as exc:
                    return "sparsity", f"{sp!r} on {cfg['model']!r}: {exc}", None
                resolved = 1.0 - k / total
        if mask.needs_data:
            return None, None, resolved
        try:
            mask.build(model)
        except MaskError as exc:
            return "mask", f"{cfg['mask']!r} on {cfg['model']!r}: {exc}", resolved
        except Exception as exc:  # noqa: BLE001 -- a strategy rejecting this model/options
            fld = "mask_opts" if cfg["mask_opts"] else "mask"
            return fld, f"{cfg['mask']!r} on {cfg['model']!r}: {type(exc).__name__}: {exc}", resolved
        return None, None, resolved


# --- public entry ----------------------------------------------------------------------------

def load_suite(path: str | Path, overrides: dict | None = None) -> Suite:
    """Read, expand and validate a suite file; raise SuiteError on the first problem."""
    source = str(path)
    path = Path(path)
    doc = _read_yaml(path, source)
    if doc is None:
        raise SuiteError(f"{source}: empty suite file (a suite needs at least: name)")
    if not isinstance(doc, dict):
        raise SuiteError(f"{source}: must be a mapping with keys {', '.join(TOP_KEYS)}, "
                         f"got {type(doc).__name__}")
    for key in doc:
        if key not in TOP_KEYS:
            raise _err(source, str(key), "unknown key", TOP_KEYS)
    run_over, slurm_over, top_over = _split_overrides(overrides, source)
    reference = _reference(doc.get("reference"), source)

    # name
    name, name_src = (top_over["name"], "--set") if "name" in top_over else (doc.get("name"), source)
    if name is None:
        raise _err(source, "name", "missing (required: the results folder <out>/<name>/)")
    if not isinstance(name, str) or not NAME_RE.match(name) or name in (".", ".."):
        raise _err(name_src, "name", f"must be a folder name of letters, digits, '_', '.', '-' "
                                     f"(not starting with '.' or '-'), got {name!r}")

    # seeds
    seeds_src = "--set" if "seeds" in top_over else source
    seeds = top_over.get("seeds", doc.get("seeds"))
    if seeds is None:
        seeds = None
    elif not isinstance(seeds, list) or not seeds or not all(C._is_int(s) and s >= 0 for s in seeds):
        raise _err(seeds_src, "seeds", f"must be a non-empty list of integers >= 0, got {seeds!r}")

    # slurm
    slurm = _check_slurm(doc.get("slurm"), source)
    if "slurm" in top_over:
        slurm.update(_check_slurm(top_over["slurm"], "--set"))
    slurm.update(_check_slurm(slurm_over, "--set", prefix="slurm."))

    # defaults, grid, include
    defaults = _check_mapping(doc.get("defaults"), source, "defaults")
    points = _grid_points(doc.get("grid"), source)
    include = doc.get("include")
    if include is not None and not isinstance(include, list):
        raise _err(source, "include", f"must be a list of mappings (one per extra run), got {include!r}")
    inc_points = []
    for i, entry in enumerate(include or []):
        inc_points.append((f"include[{i}].", _check_mapping(entry, source, f"include[{i}]")))
    if "grid" not in doc and not inc_points:
        points = [("defaults.", {})]
    points += inc_points
    if not points:
        raise _err(source, "grid" if "grid" in doc else "include", "no runs")

    base_layer = _Layer()
    for k, v in defaults.items():
        base_layer.set(k, v, "defaults.")
    over_layer = _Layer()
    for k, v in run_over.items():
        over_layer.set(k, v, "--set ")

    if seeds is None:
        seeds = [defaults["seed"]] if C._is_int(defaults.get("seed")) else [0]

    checks = _ModelChecks()
    runs: list[dict] = []
    ids: list[str] = []
    seen: set[str] = set()
    resolved_sparsity: dict[str, float] = {}
    for prefix, point in points:
        layer = _Layer()
        for k, v in point.items():
            layer.set(k, v, prefix)
        explicit_seed = "seed" in point
        for seed in ([None] if explicit_seed else seeds):
            seed_layer = _Layer()
            if seed is not None:
                seed_layer.set("seed", seed, "")  # seeds were checked above
            over, origin = _compose([base_layer, layer, seed_layer, over_layer])
            try:
                cfg = C.resolve(over)
            except C.ConfigError as exc:
                raise _render(exc, _where(exc.field, origin, prefix), source) from None
            except UnknownNameError as exc:  # e.g. sparsity "match:<unknown mask>"
                exc = C.ConfigError("sparsity", str(exc))
                raise _render(exc, _where("sparsity", origin, prefix), source) from None
            sp = cfg["sparsity"]
            if cfg["variant"] == "none" or cfg["mask"] == "none":
                try:  # validate() skips masks for baselines; still reject a nonsense sparsity
                    from masks.base import check_sparsity

                    check_sparsity(sp)
                except (ValueError, UnknownNameError) as exc:
                    raise _render(C.ConfigError("sparsity", str(exc)), _where("sparsity", origin, prefix),
                                  source) from None
            fld, msg, resolved = checks.check(cfg)
            if fld is not None:
                raise _render(C.ConfigError(fld, msg), _where(fld, origin, prefix), source)
            rid = C.run_id(cfg)
            if rid in seen:
                continue
            seen.add(rid)
            runs.append(cfg)
            ids.append(rid)
            if resolved is not None:
                resolved_sparsity[rid] = resolved
    return Suite(name=name, runs=runs, slurm=slurm, source=path, run_ids=ids,
                 resolved_sparsity=resolved_sparsity, reference=reference)


def _reference(block: Any, source: str) -> list[dict]:
    from bench.reference import ReferenceError, check_reference

    try:
        return check_reference(block)
    except ReferenceError as exc:
        raise _err(source, exc.field, exc.message, exc.allowed) from None


def _render(exc: C.ConfigError, where: str, source: str) -> SuiteError:
    if where.startswith("--set"):
        return SuiteError(f"--set {C.ConfigError(exc.field, exc.message, exc.allowed).render()}")
    return SuiteError(exc.with_source(source, where).render())
