"""The run-folder rule, in one place: who owns a folder, its lock, its result, its state.

A run folder ``<out>/<suite>/<run_id>/`` holds config.json (``{"run_id", "suite",
"config", "variant_options"}``), metrics.jsonl, checkpoint.pt and, once finished,
result.json. The rule:

- **Owner.** A folder belongs to the run named by its config.json (else its result.json).
  Training a run in a folder that holds another run is refused (:class:`ForeignRunDir`,
  exit 2) before anything in it is touched.
- **Lock.** ``.lock`` is flock-ed by the one process training the run; the kernel releases
  it when that process dies, so a stale lock cannot exist.
- **Result.** result.json is written atomically. It is *final* (``done``/``diverged``:
  never trained again), *failed* (retried: removed when the run is taken up again), or
  *corrupt* (empty, truncated, binary, or JSON that is not an object with a status): it is
  kept, renamed ``result.json.corrupt`` (``-2``, ``-3``... if taken), and the run is redone.
  Whether a result belongs to the current submission is read from the ``submission`` it
  records, never from file times.
- **State** (:func:`run_state`): done | diverged | failed | corrupt | running | resume | new.
- **Writers.** This module alone writes config.json (:func:`write_config`, :func:`write_configs`)
  and the result of a run that trained (:func:`write_result`); the engine, the runner and the
  command line call these.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import io
from bench.errors import InvalidInput

FINAL = ("done", "diverged")
STATES = ("done", "diverged", "failed", "corrupt", "resume", "new", "running")
TO_SUBMIT = ("failed", "corrupt", "resume", "new")


class RunLocked(RuntimeError):
    """Another process is training this run right now."""


class ForeignRunDir(InvalidInput):
    """The folder holds another run (or files that are not a run's): refused, nothing touched."""


# --- the lock --------------------------------------------------------------------------------------

@contextlib.contextmanager
def run_lock(run_dir: Path):
    """An exclusive, non-blocking lock on the run folder (released if the process dies)."""
    fd = os.open(run_dir / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(f"{run_dir} is being trained by another process") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


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


def record_failure(run_dir: Path, rid: str, error: str, submission: str | None = None) -> bool:
    """Write a failed result.json for a failure before training could record it (e.g. an
    unreadable config.json). Not in a folder a readable config.json gives to another run,
    nor over a result. Returns whether it was written."""
    try:
        held = owner(run_dir)
    except ForeignRunDir:
        held = None  # unreadable files: the failure is worth recording beside them
    with run_lock(run_dir):
        if held not in (rid, None) or (run_dir / "result.json").exists():
            return False
        io.write_json(run_dir / "result.json", {
            "status": "failed", "run_id": rid, "error": error, "submission": submission,
            "traceback": traceback.format_exc()[-4000:]})
    return True


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


def run_state(rid: str, cfg: dict, run_dir: Path, job_alive: Callable[[dict | None], bool]) -> RunState:
    """Where a run stands. ``job_alive(job.json content)`` says whether a job recorded for it
    may still train it (a queued SLURM task, a live local worker)."""
    if not run_dir.is_dir():
        return RunState(rid, cfg, run_dir, "new")
    result = read_result(run_dir)
    if result.kind == "final":
        return RunState(rid, cfg, run_dir, result.status, result)
    if lock_held(run_dir) or job_alive(read_job(run_dir)):
        return RunState(rid, cfg, run_dir, "running", result)
    if result.kind in ("failed", "corrupt"):
        return RunState(rid, cfg, run_dir, result.kind, result)
    if (run_dir / "checkpoint.pt").exists() or io.read_jsonl(run_dir / "metrics.jsonl"):
        return RunState(rid, cfg, run_dir, "resume", result)
    return RunState(rid, cfg, run_dir, "new", result)
