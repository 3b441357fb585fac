"""The run-folder rule, in one place: who owns a folder, its lock, its result, its state.

A run folder ``<out>/<suite>/<run_id>/`` holds config.json (``{"run_id", "suite",
"config", "variant_options"}``), metrics.jsonl, checkpoint.pt and, once finished,
result.json. The rule:

- **Owner.** A folder belongs to the run named by its config.json (else its result.json).
  Training a run in a folder that holds another run is refused (:class:`ForeignRunDir`,
  exit 2) before anything in it is touched.
- **Lock.** ``.lock`` is flock-ed by the one process training the run; the kernel releases
  it when that process dies, so a stale lock cannot exist. It excludes processes on one host
  and, where the file system carries flock across hosts (local disks, NFSv4, NFSv3 with lockd,
  GPFS, Lustre mounted with ``-o flock``), on every host; a file system that refuses flock is an
  error (:class:`LockUnsupported`), never a silent "not locked".
- **Result.** result.json is written atomically. It is *final* (``done``/``diverged``:
  never trained again), *failed* (retried: removed when the run is taken up again), or
  *corrupt* (empty, truncated, binary, or JSON that is not an object with a status): it is
  kept, renamed ``result.json.corrupt`` (``-2``, ``-3``... if taken), and the run is redone.
  Whether a result belongs to the current submission is read from the ``submission`` it
  records, never from file times.
- **Failure.** A failed result.json has one schema (:func:`bench.failures.failure`) and one writer
  (:func:`write_failure`, :func:`record_failure`): the training process, the launcher of a run's
  processes, the job and each SLURM task's guard all report through it, and the reports of one
  failure are joined (:func:`bench.failures.merge_failure`).
- **State** (:func:`run_state`): done | diverged | failed | corrupt | running | resume | new.
- **Writers.** This module alone writes config.json (:func:`write_config`, :func:`write_configs`)
  and the result of a run that trained (:func:`write_result`); the engine, the runner and the
  command line call these.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import io
from bench.errors import InvalidInput
from bench.failures import (  # noqa: F401 -- the failure schema, re-exported with its writers
    FAILURE_FIELDS,
    FAILURE_KINDS,
    FAILURE_SCHEMA,
    TRACEBACK_CHARS,
    failure,
    failure_env,
    failure_from_exception,
    merge_failure,
    signal_name,
)

FINAL = ("done", "diverged")
STATES = ("done", "diverged", "failed", "corrupt", "resume", "new", "running")
TO_SUBMIT = ("failed", "corrupt", "resume", "new")


class RunLocked(RuntimeError):
    """Another process is training this run right now."""


class ForeignRunDir(InvalidInput):
    """The folder holds another run (or files that are not a run's): refused, nothing touched."""


# --- the lock --------------------------------------------------------------------------------------

class LockUnsupported(InvalidInput):
    """The results folder's file system refuses flock (e.g. Lustre without ``-o flock``)."""


@contextlib.contextmanager
def run_lock(run_dir: Path, wait_s: float = 0.0):
    """An exclusive lock on the run folder (``flock`` on ``.lock``; the kernel releases it when the
    process dies). Non-blocking, or waiting up to ``wait_s``; RunLocked if another process holds
    it. The file names the holder (pid, host, user, time) for messages. A lock file another user
    created (read-only for us) is locked all the same: flock needs no write permission."""
    path = run_dir / ".lock"
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o664)
        writable = True
    except PermissionError:
        fd, writable = os.open(path, os.O_RDONLY), False
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RunLocked(f"{run_dir} is being trained by another process ({holder(run_dir)})") from None
                time.sleep(0.05)
            except OSError as exc:
                if exc.errno in (errno.ENOLCK, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise LockUnsupported(
                        f"{run_dir}: the file system refuses locks (flock: {exc.strerror}); sambench needs "
                        f"them to train each run once (on Lustre mount with -o flock; on NFS do not use "
                        f"nolock), or put the results on another file system") from None
                raise
        if writable:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()} {os.getuid()} {time.time():.0f}\n".encode())
        yield
    finally:
        os.close(fd)


def holder(run_dir: Path) -> str:
    """Who the ``.lock`` file says holds the lock (``pid 12 on host h``), for messages."""
    try:
        parts = (run_dir / ".lock").read_text().split()
    except (OSError, UnicodeDecodeError):
        parts = []
    return f"pid {parts[0]} on host {parts[1]}" if len(parts) >= 2 else "holder unknown"


def lock_held(run_dir: Path) -> bool:
    """Whether another live process holds the run's ``.lock`` (probe without creating it)."""
    try:
        fd = os.open(run_dir / ".lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing releases our probe lock at once
    return False


# --- result.json -----------------------------------------------------------------------------------

@dataclass
class Result:
    """What result.json holds: ``kind`` is absent | final | failed | corrupt."""

    kind: str
    data: dict | None = None      # the parsed object (final, failed)
    problem: str | None = None    # why it is corrupt

    @property
    def status(self) -> str | None:
        return None if self.data is None else self.data.get("status")


def read_result(run_dir: Path) -> Result:
    """Classify result.json; never raises."""
    path = run_dir / "result.json"
    try:
        data = io.read_json(path)
    except FileNotFoundError:
        return Result("absent")
    except (OSError, ValueError) as exc:  # empty, truncated, binary (UnicodeDecodeError), a folder
        return Result("corrupt", problem=f"not JSON ({type(exc).__name__}: {str(exc)[:80]})")
    if not isinstance(data, dict):
        return Result("corrupt", problem=f"JSON {type(data).__name__}, not an object")
    status = data.get("status")
    if status in FINAL:
        return Result("final", data)
    if status == "failed":
        return Result("failed", data)
    return Result("corrupt", problem=f"status {status!r} is not done, diverged or failed")


def move_aside(path: Path) -> Path:
    """Rename ``path`` to ``<name>.corrupt`` (or ``.corrupt-2``, ...); return the new path."""
    for n in range(1, 10_000):
        target = path.with_name(f"{path.name}.corrupt" + (f"-{n}" if n > 1 else ""))
        if not target.exists():
            os.replace(path, target)
            return target
    raise OSError(f"{path}: too many corrupt copies beside it")


def handled(run_dir: Path, submission: str | None) -> bool:
    """The run has a result of this submission (it was handled before a requeue, or by another job)."""
    done = read_result(run_dir)
    return submission is not None and done.data is not None and done.data.get("submission") == submission


def take_up(run_dir: Path) -> tuple[dict | None, str | None]:
    """Before (re)training a run, holding its lock: ``(final result, None)`` if it is finished;
    otherwise clear the way and return ``(None, note)``: a failed result is removed, a corrupt
    one kept under another name (``note`` says which)."""
    result = read_result(run_dir)
    if result.kind == "final":
        return result.data, None
    if result.kind == "failed":
        (run_dir / "result.json").unlink()
    elif result.kind == "corrupt":
        kept = move_aside(run_dir / "result.json")
        return None, f"result.json was corrupt ({result.problem}): kept as {kept.name}, run redone"
    return None, None


# --- failed results: one schema, one writer -------------------------------------------------------

LOCK_WAIT_S = 20.0            # a failure report waits this long for a live writer's lock, then writes anyway


def write_failure(run_dir: Path, record: dict) -> dict | None:
    """Write a failure record as result.json, the caller holding the run's lock: never over a final
    result; joined to a failed one of the same submission (:func:`merge_failure`). Returns what
    was written, or None (a final result is there)."""
    old = read_result(run_dir)
    if old.kind == "final":
        return None
    doc = merge_failure(old.data if old.kind == "failed" else None, record)
    if doc.get("epochs") is None:
        doc["epochs"] = resume_epoch(run_dir)
    try:
        io.write_json(run_dir / "result.json", doc)
    except OSError as exc:  # a full disk or quota: say so; the run stays to resume from its checkpoint
        print(f"[sambench] could not record the failure in {run_dir / 'result.json'} ({exc}); the run "
              f"stays unfinished and resumes from its last checkpoint", file=sys.stderr, flush=True)
        return None
    return doc


def resume_epoch(run_dir: Path) -> int:
    """The epochs a resume starts after: checkpoint.pt's (its tensors mapped, not read), else 0."""
    path = run_dir / "checkpoint.pt"
    if not path.exists():
        return 0
    try:
        import torch

        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception:  # noqa: BLE001 -- unreadable: the resume will say so and start over
        return 0


def record_failure(run_dir: Path, record: dict, wait_s: float = LOCK_WAIT_S) -> dict | None:
    """Record a failure from outside the training process (a launcher, a job, a guard): take the
    run's lock (waiting up to ``wait_s`` for a process still writing its own report, then writing
    anyway: the write is atomic), and not in a folder a readable config.json gives to another run.
    Returns what was written, or None."""
    try:
        held = owner(run_dir)
    except ForeignRunDir:
        held = None  # unreadable files: the failure is worth recording beside them
    if held not in (record.get("run_id"), None) or not run_dir.is_dir():
        return None
    try:
        with run_lock(run_dir, wait_s=wait_s):
            return write_failure(run_dir, record)
    except RunLocked:
        return write_failure(run_dir, record)


# --- config.json and the finished result.json: their one writer --------------------------------------

def config_doc(rid: str, suite: str | None, cfg: dict, variant_options: dict) -> dict:
    """What config.json holds: the run id, the suite, the resolved config and the variant's every option."""
    return {"run_id": rid, "suite": suite, "config": cfg, "variant_options": variant_options}


def write_config(run_dir: Path, rid: str, suite: str | None, cfg: dict, variant_options: dict,
                 keep: bool = False) -> None:
    """Write config.json (atomically); ``keep``: not over one already there (it names this run then:
    :func:`check_owner`)."""
    path = run_dir / "config.json"
    if not (keep and path.exists()):
        io.write_json(path, config_doc(rid, suite, cfg, variant_options))


def write_configs(items) -> int:
    """config.json of many folders at a submission, ``items`` = (run_dir, rid, suite, cfg, variant
    options); one sync for all of them. Returns how many were written."""
    return io.write_json_many((run_dir / "config.json", config_doc(rid, suite, cfg, options))
                              for run_dir, rid, suite, cfg, options in items)


def write_result(run_dir: Path, result: dict, sync: bool = True) -> None:
    """result.json of a run that trained (done or diverged; a sharpness block added later), atomically
    (``sync=False``: not brought to disk at once, for many synthetic folders: bench.perf.scale)."""
    if result.get("status") not in FINAL:
        raise ValueError(f"write_result writes finished results, not status {result.get('status')!r}")
    io.write_json(run_dir / "result.json", result, sync=sync)


# --- the owner ----------------------------------------------------------------------------------

def owner(run_dir: Path) -> str | None:
    """The run id config.json names (else result.json, else checkpoint.pt), or None for a
    folder without them; raise ForeignRunDir when the files cannot be a run's."""
    path = run_dir / "config.json"
    try:
        doc = io.read_json(path)
    except FileNotFoundError:
        doc = None
    except (OSError, ValueError) as exc:
        raise ForeignRunDir(f"{path} is unreadable ({type(exc).__name__}), so it is unclear which run "
                            f"this folder holds; use another folder") from None
    if doc is not None:
        if not isinstance(doc, dict) or not isinstance(doc.get("run_id"), str):
            raise ForeignRunDir(f"{path} is not a sambench run config; use another folder")
        return doc["run_id"]
    result = read_result(run_dir)
    if result.data is not None and isinstance(result.data.get("run_id"), str):
        return result.data["run_id"]
    if result.kind == "corrupt":
        raise ForeignRunDir(f"{run_dir / 'result.json'} is unreadable and there is no config.json, so it "
                            f"is unclear which run this folder holds; use another folder")
    if (run_dir / "checkpoint.pt").exists():
        try:
            held = io.load_checkpoint(run_dir / "checkpoint.pt").get("run_id")
        except OSError as exc:
            raise ForeignRunDir(f"{exc}; with no config.json it is unclear which run this folder holds: "
                                f"use another folder") from None
        return held if isinstance(held, str) else None
    return None


def check_owner(run_dir: Path, rid: str) -> None:
    """Refuse (ForeignRunDir) a folder that holds another run; touch nothing."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ForeignRunDir(f"{run_dir} is a file, not a run folder")
    if not run_dir.is_dir():
        return
    held = owner(run_dir)
    if held is not None and held != rid:
        raise ForeignRunDir(f"{run_dir} holds run {held}, not {rid}: use another folder "
                            f"(nothing in it was changed)")


# --- job.json (written at submission) ---------------------------------------------------------------

def read_job(run_dir: Path) -> dict | None:
    try:
        info = io.read_json(run_dir / "job.json")
        return info if isinstance(info, dict) else None
    except (OSError, ValueError):
        return None


# --- state ------------------------------------------------------------------------------------------

@dataclass
class RunState:
    rid: str
    cfg: dict
    dir: Path
    state: str                      # one of STATES
    result: Result | None = None


def run_state(rid: str, cfg: dict, run_dir: Path, job_alive: Callable[[dict | None], bool],
              exists: bool | None = None, result: Result | None = None) -> RunState:
    """Where a run stands. ``job_alive(job.json content)`` says whether a job recorded for it
    may still train it (a queued SLURM task, a live local worker). ``exists`` and ``result``: what
    the caller already knows (a directory listing, :class:`ResultCache`)."""
    if not (run_dir.is_dir() if exists is None else exists):
        return RunState(rid, cfg, run_dir, "new")
    result = read_result(run_dir) if result is None else result
    if result.kind == "final":
        return RunState(rid, cfg, run_dir, result.status, result)
    if lock_held(run_dir) or job_alive(read_job(run_dir)):
        return RunState(rid, cfg, run_dir, "running", result)
    if result.kind in ("failed", "corrupt"):
        return RunState(rid, cfg, run_dir, result.kind, result)
    if (run_dir / "checkpoint.pt").exists() or io.read_jsonl(run_dir / "metrics.jsonl"):
        return RunState(rid, cfg, run_dir, "resume", result)
    return RunState(rid, cfg, run_dir, "new", result)


def run_states(root: Path, runs: list[tuple[str, dict]], job_alive: Callable[[dict | None], bool],
               save: bool = True) -> list[RunState]:
    """:func:`run_state` of each ``(run id, config)`` under ``root``, from one listing of ``root``
    and the :class:`ResultCache` of its finished runs (a suite of 100,000 finished runs: one
    stat each, no JSON read), kept up to date when ``save``."""
    try:
        with os.scandir(root) as entries:
            present = {e.name for e in entries if e.is_dir()}
    except OSError:
        present = set()
    cache = ResultCache(root, present)
    states = [run_state(rid, cfg, root / rid, job_alive, exists=rid in present,
                        result=cache.read(rid) if rid in present else None) for rid, cfg in runs]
    if save:
        cache.save()
    return states


class ResultCache:
    """``<suite folder>/.sambench-states.json``: the status (and the few fields the runner reads) of
    each finished run's result.json, keyed by that file's (inode, size, mtime in ns). A result.json
    replaced (every write is a rename: a new inode) or edited is read again; the times are compared
    for equality only, so clock skew between hosts cannot hide a change. A file written less than
    ``FRESH_S`` ago is not cached yet. Unwritable folders are simply read every time."""

    NAME = ".sambench-states.json"
    FORMAT = 1
    KEYS = ("status", "sharpness", "sharpness_error")
    FRESH_S = 2.0

    def __init__(self, root: Path, present: set[str]):
        self.root, self._root, self.changed = root, os.fspath(root), False
        try:
            doc = io.read_json(root / self.NAME)
            entries = doc["entries"] if doc.get("format") == self.FORMAT else {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            entries = {}
        self.entries = {k: v for k, v in entries.items() if k in present} if isinstance(entries, dict) else {}
        self.changed = len(self.entries) != (len(entries) if isinstance(entries, dict) else 0)

    def read(self, name: str) -> Result:
        try:
            st = os.stat(os.path.join(self._root, name, "result.json"))
        except FileNotFoundError:
            return Result("absent")
        except OSError:
            return read_result(self.root / name)
        sig = [st.st_ino, st.st_size, st.st_mtime_ns]
        hit = self.entries.get(name)
        if isinstance(hit, list) and len(hit) == 4 and hit[:3] == sig and isinstance(hit[3], dict):
            return Result("final", hit[3])
        result = read_result(self.root / name)
        if result.kind == "final":  # (what the runner reads of a finished run: its status, its sharpness)
            result = Result("final", {k: result.data[k] for k in self.KEYS if k in result.data})
            if st.st_mtime_ns < time.time_ns() - self.FRESH_S * 1e9:
                self.entries[name] = sig + [result.data]
                self.changed = True
                return result
        if hit is not None:
            self.entries.pop(name)
            self.changed = True
        return result

    def save(self) -> None:
        if self.changed:
            with contextlib.suppress(OSError):
                io.write_json(self.root / self.NAME, {"format": self.FORMAT, "entries": self.entries},
                              sync=False, indent=None)
