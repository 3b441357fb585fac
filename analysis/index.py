"""The results index: one Parquet file per suite folder, ``<suite>/.sambench-index.parquet``.

It holds the rows :func:`analysis.collect` built from that folder's runs, each with the signature
of the run's files (inode, size and modification time in ns of config.json, result.json and
metrics.jsonl). The next collect stats every run (three stats, no JSON read) and reads again only
the runs whose signature changed; runs gone from the folder are dropped, new ones added. The file
is rewritten (atomically) when something changed, so it is rebuilt incrementally by every
collect, table, plot and report. Signatures are compared for equality, never by age, so clock
skew between hosts (an mtime in the future or the past) cannot hide a change; every sambench write
is a rename (a new inode), and an edit in place changes the size or the time.

The labels (``method``, ``setting``, ...) depend on every run of the collected folder; they are
stored with the folder they were computed for, and when that folder is collected again with nothing
changed, the stored frame is the answer as it is.

Without pyarrow, or where the folder cannot be written, collect reads every run as before (and
says nothing). ``SAMBENCH_NO_INDEX=1`` turns the index off. The index is a cache: deleting it
loses nothing. Files only: no torch, no bench.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd

NAME = ".sambench-index.parquet"
FORMAT = 1
FILES = ("config.json", "result.json", "metrics.jsonl")
LABELS = ("baseline", "variant_label", "method", "mask_label", "setting")
_KEY, _SIG, _SKIPPED, _RAW = "_index_run", "_index_sig", "_index_skipped", "_index_row"
_SOURCES = ("loading.py", "labels.py", "index.py")


def enabled() -> bool:
    if os.environ.get("SAMBENCH_NO_INDEX") == "1":
        return False
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def fingerprint() -> str:
    """The code that makes the rows (a change to it is a full rebuild) and the versions that store them."""
    import pyarrow

    h = hashlib.sha256(f"{FORMAT} pandas {pd.__version__} pyarrow {pyarrow.__version__}".encode())
    here = Path(__file__).resolve().parent
    for name in _SOURCES:
        with contextlib.suppress(OSError):
            h.update((here / name).read_bytes())
    return h.hexdigest()[:24]


def signature(run_dir: str) -> str:
    """``ino:size:mtime_ns`` of each of FILES (``-`` when absent), joined by ``/``."""
    parts = []
    for name in FILES:
        try:
            st = os.stat(os.path.join(run_dir, name))
            parts.append(f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append("-")
    return "/".join(parts)


# --- the collect hook ----------------------------------------------------------------------------

def collect(root: Path, run_dirs: list[Path], skipped: list, load_run: Callable[[Path, list], dict | None],
            finish: Callable[[pd.DataFrame], pd.DataFrame]) -> pd.DataFrame | None:
    """The frame of ``run_dirs`` from their suite folders' indexes, reading only what changed, or None
    when the index does not apply (off, no pyarrow, a run folder collected alone).

    ``load_run(run_dir, skipped)`` is loading's row of one run; ``finish(frame)`` its whole-frame
    step (types, column order, labels), which must give the same frame from rows it made itself.
    Each stored row remembers which columns its run had, so a frame of reused and fresh rows has
    the columns a frame read from the files would have.
    """
    if not enabled() or not run_dirs or (root / "config.json").is_file():
        return None
    groups: dict[Path, list[Path]] = {}
    for d in run_dirs:
        groups.setdefault(d.parent, []).append(d)
    code = fingerprint()
    sigs = {d: signature(str(d)) for d in run_dirs}
    raw: dict[str, str] = {}    # run name -> its row as collect read it (JSON), for the reused runs
    fresh, complete, said = [], True, {}
    for parent, dirs in groups.items():
        stored = _read(parent, code)
        rows, missing, same = _reusable(stored, dirs, sigs, said)
        complete = complete and same
        if same and len(groups) == 1 and stored.attrs.get("labels_for") == str(root):
            skipped += [s for d in run_dirs for s in said.get(d.name, [])]
            return _as_collected(stored)  # nothing changed: the stored frame as it is
        if rows is not None:
            raw.update(zip(rows[_KEY].tolist(), rows[_RAW].tolist()))
        fresh += missing
    rows_of: dict[str, dict] = {}
    for d in fresh:
        row = load_run(d, said.setdefault(d.name, []))
        if row is not None:
            rows_of[d.name] = row
    skipped += [s for d in run_dirs for s in said.get(d.name, [])]
    records = []
    for d in run_dirs:  # in the order of the run folders, as a collect from the files builds them
        row = rows_of.get(d.name)
        if row is None and d.name in raw:
            row = _decode(json.loads(raw[d.name]))
            row["path"] = str(d)  # (where the run is now)
            rows_of[d.name] = row
        if row is not None:
            records.append(row)
    out = finish(pd.DataFrame.from_records(records))
    if not complete or fresh:
        for parent, dirs in groups.items():
            try:
                _write(parent, out, rows_of, dirs, sigs, said, code, str(root))
            except Exception:  # noqa: BLE001 -- a cell Arrow cannot hold: no index, the frame stands
                pass
    return out


def _reusable(stored: pd.DataFrame | None, dirs: list[Path], sigs: dict, said: dict[str, list]):
    """(rows of ``dirs`` whose signature is unchanged, the dirs to read again, whether all are
    unchanged); ``said`` receives, by run, the unreadable files of the reused runs."""
    if stored is None:
        return None, list(dirs), False
    by_name = {name: (sig, i) for i, (name, sig) in enumerate(zip(stored[_KEY], stored[_SIG]))}
    no_row = stored.attrs.get("no_row", {})
    keep, missing, found = [], [], 0
    for d in dirs:
        hit = by_name.get(d.name)
        if hit is not None and hit[0] == sigs[d]:
            keep.append(hit[1])
        elif d.name in no_row and no_row[d.name][0] == sigs[d]:
            said[d.name] = list(no_row[d.name][1])  # still unreadable, still said
            found += 1
        else:
            missing.append(d)
    same = not missing and len(keep) == len(stored) and found == len(no_row)
    names, texts = stored[_KEY].tolist(), stored[_SKIPPED].tolist()
    for i in keep:  # files those runs had that could not be read: still unreadable, still said
        if isinstance(texts[i], str) and texts[i]:
            said[names[i]] = json.loads(texts[i])
    return stored.iloc[keep], missing, same


def _as_collected(stored: pd.DataFrame) -> pd.DataFrame:
    df = stored.drop(columns=[_KEY, _SIG, _SKIPPED, _RAW]).reset_index(drop=True)
    df.attrs["config_columns"] = stored.attrs.get("config_columns", [])
    return df


# --- the file ------------------------------------------------------------------------------------------

def _read(parent: Path, code: str) -> pd.DataFrame | None:
    """The stored frame of a suite folder (decoded), or None: absent, unreadable, another code."""
    import pyarrow.parquet as pq

    path = parent / NAME
    try:
        table = pq.read_table(path)
    except Exception:  # noqa: BLE001 -- missing, truncated, not Parquet: rebuilt
        return None
    meta = json.loads((table.schema.metadata or {}).get(b"sambench", b"{}"))
    if meta.get("fingerprint") != code:
        return None
    try:
        return _decoded(table.to_pandas(), meta, parent)
    except Exception:  # noqa: BLE001 -- a cell that does not decode: rebuilt
        return None


def _decoded(df: pd.DataFrame, meta: dict, parent: Path) -> pd.DataFrame:
    for c in meta.get("json_columns", []):
        df[c] = pd.Series([_decode(json.loads(v)) for v in df[c].tolist()], index=df.index, dtype=object)
    for c in meta.get("list_columns", []):
        df[c] = pd.Series([None if v is None else [float(x) for x in v] for v in df[c].tolist()], index=df.index,
                          dtype=object)
    if "path" in df.columns:  # where the runs are now (the folder may have moved)
        df["path"] = [str(parent / name) for name in df[_KEY]]
    df.attrs["config_columns"] = meta.get("config_columns", [])
    df.attrs["labels_for"] = meta.get("labels_for")
    df.attrs["no_row"] = meta.get("no_row", {})   # runs that gave no row: {name: [signature, skipped]}
    return df


def _write(parent: Path, df: pd.DataFrame, rows_of: dict[str, dict], dirs: list[Path], sigs: dict,
           said: dict[str, list], code: str, labels_for: str) -> None:
    """Store the rows of ``dirs`` (a suite folder's runs): the collected frame's and, for an
    incremental rebuild, the rows as read (``rows_of``), with the runs that gave no row (in the
    metadata, with their skipped files); atomically. A folder that cannot be written is left as it is."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = {str(d): d.name for d in dirs}
    part = df[df["path"].isin(names)].copy() if "path" in df.columns else df.iloc[0:0].copy()
    part[_KEY] = [names[p] for p in part["path"]]
    part[_RAW] = [json.dumps(_encode(rows_of[n])) for n in part[_KEY]]
    by_dir = {name: found for name, found in said.items() if found}   # run -> its unreadable files
    written = set(part[_KEY])
    no_row = {d.name: [sigs[d], by_dir.get(d.name, [])] for d in dirs if d.name not in written}
    part[_SIG] = [sigs[parent / name] for name in part[_KEY]]
    part[_SKIPPED] = [json.dumps(by_dir[name]) if name in by_dir else "" for name in part[_KEY]]
    columns, json_columns, list_columns = {}, [], []
    for c in part.columns:
        columns[c], kind = _column(part[c])
        if kind == "json":
            json_columns.append(c)
        elif kind == "list":
            list_columns.append(c)
    meta = {"fingerprint": code, "json_columns": json_columns, "list_columns": list_columns,
            "config_columns": df.attrs.get("config_columns", []), "labels_for": labels_for, "no_row": no_row}
    table = pa.table(columns).replace_schema_metadata({"sambench": json.dumps(meta)})
    tmp = parent / f".{NAME}.{os.getpid()}.tmp"
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, parent / NAME)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _column(series: pd.Series):
    """(an Arrow array, how it was stored: native | json | list) holding the column exactly."""
    import pyarrow as pa

    if series.dtype != object:
        return pa.Array.from_pandas(series), "native"
    values = series.tolist()
    if all(v is None or (type(v) is list and all(type(x) is float for x in v)) for v in values):
        return pa.array(values, type=pa.list_(pa.float64())), "list"   # norm_gamma: lists of floats
    return pa.array([json.dumps(_encode(v)) for v in values], type=pa.string()), "json"


def _encode(v):
    """JSON for a cell, tuples told from lists (``{"t": [...]}``)."""
    if isinstance(v, tuple):
        return {"t": [_encode(x) for x in v]}
    if isinstance(v, list):
        return [_encode(x) for x in v]
    if isinstance(v, dict):
        return {"d": {k: _encode(x) for k, x in v.items()}}
    return v


def _decode(v):
    if isinstance(v, dict):
        return tuple(_decode(x) for x in v["t"]) if "t" in v else {k: _decode(x) for k, x in v["d"].items()}
    if isinstance(v, list):
        return [_decode(x) for x in v]
    return v
