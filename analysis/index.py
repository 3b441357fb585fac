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
    step (types, column order, labels). The rows of runs that did not change are taken as
    ``load_run`` gave them (stored as JSON), so the frame is the one a collect from the files builds.
    """
    if not enabled() or not run_dirs or (root / "config.json").is_file():
        return None
    groups: dict[Path, list[Path]] = {}
    for d in run_dirs:
        groups.setdefault(d.parent, []).append(d)
    code = fingerprint()
    sigs = {str(d): signature(str(d)) for d in run_dirs}
    raw: dict[str, tuple[str, dict]] = {}   # reused run -> (its row as read, JSON; its list values)
    fresh, complete, said = [], True, {}
    for parent, dirs in groups.items():
        stored = Stored.open(parent, code)
        keep, missing, same = stored.compare(dirs, sigs, said) if stored else ([], list(dirs), False)
        complete = complete and same
        if same and len(groups) == 1 and stored.meta.get("labels_for") == str(root):
            frame = stored.frame()
            if frame is not None:
                skipped += [s for d in run_dirs for s in said.get(d.name, [])]
                return frame  # nothing changed: the stored frame as it is
        if keep:
            raw.update(stored.rows(keep))
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
            text, lists = raw[d.name]
            row = _decode_row(json.loads(text), lists)
            row["path"] = str(d)  # (where the run is now)
        if row is not None:
            records.append(row)
    out = finish(pd.DataFrame.from_records(records))
    if not complete or fresh:
        texts = {name: text for name, (text, _) in raw.items()}
        texts.update((name, json.dumps(_encode_row(row))) for name, row in rows_of.items())
        for parent, dirs in groups.items():
            try:
                _write(parent, out, texts, dirs, sigs, said, code, str(root))
            except Exception:  # noqa: BLE001 -- a cell Arrow cannot hold: no index, the frame stands
                pass
    return out


# --- the file ------------------------------------------------------------------------------------------

class Stored:
    """A suite folder's index file, read column by column as needed."""

    def __init__(self, parent: Path, file, meta: dict):
        self.parent, self.file, self.meta = parent, file, meta
        head = file.read(columns=[_KEY, _SIG, _SKIPPED]).to_pydict()
        self.names, self.sigs, self.skipped = head[_KEY], head[_SIG], head[_SKIPPED]

    @classmethod
    def open(cls, parent: Path, code: str) -> Stored | None:
        """The index of ``parent``, or None: absent, unreadable, made by other code."""
        import pyarrow.parquet as pq

        try:
            file = pq.ParquetFile(parent / NAME)
            meta = json.loads((file.schema_arrow.metadata or {}).get(b"sambench", b"{}"))
            return cls(parent, file, meta) if meta.get("fingerprint") == code else None
        except Exception:  # noqa: BLE001 -- missing, truncated, not Parquet: rebuilt
            return None

    def compare(self, dirs: list[Path], sigs: dict, said: dict[str, list]) -> tuple[list[int], list[Path], bool]:
        """(positions of the stored rows of ``dirs`` whose signature is unchanged, the dirs to read
        again, whether nothing changed); ``said`` receives, by run, the unreadable files of the
        reused runs (still unreadable, still said)."""
        by_name = {name: i for i, name in enumerate(self.names)}
        no_row = self.meta.get("no_row", {})
        keep, missing, found = [], [], 0
        for d in dirs:
            i, sig = by_name.get(d.name), sigs[str(d)]
            if i is not None and self.sigs[i] == sig:
                keep.append(i)
                if self.skipped[i]:
                    said[d.name] = self._here(json.loads(self.skipped[i]))
            elif d.name in no_row and no_row[d.name][0] == sig:
                said[d.name] = self._here(no_row[d.name][1])
                found += 1
            else:
                missing.append(d)
        return keep, missing, not missing and len(keep) == len(self.names) and found == len(no_row)

    def _here(self, entries: list[dict]) -> list[dict]:
        """Skipped files as stored (relative to the suite folder) where they are now."""
        return [{**e, "path": os.path.join(self.parent, e["path"])} for e in entries]

    def rows(self, keep: list[int]) -> dict[str, tuple[str, dict]]:
        """run name -> (its row as read, JSON; its list values, from the frame's columns) for the stored
        positions ``keep``. (A row's lists, norm_gamma, are stored once, in the frame.)"""
        names = self.file.schema_arrow.names
        listed = [c for c in self.meta.get("row_lists", []) if c in names]
        table = self.file.read(columns=[_RAW, *listed])
        texts = table.column(_RAW).to_pylist()
        values = {c: table.column(c).to_pylist() for c in listed}
        as_json = set(self.meta.get("json_columns", []))
        out = {}
        for i in keep:
            lists = {c: (_decode_cell(json.loads(v[i])) if c in as_json else v[i]) for c, v in values.items()}
            out[self.names[i]] = (texts[i], lists)
        return out

    def frame(self) -> pd.DataFrame | None:
        """The stored collected frame (runs where they are now), or None if a cell does not decode."""
        columns = [c for c in self.file.schema_arrow.names if c not in (_KEY, _SIG, _SKIPPED, _RAW)]
        try:
            df = self.file.read(columns=columns).to_pandas()
            for c in self.meta.get("json_columns", []):
                memo: dict[str, object] = {}
                df[c] = pd.Series([memo[v] if v in memo else memo.setdefault(v, _decode_cell(json.loads(v)))
                                   for v in df[c].tolist()], index=df.index, dtype=object)
            for c in self.meta.get("list_columns", []):
                df[c] = pd.Series([None if v is None else [float(x) for x in v] for v in df[c].tolist()],
                                  index=df.index, dtype=object)
        except Exception:  # noqa: BLE001
            return None
        if "path" in df.columns:  # where the runs are now (the folder may have moved)
            df["path"] = [os.path.join(self.parent, name) for name in self.names]
        df.attrs["config_columns"] = self.meta.get("config_columns", [])
        return df


def _write(parent: Path, df: pd.DataFrame, texts: dict[str, str], dirs: list[Path], sigs: dict,
           said: dict[str, list], code: str, labels_for: str) -> None:
    """Store the rows of ``dirs`` (a suite folder's runs): the collected frame's and, for an
    incremental rebuild, the rows as read (``texts``, JSON), with the runs that gave no row (in
    the metadata, with their unreadable files); atomically. A folder that cannot be written is
    left as it is."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = {str(d): d.name for d in dirs}
    part = df[df["path"].isin(names)] if "path" in df.columns else df.iloc[0:0]
    keys = [names[p] for p in part["path"].tolist()] if "path" in part.columns else []
    here = {d.name for d in dirs}
    said = {name: [{**e, "path": os.path.relpath(e["path"], parent)} for e in found]
            for name, found in said.items() if found and name in here}
    written = set(keys)
    no_row = {d.name: [sigs[str(d)], said.get(d.name, [])] for d in dirs if d.name not in written}
    columns, json_columns, list_columns = {}, [], []
    for c in part.columns:
        columns[c], kind = _column(part[c])
        if kind == "json":
            json_columns.append(c)
        elif kind == "list":
            list_columns.append(c)
    columns[_KEY] = pa.array(keys, type=pa.string())
    columns[_SIG] = pa.array([sigs[os.path.join(parent, n)] for n in keys], type=pa.string())
    columns[_SKIPPED] = pa.array([json.dumps(said[n]) if said.get(n) else "" for n in keys], type=pa.string())
    columns[_RAW] = pa.array([texts[n] for n in keys], type=pa.string())
    row_lists = [c for c in part.columns if part[c].dtype == object and any(type(v) is list for v in part[c].tolist())]
    meta = {"fingerprint": code, "json_columns": json_columns, "list_columns": list_columns, "row_lists": row_lists,
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
    memo: dict = {}
    out = []
    for v in values:
        try:
            text = memo.get((type(v), v))
            if text is None:
                text = memo[(type(v), v)] = json.dumps(_encode_cell(v))
        except TypeError:  # unhashable (a list): not remembered
            text = json.dumps(_encode_cell(v))
        out.append(text)
    return pa.array(out, type=pa.string()), "json"


# A row of collect holds scalars, tuples (of scalars or tuples: loading._flatten) and lists
# (norm_gamma); JSON keeps a tuple as {"t": [...]} so it comes back a tuple.

def _encode_cell(v):
    if isinstance(v, tuple):
        return {"t": [{"t": list(x)} if isinstance(x, tuple) else x for x in v]}
    return v


def _decode_cell(v):
    if isinstance(v, dict) and "t" in v:
        return tuple(tuple(x["t"]) if isinstance(x, dict) and "t" in x else x for x in v["t"])
    return v


_LISTED = {"l": 1}   # in a stored row: a list value, kept in the frame's column (norm_gamma: no second copy)


def _encode_row(row: dict) -> dict:
    return {k: _encode_cell(v) if isinstance(v, tuple) else _LISTED if type(v) is list else v for k, v in row.items()}


def _decode_row(row: dict, lists: dict) -> dict:
    return {k: (lists[k] if v == _LISTED else _decode_cell(v)) if isinstance(v, dict) else v for k, v in row.items()}
