"""Paths given on the command line, checked before anything is written."""
from __future__ import annotations

import os
from pathlib import Path

from bench.errors import InvalidInput


def utf8(path: str, what: str) -> str:
    """A path that is valid UTF-8 (a name Python decoded with surrogates is not): TensorBoard, the
    SLURM scripts submitit writes and the results index need it. Spaces are fine."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{what} {path.encode('utf-8', 'surrogateescape')!r}: not valid UTF-8 (byte "
                           f"{path[exc.start].encode('utf-8', 'surrogateescape')!r} at {exc.start}); "
                           f"sambench needs UTF-8 paths (spaces are fine): rename the folder") from None
    return path


def existing_dir(path: str, what: str) -> Path:
    p = Path(utf8(path, what))
    if not p.exists():
        raise InvalidInput(f"{path}: no such {what}")
    if not p.is_dir():
        raise InvalidInput(f"{path}: not a folder (expected a {what})")
    return p


def creatable_dir(path: str, flag: str) -> Path:
    """A folder that exists or can be made (no file in its way), named in UTF-8."""
    p = Path(utf8(path, flag))
    for q in [p, *p.parents]:
        if q.exists():
            if not q.is_dir():
                raise InvalidInput(f"{flag} {path}: {q} is a file, not a folder")
            break
    return p


def creatable_file(path: str, flag: str) -> Path:
    p = Path(utf8(path, flag))
    if p.is_dir():
        raise InvalidInput(f"{flag} {path}: is a folder, expected a file name")
    creatable_dir(str(p.parent), flag)
    return p


RUN_FILES = ("config.json", "result.json")  # a run folder holds at least one of them


def results_folder(path: str) -> Path:
    """A folder holding at least one run folder (the way analysis.collect finds them); else
    InvalidInput (exit 2) saying what was expected, before anything is read or written."""
    folder = existing_dir(path, "results folder")
    for _dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        if any(f in filenames for f in RUN_FILES):
            return folder
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    raise InvalidInput(f"{path}: no sambench runs in this folder (no run folder with config.json or "
                       f"result.json below it); give the --out folder of `sambench run` (e.g. results), "
                       f"a suite's folder (results/demo) or one run's folder")
