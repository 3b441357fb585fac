"""Published numbers stored beside results (``<suite folder>/reference.json``), matched to rows.

``sambench run`` writes the file from a suite's ``reference:`` block (bench/reference.py): a
list of entries ``{"match": {config field: value}, "metric", "mean", "std", "n", "source",
"label", "note"}``. A configuration (a row of ``aggregate``) shows an entry when every match
field equals its own value (``rho`` excepted: it is shown with the number) and both are
baselines or both are not. Files only; no torch.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from analysis.labels import is_missing, plain

FILE = "reference.json"
NOT_MATCHED = ("rho",)


def _valid(entry: Any) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("match"), dict)
            and isinstance(entry.get("mean"), (int, float)) and not isinstance(entry.get("mean"), bool))


def load_references(folders, skipped: list | None = None) -> list[dict]:
    """Entries of every reference.json directly in ``folders`` (each file read once), with ``suite``."""
    out, seen = [], set()
    for folder in folders:
        path = Path(folder) / FILE
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        try:
            doc = json.loads(path.read_bytes())
            entries = doc["entries"]
            if not isinstance(entries, list) or not all(_valid(e) for e in entries):
                raise ValueError("entries must be a list of {match, mean, ...}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if skipped is not None:
                skipped.append({"path": str(path), "reason": f"{type(exc).__name__}: {exc}"})
            continue
        for e in entries:
            out.append({**e, "suite": doc.get("suite"), "metric": e.get("metric") or "test_acc"})
    return out


def _same(have: Any, want: Any) -> bool:
    have, want = plain(have), plain(want)
    if isinstance(have, bool) or isinstance(want, bool):
        return have == want
    if isinstance(have, (int, float)) and isinstance(want, (int, float)):
        return math.isclose(have, want, rel_tol=1e-9, abs_tol=1e-12)
    return str(have) == str(want) if have is not None else want is None


def is_baseline_entry(entry: dict) -> bool:
    match = entry["match"]
    return match.get("variant") == "none" or match.get("mask") == "none"


def matches(row, entry: dict, ignore=NOT_MATCHED) -> bool:
    """Whether a configuration row (Series or dict) is the one an entry was published for."""
    if bool(row.get("baseline")) != is_baseline_entry(entry):
        return False
    for key, want in entry["match"].items():
        if key in ignore:
            continue
        if is_baseline_entry(entry) and key in ("variant", "mask"):
            continue  # a baseline is variant none or mask none, whichever the run says
        have = row.get(key)
        if is_missing(have) and want is not None:
            return False
        if not _same(have, want):
            return False
    return True


def entry_for(row, entries: list[dict], metric: str = "test_acc") -> dict | None:
    """The most specific entry (most match fields) for this row and metric, or None."""
    hits = [e for e in entries if e.get("metric", "test_acc") == metric and matches(row, e)]
    if not hits:
        return None
    return max(hits, key=lambda e: len(e["match"]))


def published_text(entry: dict, digits: int = 2, fmt: str = "markdown") -> str:
    """``84.19 ± 0.20 [1]``-style cell text (the footnote number is added by the table)."""
    pm = " $\\pm$ " if fmt == "latex" else " ± "
    text = f"{entry['mean']:.{digits}f}"
    if entry.get("std") is not None:
        text += f"{pm}{entry['std']:.{digits}f}"
    rho = entry["match"].get("rho")
    if rho is not None:
        text += (" ($\\rho$=" if fmt == "latex" else " (ρ=") + f"{plain(rho)})"
    return text


def sources(entries: list[dict]) -> list[str]:
    """Distinct sources in order of first appearance (footnotes [1], [2], ...)."""
    return list(dict.fromkeys(e["source"] for e in entries))
