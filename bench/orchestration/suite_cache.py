"""Validated suite expansions, kept on disk so that a suite checked once is not checked again.

Expanding a suite validates every run and builds each model and data-free mask once on CPU;
that needs torch (and timm, for ViTs), whose import is most of the time of ``sambench run
--dry-run``, ``sambench run`` and ``sambench status SUITE.yaml``. What the expansion gives
(the runs' configs, run ids, resolved ``match:`` sparsities, variant options) depends only on

- what the suite file and the ``--set`` overrides say about runs (defaults, grid points, seeds,
  run fields; not the name, the slurm settings, comments or layout),
- the code of sambench (every ``.py`` file under bench/ and masks/) and of the plugin folders in
  ``SAMBENCH_MASK_PATH`` and ``SAMBENCH_VARIANT_PATH``,
- the versions of Python, torch, torchvision and timm;

their hash names the entry, so an edit to any of them is a miss and the suite is checked again.
A suite with an error is never stored (it is checked, and refused, every time).

Where: ``$SAMBENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/sambench``, else ``~/.cache/sambench``
(folder ``suites/``); ``SAMBENCH_CACHE_DIR=`` (empty) turns the cache off. At most
:data:`MAX_ENTRIES` entries are kept (the least recently used go). A process that has already
loaded the registries (a test, a notebook) may hold masks or models registered in that process,
which no file names: it neither reads nor writes the cache.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from bench import io

FORMAT = 2                     # 2: configs stored once per group of seeds (pack)
MAX_ENTRIES = 16
_REGISTRY_MODULES = ("masks.base", "bench.registries")
_VERSIONED = ("torch", "torchvision", "timm")
_PLUGIN_PATHS = ("SAMBENCH_MASK_PATH", "SAMBENCH_VARIANT_PATH")   # folders of mask and variant modules


def folder() -> Path | None:
    """The cache folder, or None when turned off."""
    env = os.environ.get("SAMBENCH_CACHE_DIR")
    if env is not None:
        return Path(env) / "suites" if env else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sambench" / "suites"


def usable() -> bool:
    """Off, or in a process whose registries may hold entries registered in process."""
    return folder() is not None and not any(m in sys.modules for m in _REGISTRY_MODULES)


def _source_roots() -> list[Path]:
    roots = [Path(__file__).resolve().parents[1]]  # the bench package
    spec = importlib.util.find_spec("masks")  # finds the package without importing it
    if spec is not None and spec.submodule_search_locations:
        roots += [Path(p) for p in spec.submodule_search_locations]
    for plugins in _PLUGIN_PATHS:
        roots += [Path(p) for p in os.environ.get(plugins, "").split(os.pathsep) if p]
    return roots


@lru_cache(maxsize=1)
def _versions() -> str:
    from importlib import metadata

    found = []
    for dist in _VERSIONED:
        try:
            found.append(f"{dist}={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            found.append(f"{dist}=-")
    return f"python={sys.version};" + ";".join(found)


def code_fingerprint() -> str:
    """A hash of the sources and versions an expansion depends on (see the module doc)."""
    h = hashlib.sha256(_versions().encode())
    for root in _source_roots():
        h.update(f"\0root {root}\0".encode())
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*.py")):
            h.update(f"\0{path.relative_to(root)}\0".encode())
            with contextlib.suppress(OSError):
                h.update(path.read_bytes())
    return h.hexdigest()


def key(inputs: Any) -> str | None:
    """The entry name for what an expansion is made of (the suite's defaults, grid points,
    seeds and run-field overrides, as JSON), or None: the cache is not used, or the inputs
    hold a value JSON cannot spell exactly."""
    if not usable():
        return None
    try:
        text = json.dumps(inputs, sort_keys=True, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return None
    if json.loads(text) != inputs:  # a tuple, a non-string key...: not spelled exactly
        return None
    h = hashlib.sha256(f"format {FORMAT}\0{code_fingerprint()}\0".encode())
    h.update(text.encode())
    return h.hexdigest()[:32]


def load(name: str | None) -> dict | None:
    """The stored expansion, or None (missing, unreadable, another format)."""
    where = folder()
    if name is None or where is None:
        return None
    path = where / f"{name}.json"
    try:
        payload = io.read_json(path)
        expansion = unpack(payload)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    if expansion is None:
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used
    return expansion


def store(name: str | None, expansion: dict[str, Any]) -> bool:
    """Keep an expansion (JSON that reads back equal, else nothing is stored); returns whether
    it was stored. Never raises for a folder that cannot be written."""
    where = folder()
    if name is None or where is None:
        return False
    payload = pack(expansion)
    try:
        text = json.dumps(payload, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):  # a value JSON cannot hold (a date, a set): not cached
        return False
    if unpack(json.loads(text)) != expansion:  # e.g. a tuple or a non-string key: would come back changed
        return False
    try:
        where.mkdir(parents=True, exist_ok=True)
        io.atomic_write_bytes(where / f"{name}.json", text.encode(), sync=False)
        _evict(where)
    except OSError:
        return False
    return True


def pack(expansion: dict[str, Any]) -> dict[str, Any]:
    """The stored form: each run config once per group of runs that differ in their seed only
    (the seeds of one grid point), as ``configs`` (seed left out) and ``runs`` = ``[[config index,
    seed], ...]``: a suite of 100,000 runs over 100 grid points keeps 100 configs, not 100,000.

    A run joins the group before it when its config equals the group's with its seed, and the
    group's run id with that seed is its own (so a 1 that the id tells from 1.0 is never merged)."""
    from bench import config

    configs: list[dict] = []
    runs: list[list[Any]] = []
    rep: dict | None = None
    ids_of = None
    for cfg, rid in zip(expansion["runs"], expansion["run_ids"]):
        seed = cfg.get("seed")
        if ids_of is None or type(seed) is not int or {**rep, "seed": seed} != cfg or ids_of(seed) != rid:
            rep = {k: v for k, v in cfg.items() if k != "seed"}
            configs.append(rep)
            ids_of = config.run_ids_by_seed({**rep, "seed": 0}) if type(seed) is int else None
            runs.append([len(configs) - 1, seed] if "seed" in cfg else [len(configs) - 1])
            continue
        runs.append([len(configs) - 1, seed])
    rest = {k: v for k, v in expansion.items() if k != "runs"}
    return {"format": FORMAT, "configs": configs, "runs": runs, **rest}


def unpack(payload: Any) -> dict[str, Any] | None:
    """The expansion :func:`pack` stored (every run's config its own copy), or None for another format."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        return None
    from bench.config import plain_copy

    configs = payload["configs"]
    runs = [plain_copy(configs[entry[0]]) if len(entry) == 1 else {**plain_copy(configs[entry[0]]), "seed": entry[1]}
            for entry in payload["runs"]]
    rest = {k: v for k, v in payload.items() if k not in ("format", "configs", "runs")}
    return {"runs": runs, **rest}


def _evict(where: Path) -> None:
    entries = []
    for path in where.glob("*.json"):
        with contextlib.suppress(OSError):
            entries.append((path.stat().st_mtime, path))
    for _, path in sorted(entries, reverse=True)[MAX_ENTRIES:]:
        with contextlib.suppress(OSError):
            path.unlink()
