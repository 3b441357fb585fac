"""Reading a suite file: its YAML, its top-level keys, names, seeds, slurm settings, the grid's
points and the ``--set`` overrides, each checked with the file and the field path as data
(:class:`SuiteError`). Expanding the points into runs is :mod:`bench.orchestration.suite_grid`;
the public entry, :func:`bench.orchestration.suite.load_suite`, does both.
"""
from __future__ import annotations

import itertools
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import config
from bench.config import EXPERIMENT, OPTION_MAPS, RUNTIME
from bench.errors import InvalidInput, did_you_mean, load_yaml, show

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
    "int0": lambda v: config.is_int(v) and v >= 0,
    "int1": lambda v: config.is_int(v) and v >= 1,
    "pos": lambda v: config.is_num(v) and v > 0 and v != float("inf"),
}


class SuiteError(InvalidInput):
    """An invalid suite file or override (exit status 2); ``source`` and ``field`` say where."""


def error_at(source: str, field_path: str, message: str, allowed: Any = None) -> SuiteError:
    return SuiteError(message, field=field_path, allowed=allowed, source=source)


def reference_block(block: Any, source: str) -> list[dict]:
    from bench.orchestration.reference import ReferenceBlockError, check_reference

    try:
        return check_reference(block)
    except ReferenceBlockError as exc:
        raise error_at(source, exc.field, exc.message, exc.allowed) from None


# --- reading ---------------------------------------------------------------------------------------

def read_text(path: Path, source: str) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise SuiteError("no such suite file", source=source) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise SuiteError(f"cannot read the suite file ({exc})", source=source) from None


def parse_doc(text: str, source: str) -> dict:
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
            raise error_at(source, str(key), f"unknown key{did_you_mean(key, TOP_KEYS)}", TOP_KEYS)
    return doc


def split_overrides(overrides: dict | None) -> tuple[dict, dict, dict]:
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
            raise error_at("--set", key, "cannot be overridden; set run fields directly (e.g. --set epochs=1)")
        else:
            _check_key("--set", "", key)
            run_over[key] = value
    return run_over, slurm_over, top_over


def _allowed_run_keys() -> list[str]:
    return sorted(list(EXPERIMENT) + list(RUNTIME))


def _check_key(source: str, prefix: str, key: Any) -> None:
    if not isinstance(key, str):
        raise error_at(source, f"{prefix}{show(key)}", "keys must be strings", _allowed_run_keys())
    top = key.split(".", 1)[0]
    if top not in EXPERIMENT and top not in RUNTIME:
        raise error_at(source, f"{prefix}{key}", f"unknown key{did_you_mean(top, _allowed_run_keys())}",
                       _allowed_run_keys())
    if "." in key and top not in OPTION_MAPS:
        raise error_at(source, f"{prefix}{key}", f"{top} has no sub-fields (dotted keys only for "
                   f"{', '.join(OPTION_MAPS)})")
    if "." in key and not all(key.split(".")):
        raise error_at(source, f"{prefix}{key}", "empty part in a dotted key")


def suite_name(doc: dict, top_over: dict, source: str) -> str:
    name, name_src = (top_over["name"], "--set") if "name" in top_over else (doc.get("name"), source)
    if name is None:
        raise error_at(source, "name", "missing (required: the results folder <out>/<name>/)")
    if not isinstance(name, str) or not NAME_RE.match(name) or name in (".", ".."):
        raise error_at(name_src, "name", f"must be a folder name of letters, digits, '_', '.', '-' "
                                     f"(not starting with '.' or '-'), got {show(name)}")
    return name


def seeds_of(doc: dict, top_over: dict, source: str) -> list[int | None]:
    """The seeds list, or ``[None]``: each run keeps the seed its own fields give it."""
    seeds_src = "--set" if "seeds" in top_over else source
    seeds = top_over.get("seeds", doc.get("seeds"))
    if seeds is None:
        return [None]
    if not isinstance(seeds, list) or not seeds or not all(config.is_int(s) and s >= 0 for s in seeds):
        raise error_at(seeds_src, "seeds", f"must be a non-empty list of integers >= 0, got {show(seeds)}")
    return seeds


def slurm_settings(doc: dict, top_over: dict, slurm_over: dict, source: str) -> dict[str, Any]:
    slurm = _check_slurm(doc.get("slurm"), source)
    if "slurm" in top_over:
        slurm.update(_check_slurm(top_over["slurm"], "--set"))
    slurm.update(_check_slurm(slurm_over, "--set"))
    return slurm


def _check_slurm(settings: Any, source: str) -> dict[str, Any]:
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise error_at(source, "slurm", f"must be a mapping, got {show(settings)}", sorted(SLURM_KEYS))
    out = {}
    for key, value in settings.items():
        if key not in SLURM_KEYS:
            raise error_at(source, f"slurm.{key}", f"unknown key{did_you_mean(key, sorted(SLURM_KEYS))}",
                           sorted(SLURM_KEYS))
        kind, desc = SLURM_KEYS[key]
        if value is None:
            continue
        if not _SLURM_CHECKS[kind](value):
            raise error_at(source, f"slurm.{key}", f"must be {desc}, got {show(value)}")
        out[key] = value
    return out


def mapping_of_fields(value: Any, source: str, path: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise error_at(source, path, f"must be a mapping of run fields, got {show(value)}")
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
            raise error_at(source, "grid", "empty list: the suite has no runs")
        entries = []
        for i, entry in enumerate(grid):
            if not isinstance(entry, dict):
                raise error_at(source, f"grid[{i}]", f"must be a mapping of run fields, got {show(entry)}")
            entries.append((f"grid[{i}].", entry))
    else:
        raise error_at(source, "grid", f"must be a mapping or a list of mappings, got {show(grid)}")
    points = []
    for prefix, entry in entries:
        axes = []
        for key, value in _flat_entry(entry).items():
            _check_key(source, prefix, key)
            values = value if isinstance(value, list) else [value]
            if not values:
                raise error_at(source, f"{prefix}{key}", "empty list: the grid has no runs")
            axes.append([(key, v) for v in values])
        points.extend((prefix, dict(combo)) for combo in itertools.product(*axes))
    return points


GRID_MAPS = ("base", "variant_opts", "mask_opts")  # mappings whose list values are grid axes too


def _flat_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """A grid mapping with ``base``/``variant_opts``/``mask_opts`` mappings spelled as dotted keys, so
    a list inside one is an axis as it is for a dotted key (``mask_opts: {num_samples: [16, 64]}`` ==
    ``mask_opts.num_samples: [16, 64]``)."""
    flat: dict[str, Any] = {}
    for key, value in entry.items():
        if key in GRID_MAPS and isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def points_of(doc: dict, source: str) -> list[tuple[str, dict[str, Any]]]:
    """Every run before seeds: the grid's points, then the includes (or defaults alone)."""
    points = _grid_points(doc.get("grid"), source)
    include = doc.get("include")
    if include is not None and not isinstance(include, list):
        raise error_at(source, "include", f"must be a list of mappings (one per extra run), got {show(include)}")
    included = [(f"include[{i}].", mapping_of_fields(entry, source, f"include[{i}]"))
                for i, entry in enumerate(include or [])]
    if "grid" not in doc and not included:
        points = [("defaults.", {})]
    points += included
    if not points:
        raise error_at(source, "grid" if "grid" in doc else "include", "no runs")
    return points


def warn_if_large(n_runs: int, source: str, warn: Callable[[str], None] | None) -> None:
    if n_runs <= LARGE_SUITE:
        return
    note = (f"warning: {source} expands to {n_runs:,} runs (before removing duplicates); checking "
            f"every one takes a while, and --dry-run prints one line per run")
    if warn is None:
        print(note, file=sys.stderr, flush=True)
    else:
        warn(note)

