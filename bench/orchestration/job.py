"""The job function every executor runs: train the given run folders one after another.

:class:`RunJob` never lets one crash stop the others (a crash is recorded as a failed
result.json). It is ``submitit.helpers.Checkpointable``: on a timeout or preemption
submitit requeues it with the same runs, and each resumes from its checkpoint.pt (written
every epoch); finished ones return at once.

A run of several processes (``nproc`` x ``nodes``): in a SLURM job of that many tasks every task
runs this job and trains its rank of each run in a child process that it guards
(:func:`bench.orchestration.launch.guard_rank`: a rank that dies is recorded, with its rank, signal
and host, and the job ends, and srun stops the other tasks); in a job of one process (the local
executor) the job starts the run's processes itself (:mod:`bench.orchestration.launch`).
"""
from __future__ import annotations

import os
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
        tasks = _job_tasks()
        if tasks > 1:  # one task of a job of several: this task's rank of each run, guarded
            return self.guarded(run_dirs, suite, submission)
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        if worker is not None:
            _stop_on_sigterm()
        order = work_order([Path(d) for d in run_dirs], worker)
        outcomes = []
        for i, (run_dir, own) in enumerate(order):
            outcome = self.run_one(run_dir, suite, submission, retry_locked=own, label=f"{i + 1}/{len(order)}",
                                   threads=threads)
            if outcome is not None:
                outcomes.append(outcome)
        return outcomes

    @staticmethod
    def run_one(run_dir: Path, suite: str | None, submission: str | None, retry_locked: bool = True,
                label: str = "", threads: int | None = None) -> dict | None:
        if rundir.handled(run_dir, submission):
            return None  # handled in this submission
        rid = run_dir.name
        try:
            doc = io.read_json(run_dir / "config.json")
            cfg = doc["config"]
            rid = doc.get("run_id", rid)
        except Exception as exc:  # noqa: BLE001
            if rundir.lock_held(run_dir):  # another process is (re)writing the folder: its run
                print(f"[sambench] run {rid}: locked by another process, left to it", flush=True)
                return {"run_id": rid, "status": "locked", "error": None}
            return _record_failure(run_dir, rid, exc, submission)
        print(f"[sambench] {label} run {rid}: {config.describe(cfg)}", flush=True)
        attempts = LOCK_RETRIES if retry_locked else 1
        for attempt in range(attempts):
            try:
                result = _train(cfg, run_dir, suite, submission, threads)
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
                return _record_failure(run_dir, rid, exc, submission)
        return None

    @staticmethod
    def guarded(run_dirs: list[str], suite: str | None, submission: str | None) -> list[dict]:
        """In a SLURM job of nodes x tasks: this task trains its rank of each run in a child
        process it guards (:func:`bench.orchestration.launch.guard_rank`). A rank that dies is
        recorded with its rank, signal and host, and the job ends with an error, so srun
        (``--kill-on-bad-exit``) stops the other tasks; the runs not reached stay to do."""
        from bench.orchestration import launch

        outcomes = []
        for i, run_dir in enumerate(Path(d) for d in run_dirs):
            env = _rank_env(i)
            if env["RANK"] == "0":
                print(f"[sambench] {i + 1}/{len(run_dirs)} run {run_dir.name}: {env['WORLD_SIZE']} processes",
                      flush=True)
            code = launch.guard_rank(launch.run_argv(run_dir, suite, submission, skip_handled=True), env,
                                     run_dir, submission)
            if code == launch.EXIT_HANDLED:
                continue
            result = rundir.read_result(run_dir).data or {}
            if code == launch.EXIT_LOCKED:
                outcomes.append({"run_id": run_dir.name, "status": "locked", "error": None})
                continue
            if code != 0:
                raise RuntimeError(f"run {run_dir.name}: rank {env['RANK']} ended with "
                                   f"{'signal ' + str(rundir.signal_name(code)) if code < 0 else f'exit status {code}'}"
                                   f" ({result.get('error')}); the job ends (its other runs stay to do)")
            outcomes.append({"run_id": run_dir.name, "status": result.get("status"), "error": result.get("error")})
        return outcomes

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Preempted or timed out: requeue the same runs; each resumes from its checkpoint.pt."""
        from submitit.helpers import DelayedSubmission

        print("[sambench] checkpoint: requeueing; runs resume from their last epoch", flush=True)
        return DelayedSubmission(self, *args, **kwargs)


def _job_tasks() -> int:
    """The number of tasks of the submitit job this process runs in (1 outside submitit)."""
    try:
        import submitit

        return submitit.JobEnvironment().num_tasks
    except Exception:  # noqa: BLE001 -- not inside a submitit job
        return 1


def _rank_env(run_index: int) -> dict[str, str]:
    """torch.distributed's variables for this task's rank, from submitit's job environment (one
    master port per run of the job, so a run's group never meets the previous one's sockets)."""
    from submitit.helpers import TorchDistributedEnvironment

    dist = TorchDistributedEnvironment()
    port = 20000 + (dist.master_port - 20000 + run_index) % 40000
    return dict(os.environ, MASTER_ADDR=dist.master_addr, MASTER_PORT=str(port), RANK=str(dist.rank),
                WORLD_SIZE=str(dist.world_size), LOCAL_RANK=str(dist.local_rank),
                LOCAL_WORLD_SIZE=str(dist.local_world_size), PYTHONUNBUFFERED="1")


def _train(cfg: dict, run_dir: Path, suite: str | None, submission: str | None, threads: int | None) -> dict:
    """Train one run: in this process, or with the processes it asks for, started here (a job of
    one process, a run of several)."""
    from bench.engine import train
    from bench.orchestration import launch

    world = config.world_size({"nproc": 1, "nodes": 1, **cfg})  # (train.run resolves the config, once)
    if world > 1:
        per_process = max(1, (threads or 0) // world) if threads else None
        return launch.train_run(run_dir, world, suite=suite, submission=submission, threads=per_process)
    return train.run(cfg, run_dir, suite=suite, progress=False, submission=submission)


def _record_failure(run_dir: Path, rid: str, exc: BaseException, submission: str | None) -> dict:
    """A failure train.run could not record itself (an unreadable config.json, a foreign folder)."""
    error = f"{type(exc).__name__}: {exc}"
    kind = "setup" if isinstance(exc, (OSError, ValueError, KeyError, rundir.ForeignRunDir)) else "exception"
    try:
        rundir.record_failure(run_dir, rundir.failure_from_exception(exc, kind=kind, rid=rid, rank=0,
                                                                     recorded_by="job", submission=submission))
    except Exception as exc2:  # noqa: BLE001 -- the folder is gone, or not ours
        print(f"[sambench] run {rid}: could not record the failure ({exc2})", file=sys.stderr, flush=True)
    return {"run_id": rid, "status": "failed", "error": error}
