"""Files a run writes: atomic JSON (temp file + rename), JSON lines, checkpoints."""
from __future__ import annotations

import errno
import itertools
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def _clean(obj: Any) -> Any:
    """Strict JSON: non-finite floats become null, keys strings, tuples lists."""
    kind = type(obj)
    if kind is str or kind is int or kind is bool or obj is None:
        return obj
    if kind is float:
        return obj if math.isfinite(obj) else None
    if isinstance(obj, float):  # a float subclass (numpy.float64)
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k if type(k) is str else str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def dumps(obj: Any, **kw: Any) -> str:
    return json.dumps(_clean(obj), allow_nan=False, **kw)


_TMP_TOKEN = os.urandom(4).hex()      # temporary names: this process's token and a counter
_tmp_counter = itertools.count()


def _create_temp(folder: Path, name: str) -> tuple[int, str]:
    """A new file beside ``name`` (mode 0600, like tempfile.mkstemp), cheaper than mkstemp."""
    while True:
        tmp = os.path.join(folder, f".{name}.{_TMP_TOKEN}{next(_tmp_counter)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), tmp
        except FileExistsError:  # a forked copy of this process took the name
            continue


def atomic_write_bytes(path: str | Path, data: bytes, sync: bool = True) -> None:
    """Write through a temporary file renamed over ``path``: readers see the old or the new
    content, never a part. ``sync``: the data reaches the disk before the rename (fsync);
    a caller writing many files passes False and calls :func:`sync_all` once after them."""
    path = Path(path)
    fd, tmp = _create_temp(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise DiskFull(exc.errno, f"{exc.strerror}: could not write {path} ({len(data):,} bytes); "
                                      f"the previous {path.name}, if any, is unchanged") from None
        raise


class DiskFull(OSError):
    """A file could not be written for want of space or quota (ENOSPC, EDQUOT, EFBIG); names the file."""


def write_json(path: str | Path, obj: Any, sync: bool = True, indent: int | None = 2) -> None:
    """Sorted keys, strict JSON; ``indent=None``: one line (much faster to write)."""
    atomic_write_bytes(path, (dumps(obj, indent=indent, sort_keys=True) + "\n").encode(), sync=sync)


def write_json_many(items: Iterable[tuple[Path, Any]], indent: int | None = 2, sync: bool = True) -> int:
    """Write many JSON files atomically (as :func:`write_json`), then bring them all to disk
    with one :func:`sync_all` instead of one fsync each (thousands of run folders at a
    submission; ``sync=False``: the caller syncs once after several calls). Returns the number
    of files written."""
    n = 0
    for path, obj in items:
        write_json(path, obj, sync=False, indent=indent)
        n += 1
    if n and sync:
        sync_all()
    return n


def sync_all() -> None:
    """Flush written files (data, and the renames that put them in place) to disk."""
    os.sync()


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    atomic_write_bytes(path, "".join(dumps(r, sort_keys=True) + "\n" for r in rows).encode())


def read_jsonl(path: str | Path) -> list[dict]:
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut by a kill: everything after it is unusable
    return rows


def save_checkpoint(path: str | Path, state: dict) -> None:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


class CheckpointError(OSError):
    """A checkpoint file that cannot be read (truncated, not a checkpoint); names the file."""


def load_checkpoint(path: str | Path) -> dict:
    """``torch.load(weights_only=True)`` on CPU; an unreadable file raises CheckpointError naming it."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"{path} is unreadable (truncated or not a checkpoint: "
                              f"{type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a sambench checkpoint (a {type(state).__name__})")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a sambench checkpoint (no {', '.join(missing)})")
    return state


CHECKPOINT_KEYS = ("run_id", "epoch", "model", "optimizer")
