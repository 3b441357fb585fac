"""Published numbers a suite carries (its ``reference:`` key), checked and stored beside its results.

    reference:
      source: "Mueller et al., NeurIPS 2023 (SAM-ON), Table 1"   # default source of the entries
      metric: test_acc                                            # default metric (test_acc)
      entries:
        - {variant: none, mean: 80.71, std: 0.2, n: 3, label: SGD}
        - {mask: norm_only, mean: 84.19, std: 0.2}
        - {variant: asam, variant_opts: {adaptive: elementwise}, mask: all, rho: 5, mean: 83.8}

An entry's ``mean`` (required), ``std``, ``n``, ``source``, ``metric``, ``label`` and ``note``
describe the published number; every other key is a run-config field a configuration must
have to be shown beside it (fields not given match anything; ``rho`` is shown with the
number rather than required to match). ``sambench run`` writes the checked block to
``<out>/<suite>/reference.json``, where ``analysis`` (tables and plots) finds it. Fields that
every run of the suite shares (dataset, model, label_noise) are added to each entry, so a
published number never lands beside a run of another setting.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench import io

INFO_KEYS = ("mean", "std", "n", "source", "metric", "label", "note")
BLOCK_KEYS = ("source", "metric", "entries")
SCOPE_FIELDS = ("dataset", "model", "label_noise")
OPTION_MAPS = ("base", "variant_opts", "mask_opts")
FILE = "reference.json"


class ReferenceBlockError(ValueError):
    """A bad ``reference:`` block; ``field`` is its path (``reference.entries[2].mean``)."""

    def __init__(self, field: str, message: str, allowed: Any = None):
        self.field, self.message, self.allowed = field, message, allowed
        super().__init__(f"{field}: {message}")


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _match_fields(entry: dict, where: str) -> dict[str, Any]:
    """The run-config fields of an entry, option maps flattened to dotted keys."""
    import masks
    from bench import config, registries

    registries.load()
    allowed = sorted(k for k in config.EXPERIMENT if k != "seed")
    out: dict[str, Any] = {}
    for key, value in entry.items():
        if key in INFO_KEYS:
            continue
        top = str(key).split(".", 1)[0]
        if top not in allowed:
            raise ReferenceBlockError(f"{where}.{key}", "not a run-config field or entry key",
                                 allowed + list(INFO_KEYS))
        if top in OPTION_MAPS and "." not in str(key):
            if not isinstance(value, dict):
                raise ReferenceBlockError(f"{where}.{key}", f"must be a mapping, got {value!r}")
            out.update({f"{key}.{k}": v for k, v in value.items()})
        elif "." in str(key) and top not in OPTION_MAPS:
            raise ReferenceBlockError(f"{where}.{key}", f"{top} has no sub-fields")
        else:
            out[key] = value
    if "mask" in out and out["mask"] not in masks.list_masks():
        raise ReferenceBlockError(f"{where}.mask", f"unknown mask {out['mask']!r}", masks.list_masks())
    if "variant" in out and out["variant"] not in registries.VARIANTS:
        raise ReferenceBlockError(f"{where}.variant", f"unknown variant {out['variant']!r}",
                             registries.VARIANTS.names())
    return out


def _entry(entry: Any, where: str, source: Any, metric: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise ReferenceBlockError(where, f"must be a mapping (fields to match, mean, std, source), got {entry!r}")
    if not _num(entry.get("mean")):
        raise ReferenceBlockError(f"{where}.mean", f"must be a number (the published value), got {entry.get('mean')!r}")
    std = entry.get("std")
    if std is not None and not (_num(std) and std >= 0):
        raise ReferenceBlockError(f"{where}.std", f"must be a number >= 0 or null, got {std!r}")
    n = entry.get("n")
    if n is not None and not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
        raise ReferenceBlockError(f"{where}.n", f"must be an integer >= 1, got {n!r}")
    src = entry.get("source", source)
    if not isinstance(src, str) or not src.strip():
        raise ReferenceBlockError(f"{where}.source", "missing: give it here or as reference.source")
    for key in ("metric", "label", "note"):
        if key in entry and not isinstance(entry[key], str):
            raise ReferenceBlockError(f"{where}.{key}", f"must be text, got {entry[key]!r}")
    return {"match": _match_fields(entry, where), "metric": entry.get("metric", metric),
            "mean": float(entry["mean"]), "std": None if std is None else float(std), "n": n,
            "source": src.strip(), "label": entry.get("label"), "note": entry.get("note")}


def check_reference(block: Any, prefix: str = "reference") -> list[dict]:
    """Validate a suite's ``reference:`` block; the normalized entries (ReferenceBlockError if bad)."""
    if block is None:
        return []
    if not isinstance(block, dict):
        raise ReferenceBlockError(prefix, f"must be a mapping with keys {', '.join(BLOCK_KEYS)}, got {block!r}")
    for key in block:
        if key not in BLOCK_KEYS:
            raise ReferenceBlockError(f"{prefix}.{key}", "unknown key", list(BLOCK_KEYS))
    metric = block.get("metric", "test_acc")
    if not isinstance(metric, str):
        raise ReferenceBlockError(f"{prefix}.metric", f"must be a result field name, got {metric!r}")
    entries = block.get("entries")
    if not isinstance(entries, list) or not entries:
        raise ReferenceBlockError(f"{prefix}.entries", "must be a non-empty list of published numbers")
    return [_entry(e, f"{prefix}.entries[{i}]", block.get("source"), metric) for i, e in enumerate(entries)]


def scoped(entries: list[dict], runs: list[dict]) -> list[dict]:
    """Entries with the fields every run shares (dataset, model, label_noise) added to their match."""
    shared = {}
    for key in SCOPE_FIELDS:
        values = {repr(r.get(key)) for r in runs}
        if runs and len(values) == 1:
            shared[key] = runs[0].get(key)
    return [{**e, "match": {**shared, **e["match"]}} for e in entries]


def write_reference(suite, root: Path) -> Path | None:
    """``<root>/reference.json`` from a loaded suite with a ``reference:`` block (None without one)."""
    entries = getattr(suite, "reference", None)
    if not entries:
        return None
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / FILE
    io.write_json(path, {"suite": suite.name, "source_file": str(suite.source),
                         "entries": scoped(entries, suite.runs)})
    return path
