"""A failed run's record: the one schema of a failed result.json, whoever saw the failure (the
training process, the launcher of a run's processes, a SLURM task's or torchrun worker's guard,
the job, the runner reading SLURM's accounting). :mod:`bench.rundir` writes it (``write_failure``,
``record_failure``); docs/faults.md lists its keys.
"""
from __future__ import annotations

import datetime
import os
import signal
import socket
import sys

FAILURE_SCHEMA = 1
FAILURE_KINDS = ("exception", "rank-death", "node-failure", "timeout", "job-ended", "setup")
TRACEBACK_CHARS = 4000
FAILURE_FIELDS = ("status", "failure_schema", "run_id", "error", "kind", "rank", "signal", "exit_code", "host",
                  "pid", "traceback", "failed_at", "recorded_by", "job_id", "submission", "config", "env",
                  "reports", "epochs")
_REPORT_KEYS = ("kind", "error", "rank", "signal", "exit_code", "host", "pid", "recorded_by", "job_id",
                "failed_at", "traceback")


def signal_name(code: int | None) -> str | None:
    """``-9`` (a Popen return code) or ``9`` -> ``"SIGKILL"``."""
    if code is None:
        return None
    try:
        return signal.Signals(abs(int(code))).name
    except ValueError:
        return f"signal {abs(int(code))}"


HERE = "this process"   # the default of failure()'s host and pid: where failure() is called (None: not known)


def failure(error: str, kind: str, *, rid: str | None = None, rank: int | None = None,
            signal: str | None = None, exit_code: int | None = None, host: str | None = HERE,
            pid: int | str | None = HERE, traceback: str | None = None, recorded_by: str = "train",
            submission: str | None = None, config: dict | None = None, job_id: str | None = None) -> dict:
    """A failed result.json (the one schema; see docs/faults.md):

    ``status`` "failed", ``run_id``, ``error`` (one line), ``kind`` (one of FAILURE_KINDS),
    ``rank`` (the process of the run it concerns; 0 for a one-process run), ``signal`` (its name,
    when a signal ended that process), ``exit_code``, ``host``, ``pid``, ``traceback`` (its last
    TRACEBACK_CHARS characters), ``failed_at`` (UTC, ISO 8601), ``recorded_by`` (train, launcher,
    job, slurm-task, runner), ``job_id``, ``submission``, ``config``, ``env`` (versions and host,
    without importing torch), ``failure_schema``, and ``reports``: every report of this failure
    (several processes may report one death), the top level being the one that says most.
    """
    if kind not in FAILURE_KINDS:
        raise ValueError(f"failure kind {kind!r} is not one of {FAILURE_KINDS}")
    doc = {"status": "failed", "failure_schema": FAILURE_SCHEMA, "run_id": rid, "error": " ".join(str(error).split()),
           "kind": kind, "rank": rank, "signal": signal, "exit_code": exit_code,
           "host": socket.gethostname() if host == HERE else host, "pid": os.getpid() if pid == HERE else pid,
           "traceback": traceback[-TRACEBACK_CHARS:] if traceback else None,
           "failed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
           "recorded_by": recorded_by, "job_id": job_id or os.environ.get("SLURM_JOB_ID"),
           "submission": submission, "config": config, "env": failure_env()}
    doc["reports"] = [{k: doc[k] for k in _REPORT_KEYS}]
    return doc


def failure_from_exception(exc: BaseException, where: str = "", **fields) -> dict:
    """A failure record for the exception being handled (its traceback included); ``where`` is
    appended to its one-line error (e.g. the plugin file and line it was raised in)."""
    import traceback as tb

    text = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
    return failure(f"{type(exc).__name__}: {exc}{where}", fields.pop("kind", "exception"), traceback=text, **fields)


def failure_env() -> dict:
    """What failed where: host, Python, platform, git commit, SLURM ids, torch's version if loaded."""
    import platform

    from bench import env

    torch = sys.modules.get("torch")
    return {"hostname": socket.gethostname(), "python": platform.python_version(),
            "platform": platform.platform(), "git_commit": env.git_commit(),
            "torch": getattr(torch, "__version__", None), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "slurm_array": os.environ.get("SLURM_ARRAY_JOB_ID") and
            f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"}


def _weight(report: dict) -> int:
    """How much a report says about the cause: a process ended by a signal (or a node lost) says
    most; then an exception with its traceback; then a bare exit status."""
    if report.get("kind") in ("node-failure", "timeout") or report.get("signal"):
        return 3
    if report.get("kind") in ("exception", "setup"):
        return 2
    return 1


def merge_failure(old: dict | None, new: dict) -> dict:
    """``new`` joined to a failed result of the same submission: every report kept, the top level
    taken from the report that says most (the earliest among equals)."""
    if not old or old.get("status") != "failed" or old.get("submission") != new.get("submission"):
        return new
    reports = list(old.get("reports") or [{k: old.get(k) for k in _REPORT_KEYS}]) + list(new["reports"])
    best = max(reports, key=_weight)  # max keeps the first of equal weight
    top = dict(new)
    for key in ("run_id", "config"):
        top[key] = new.get(key) if new.get(key) is not None else old.get(key)
    top.update({k: best.get(k) for k in _REPORT_KEYS})
    top["reports"] = reports
    return top
