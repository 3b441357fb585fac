"""The job function every executor runs: train the given run folders one after another.

:class:`RunJob` never lets one crash stop the others (a crash is recorded as a failed
result.json). It is ``submitit.helpers.Checkpointable``: on a timeout or preemption
submitit requeues it with the same runs, and each resumes from its checkpoint.pt (written
every epoch); finished ones return at once.

A run of several processes (``nproc`` x ``nodes``): in a SLURM job of that many tasks every task
runs this job, joins the process group from submitit's job environment and trains with the
others (rank 0 decides and writes; a failure ends the job, and srun the other tasks); in a job of
one process (the local executor) the job starts the run's processes itself (:mod:`bench.orchestration.launch`).
"""
from __future__ import annotations

import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench import config, io, rundir

LOCK_RETRIES = 3       # a job can collide with another one taking a run's lock: retry briefly
LOCK_RETRY_S = 0.3

try:
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # bench.engine.train stays usable without submitit (e.g. on a GPU machine)
    class _Checkpointable:  # type: ignore[no-redef]
        pass


def _stop_on_sigterm() -> None:
    """Local workers stop on SIGTERM like on Ctrl-C (submitit's job process ignores SIGTERM,
    which on SLURM announces a preemption; a local worker has no such meaning for it)."""
    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)


def work_order(dirs: list[Path], worker: tuple[int, int] | None) -> list[tuple[Path, bool]]:
    """``(run folder, own)`` in the order a job takes them. ``worker=(k, n)``: worker k of n
    first takes its own runs k, k+n, ..., then steals the others from the end; a run's lock
    is its claim, so each run is trained once."""
    if worker is None:
        return [(d, True) for d in dirs]
    k, n = worker
    own = dirs[k::n]
    owned = set(own)
    return [(d, True) for d in own] + [(d, False) for d in reversed(dirs) if d not in owned]


class RunJob(_Checkpointable):
    """Train ``run_dirs`` (folders holding a config.json written at submission).

    ``submission`` (the submission's id) goes into every result.json this job writes; a run
    whose result.json already carries it was handled in this submission (by this job before a
    requeue, or by another worker) and is skipped. ``worker=(k, n)`` makes the list a work
    queue shared by n local workers (see :func:`work_order`).
    Returns one ``{"run_id", "status", "error"}`` per run it handled.
    """

    def __call__(self, run_dirs: list[str], suite: str | None = None, threads: int | None = None,
                 submission: str | None = None, worker: tuple[int, int] | None = None) -> list[dict]:
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        if worker is not None:
            _stop_on_sigterm()
        from bench.engine import distributed

        comm = distributed.from_submitit(_first_device(run_dirs))
        order = work_order([Path(d) for d in run_dirs], worker)
        outcomes = []
        try:
            for i, (run_dir, own) in enumerate(order):
                outcome = self.run_one(run_dir, suite, submission, retry_locked=own, label=f"{i + 1}/{len(order)}",
                                       comm=comm, threads=threads)
                if outcome is not None:
                    outcomes.append(outcome)
                    if comm is not None and outcome["status"] == "failed":
                        raise RuntimeError(f"run {outcome['run_id']} failed in a job of {comm.world} processes: "
                                           f"{outcome['error']}; the job ends (its other runs stay to do)")
        finally:
            distributed.destroy()
        return outcomes

    @staticmethod
    def run_one(run_dir: Path, suite: str | None, submission: str | None, retry_locked: bool = True,
                label: str = "", comm=None, threads: int | None = None) -> dict | None:
        main = comm is None or comm.is_main
        done = rundir.read_result(run_dir)
        handled = submission is not None and done.data is not None and done.data.get("submission") == submission
        if comm is not None:
            handled = comm.share(handled)  # rank 0's view, so every process takes the same runs
        if handled:
            return None
        rid = run_dir.name
        try:
            doc = io.read_json(run_dir / "config.json")
            cfg = doc["config"]
            rid = doc.get("run_id", rid)
        except Exception as exc:  # noqa: BLE001
            if rundir.lock_held(run_dir):  # another process is (re)writing the folder: its run
                print(f"[sambench] run {rid}: locked by another process, left to it", flush=True)
                return {"run_id": rid, "status": "locked", "error": None}
            return _record_failure(run_dir, rid, exc, submission) if main else _failed(rid, exc)
        if main:
            print(f"[sambench] {label} run {rid}: {config.describe(cfg)}", flush=True)
        attempts = LOCK_RETRIES if retry_locked else 1
        for attempt in range(attempts):
            try:
                result = _train(cfg, run_dir, suite, submission, comm, threads)
                if main:
                    print(f"[sambench] run {rid}: {result['status']}", flush=True)
                return {"run_id": rid, "status": result["status"], "error": result.get("error")}
            except rundir.RunLocked:
                if attempt + 1 < attempts:
                    time.sleep(LOCK_RETRY_S)
                    continue
                print(f"[sambench] run {rid}: locked by another process, left to it", flush=True)
                return {"run_id": rid, "status": "locked", "error": None}
            except Exception as exc:  # noqa: BLE001 -- one crash never blocks the other runs
                print(f"[sambench] run {rid} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                traceback.print_exc()
                sys.stderr.flush()
                return _record_failure(run_dir, rid, exc, submission) if main else _failed(rid, exc)
        return None

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Preempted or timed out: requeue the same runs; each resumes from its checkpoint.pt."""
        from submitit.helpers import DelayedSubmission

        print("[sambench] checkpoint: requeueing; runs resume from their last epoch", flush=True)
        return DelayedSubmission(self, *args, **kwargs)


def _train(cfg: dict, run_dir: Path, suite: str | None, submission: str | None, comm, threads: int | None) -> dict:
    """Train one run: in this process (joined to the job's process group, if any), or with the
    processes it asks for, started here (a job of one process, a run of several)."""
    from bench.engine import train
    from bench.orchestration import launch

    cfg = config.resolve(cfg)  # once: train.run takes the resolved config as it is
    world = config.world_size(cfg)
    if comm is None and world > 1:
        per_process = max(1, (threads or 0) // world) if threads else None
        return launch.train_run(run_dir, world, suite=suite, submission=submission, threads=per_process)
    return train.run(cfg, run_dir, suite=suite, progress=False, submission=submission)


def _first_device(run_dirs: list[str]) -> str:
    """The device the runs of this job ask for (the process group's backend follows it)."""
    try:
        return io.read_json(Path(run_dirs[0]) / "config.json")["config"].get("device", "auto")
    except Exception:  # noqa: BLE001 -- an unreadable config fails later, with its own message
        return "auto"


def _failed(rid: str, exc: BaseException) -> dict:
    """A failure seen by a process other than rank 0 (rank 0 records it)."""
    return {"run_id": rid, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}


def _record_failure(run_dir: Path, rid: str, exc: BaseException, submission: str | None) -> dict:
    """A failure train.run could not record itself (an unreadable config.json, a foreign folder)."""
    error = f"{type(exc).__name__}: {exc}"
    try:
        rundir.record_failure(run_dir, rid, error, submission)
    except Exception as exc2:  # noqa: BLE001 -- locked by someone else, or the folder is gone
        print(f"[sambench] run {rid}: could not record the failure ({exc2})", file=sys.stderr, flush=True)
    return {"run_id": rid, "status": "failed", "error": error}
