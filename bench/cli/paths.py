"""Paths given on the command line, checked before anything is written."""
from __future__ import annotations

from pathlib import Path

from bench.errors import InvalidInput


def existing_dir(path: str, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InvalidInput(f"{path}: no such {what}")
    if not p.is_dir():
        raise InvalidInput(f"{path}: not a folder (expected a {what})")
    return p


def creatable_dir(path: str, flag: str) -> Path:
    """A folder that exists or can be made (no file in its way)."""
    p = Path(path)
    for q in [p, *p.parents]:
        if q.exists():
            if not q.is_dir():
                raise InvalidInput(f"{flag} {path}: {q} is a file, not a folder")
            break
    return p


def creatable_file(path: str, flag: str) -> Path:
    p = Path(path)
    if p.is_dir():
        raise InvalidInput(f"{flag} {path}: is a folder, expected a file name")
    creatable_dir(str(p.parent), flag)
    return p
