"""Executors: start the job function (:class:`bench.orchestration.job.RunJob`) on a list of runs.

One function per executor, all ``(Request, Submission) -> None`` (they add the jobs they start
to the Submission):

- :func:`submit_debug`: in this process (submitit's debug executor), one job per run;
- :func:`submit_local`: ``--max-parallel`` worker processes (default: one per GPU; without GPUs
  one per CPU core, at most 8), each pinned to one GPU when there are GPUs and to
  ``cores // workers`` torch threads (capped by OMP_NUM_THREADS when set). The workers share
  the run list as a work queue (each run's lock is its claim). Each worker's controller runs in
  its own session with its output in ``.submitit/``, so a terminal's Ctrl-C or a
  ``timeout`` reaches ``sambench run`` only, which then stops them (:func:`stop`) or leaves
  them running; no worker holds the command's output;
- :func:`submit_slurm`: SLURM job arrays of ``slurm.runs_per_job`` runs per task.

A run of N processes (``nproc``, ``nodes``): :func:`submit_local` gives each worker N GPUs (when
there are GPUs) and the worker starts the run's N processes itself (:mod:`bench.orchestration.launch`);
:func:`submit_slurm` makes each such run ONE SLURM job of nodes x nproc tasks
(``nodes=K, tasks_per_node=N``, N GPUs per node when the suite asks for GPUs, srun
``--kill-on-bad-exit``), whose tasks join one process group from submitit's job environment.
"""
from __future__ import annotations

import contextlib
import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import io
from bench.rundir import RunState

LOCAL_TIMEOUT_MIN = 7 * 24 * 60       # the local controller kills a job after its timeout
DEFAULT_SLURM_TIMEOUT_MIN = 60        # submitit's own default (5 min) is too short for training
MAX_CPU_WORKERS = 8                   # default local workers without GPUs: one per core, <= 8
DEFAULT_MAX_ARRAY = 1000              # tasks per job array when scontrol does not say (SLURM: 1001)
DEFAULT_MAX_JOBS = 10000              # SLURM's default MaxJobCount
STOP_GRACE_S = 15.0                   # local workers get this long to stop before SIGKILL


@dataclass
class Request:
    """What to start: these runs of this suite, under one submission id."""

    suite: str
    runs: list[RunState]
    folder: Path                      # submitit's files: <out>/<suite>/.submitit
    submission: str                   # stored in every result.json the jobs write
    max_parallel: int | None = None
    slurm: dict[str, Any] = field(default_factory=dict)


@dataclass
class Submission:
    kind: str
    submission: str
    suite: str | None = None                                    # the jobs are named sambench-<suite>
    jobs: list = field(default_factory=list)                    # submitit jobs
    runs_of_job: list[list[str]] = field(default_factory=list)  # run ids per job
    note: str = ""                                              # how it was started (for the user)


def submit(sub: Submission, request: Request) -> None:
    """Start the runs with the executor ``sub.kind``, adding each job to ``sub`` as it starts (so
    an interrupt during submission still knows what to stop); then record each run's jobs in
    its job.json."""
    try:
        EXECUTORS[sub.kind](request, sub)
    finally:
        if sub.kind == "slurm":
            io.sync_all()
    write_job_records(sub, request)


def submit_debug(request: Request, sub: Submission) -> None:
    import submitit

    from bench.orchestration.job import RunJob

    ex = submitit.AutoExecutor(folder=request.folder, cluster="debug")
    ex.update_parameters(name=f"sambench-{request.suite}")
    for st in request.runs:
        sub.jobs.append(ex.submit(RunJob(), resolved_dirs([st.dir]), request.suite, None, request.submission, None))
        sub.runs_of_job.append([st.rid])


def submit_local(request: Request, sub: Submission) -> None:
    import submitit

    from bench.config import world_size
    from bench.orchestration.job import RunJob

    dirs = resolved_dirs([st.dir for st in request.runs])
    rids = [st.rid for st in request.runs]
    n_gpus = gpu_count()
    per_run = max(world_size(st.cfg) for st in request.runs)  # processes of the largest run
    workers = request.max_parallel or (max(1, n_gpus // per_run) if n_gpus
                                       else max(1, min(cpu_count() // per_run, MAX_CPU_WORKERS)))
    workers = max(1, min(workers, len(dirs)))
    threads = max(1, cpu_count() // workers)
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        threads = min(threads, int(omp))  # an explicit cap wins
    ex = submitit.LocalExecutor(folder=request.folder)
    with _controllers_detached(request.folder):
        for k in range(workers):
            params: dict[str, Any] = {"timeout_min": LOCAL_TIMEOUT_MIN}  # a run of N processes starts them itself
            if n_gpus:
                params.update(gpus_per_node=per_run,
                              visible_gpus=tuple((k * per_run + i) % n_gpus for i in range(per_run)))
            ex.update_parameters(**params)
            sub.jobs.append(ex.submit(RunJob(), dirs, request.suite, threads, request.submission, (k, workers)))
            sub.runs_of_job.append(rids)
    sub.note = (f"local: {workers} worker process(es), {threads} thread(s) each"
                + (f", {per_run} GPU(s) each ({n_gpus} visible)" if n_gpus else "")
                + (f"; runs of {per_run} processes share their worker's threads" if per_run > 1 and not n_gpus else ""))


def submit_slurm(request: Request, sub: Submission) -> None:
    """Job arrays of ``runs_per_job`` runs per task; runs of several processes (nproc x nodes) go in
    arrays of their own, one job of nodes x nproc tasks per run group."""
    from bench.config import world_size

    groups: dict[tuple[int, int], list[RunState]] = {}
    for st in request.runs:
        shape = (1, 1) if world_size(st.cfg) == 1 else (st.cfg["nproc"], st.cfg["nodes"])
        groups.setdefault(shape, []).append(st)
    for (nproc, nodes), runs in groups.items():
        _submit_slurm_group(request, sub, runs, nproc, nodes)


def _submit_slurm_group(request: Request, sub: Submission, runs: list[RunState], nproc: int, nodes: int) -> None:
    """One group's runs as job arrays of at most the cluster's MaxArraySize tasks. Each array's
    runs get a job.json naming the array (its SLURM comment) before sbatch, and its job ids after:
    a ``sambench run`` killed at any point leaves every queued job known to the next one."""
    import submitit

    from bench.orchestration.job import RunJob

    ex = submitit.AutoExecutor(folder=request.folder, cluster="slurm")
    ex.update_parameters(**slurm_parameters(request, nproc, nodes))
    per_job = request.slurm.get("runs_per_job", 1)
    dirs = resolved_dirs([st.dir for st in runs])
    chunks = [range(i, min(i + per_job, len(runs))) for i in range(0, len(runs), per_job)]
    size = max_array_size()
    for start in range(0, len(chunks), size):
        part = chunks[start:start + size]
        comment = f"sambench:{request.submission}:{nproc}x{nodes}:{start // size}"
        part_runs = [runs[i] for chunk in part for i in chunk]
        _record_array(request, part_runs, comment, {})  # before sbatch: the array this run is in
        ex.update_parameters(slurm_comment=comment)
        first = len(sub.jobs)
        with ex.batch():
            for chunk in part:
                sub.jobs.append(ex.submit(RunJob(), [dirs[i] for i in chunk], request.suite,
                                          request.slurm.get("cpus_per_task"), request.submission, None))
                sub.runs_of_job.append([runs[i].rid for i in chunk])
        _record_array(request, part_runs, comment, _entries(sub.jobs[first:], sub.runs_of_job[first:]))


def slurm_parameters(request: Request, nproc: int, nodes: int) -> dict[str, Any]:
    s = request.slurm
    params = {
        "name": f"sambench-{request.suite}",
        "timeout_min": s.get("timeout_min", DEFAULT_SLURM_TIMEOUT_MIN),
        "gpus_per_node": s.get("gpus_per_node"),
        "cpus_per_task": s.get("cpus_per_task"),
        "mem_gb": s.get("mem_gb"),
        "tasks_per_node": 1,          # one process per run
        "slurm_partition": s.get("partition"),
        "slurm_account": s.get("account"),
        "slurm_qos": s.get("qos"),
        "slurm_constraint": s.get("constraint"),
        "slurm_array_parallelism": request.max_parallel or s.get("array_parallelism"),
        "slurm_additional_parameters": s.get("additional_parameters"),
    }
    if nproc * nodes > 1:  # one task per process; one GPU per process when the suite asks for GPUs
        params.update(nodes=nodes, tasks_per_node=nproc, gpus_per_node=nproc if s.get("gpus_per_node") else None,
                      slurm_srun_args=["--kill-on-bad-exit=1"])
    return {k: v for k, v in params.items() if v is not None}


_CLUSTER_CONFIG: dict[str, int] = {}


def cluster_limit(name: str, default: int) -> int:
    """A number from the cluster's ``scontrol show config`` (MaxArraySize, MaxJobCount), read once."""
    if not _CLUSTER_CONFIG:
        try:
            out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=20,
                                 check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        _CLUSTER_CONFIG.update((k, int(v)) for k, v in re.findall(r"^(\w+)\s*=\s*(\d+)\s*$", out, re.M))
        _CLUSTER_CONFIG.setdefault("_read", 1)
    value = _CLUSTER_CONFIG.get(name, 0)
    return value if value >= 1 else default


def max_array_size() -> int:
    """Tasks per job array: the cluster's MaxArraySize (task indices go up to MaxArraySize - 1)."""
    return cluster_limit("MaxArraySize", DEFAULT_MAX_ARRAY)


def check_slurm_limits(runs: list[RunState], slurm: dict[str, Any]) -> None:
    """The submission's tasks must fit the cluster's MaxJobCount (every array task is a job):
    InvalidInput naming ``slurm.runs_per_job`` that would make them fit, before anything is written."""
    import math

    from bench.errors import InvalidInput

    per_job = slurm.get("runs_per_job", 1)
    tasks = math.ceil(len(runs) / per_job)
    limit = cluster_limit("MaxJobCount", DEFAULT_MAX_JOBS)
    if tasks > limit:
        raise InvalidInput(f"{len(runs):,} runs at {per_job} per job are {tasks:,} SLURM tasks, more than the "
                           f"cluster's MaxJobCount={limit:,} (each array task is a job); set slurm.runs_per_job "
                           f"to at least {math.ceil(len(runs) / limit)} (e.g. --set slurm.runs_per_job="
                           f"{math.ceil(len(runs) / limit)})", field="slurm.runs_per_job")


def _entries(jobs: list, runs_of_job: list[list[str]]) -> dict[str, list[dict]]:
    """run id -> the jobs given to it: ``{"job_id", "stdout", "stderr"}``."""
    by_run: dict[str, list[dict]] = {}
    for job, run_ids in zip(jobs, runs_of_job):
        entry = {"job_id": str(job.job_id), "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)}
        for rid in run_ids:
            by_run.setdefault(rid, []).append(entry)
    return by_run


def _job_record(kind: str, request: Request, jobs: list[dict], **extra: Any) -> dict:
    return {"executor": kind, "host": socket.gethostname(), "user": getpass.getuser(), "submitted_at": time.time(),
            "suite": request.suite, "submission": request.submission, "jobs": jobs, **extra}


def _record_array(request: Request, runs: list[RunState], comment: str, by_run: dict[str, list[dict]]) -> None:
    """job.json of an array's runs (renamed into place: a reader sees the old or the new one); brought
    to disk once, after the submission (:func:`submit`)."""
    io.write_json_many(((st.dir / "job.json", _job_record("slurm", request, by_run.get(st.rid, []), comment=comment))
                        for st in runs), indent=None, sync=False)


EXECUTORS: dict[str, Callable[[Request, Submission], None]] = {
    "debug": submit_debug,
    "local": submit_local,
    "slurm": submit_slurm,
}


def write_job_records(sub: Submission, request: Request) -> None:
    """job.json in each run folder: which jobs (and logs) this submission gave the run (SLURM
    arrays record their own, as they are submitted)."""
    if sub.kind == "slurm":
        return
    by_run = _entries(sub.jobs, sub.runs_of_job)
    io.write_json_many(((st.dir / "job.json", _job_record(sub.kind, request, by_run.get(st.rid, [])))
                        for st in request.runs), indent=None)


def resolved_dirs(run_dirs: list[Path]) -> list[str]:
    """``str(d.resolve())`` for each run folder, resolving each parent folder once instead of
    every path component of every run (10,000 runs share one parent)."""
    parents: dict[str, str] = {}
    out = []
    for d in run_dirs:
        if os.path.islink(d):
            out.append(os.path.realpath(d))
            continue
        parent = os.path.abspath(d.parent)
        if parent not in parents:
            parents[parent] = os.path.realpath(parent)
        out.append(os.path.join(parents[parent], d.name))
    return out


# --- local workers: detached controllers, stopping them ------------------------------------------

class _DetachedPopen(subprocess.Popen):
    """Popen for submitit's local controller: its own session, stdio in a log file."""

    log_path: Path | None = None

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("start_new_session", True)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        if self.log_path is not None and "stdout" not in kwargs:
            with open(self.log_path, "ab") as log:
                kwargs.update(stdout=log, stderr=subprocess.STDOUT)
                super().__init__(*args, **kwargs)
            return
        super().__init__(*args, **kwargs)


class _SubprocessWithDetachedPopen:
    """The subprocess module as submitit.local.local sees it while we submit."""

    def __init__(self, module: Any, popen: type):
        self._module, self.Popen = module, popen

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


@contextlib.contextmanager
def _controllers_detached(folder: Path):
    """While submitting local jobs, start submitit's controllers detached (see _DetachedPopen).

    submitit starts them with a plain Popen that shares our session and output; this swaps the
    ``subprocess`` name inside submitit.local.local only, for the duration of the submission.
    """
    from submitit.local import local as submitit_local

    folder.mkdir(parents=True, exist_ok=True)
    popen = type("DetachedPopen", (_DetachedPopen,), {"log_path": folder / "controllers.log"})
    real = submitit_local.subprocess
    submitit_local.subprocess = _SubprocessWithDetachedPopen(real, popen)
    try:
        yield
    finally:
        submitit_local.subprocess = real


def local_pids(sub: Submission) -> list[int]:
    """The controller process of each local job (the leader of its session and process group)."""
    return [job._process.pid for job in sub.jobs if getattr(job, "_process", None) is not None]


def stop(sub: Submission, grace_s: float = STOP_GRACE_S) -> list[int]:
    """Stop the local workers of a submission: SIGINT to each worker's process group (the
    worker stops where it is; its checkpoint is the last finished epoch), SIGKILL after
    ``grace_s``. Returns the controller pids it stopped. Other executors: nothing to stop here."""
    if sub.kind != "local":
        return []
    live = [job._process for job in sub.jobs if getattr(job, "_process", None) is not None
            and job._process.poll() is None]
    for proc in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGINT)
    deadline = time.time() + grace_s
    for proc in live:
        try:
            proc.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for proc in live:  # workers the controller could not take down with it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    return [proc.pid for proc in live]


def wait_done(sub: Submission, queue: Queue, timeout_s: float = 120.0) -> bool:
    """Wait until the jobs this submission started have exited (a worker that wrote its last
    result may still be exiting). Returns whether they all did within ``timeout_s``."""
    poll_s = 2.0 if sub.kind == "slurm" else 0.2  # one squeue call per poll on SLURM
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if not jobs_running(sub, queue, max_age=0):
            return True
        time.sleep(poll_s)
    return False


def jobs_running(sub: Submission, queue: Queue, max_age: float = 2.0) -> bool:
    """Whether any job of this submission is still queued or running."""
    if sub.kind == "local":
        return any(not job.done() for job in sub.jobs)
    if sub.kind == "slurm":
        alive = queue.alive_ids(f"sambench-{sub.suite}" if sub.suite else None, max_age=max_age)
        if alive is None:  # squeue unreachable: fall back on submitit's own view
            with contextlib.suppress(Exception):
                return any(not job.done() for job in sub.jobs)
            return False
        return any(str(job.job_id) in alive for job in sub.jobs)
    return False


# --- which recorded jobs are alive ------------------------------------------------------------------

class Queue:
    """Which SLURM jobs are alive (pending, running, requeued, completing...), from one squeue call
    per job name (every user's jobs: a results folder shared by several users sees all of them)."""

    def __init__(self) -> None:
        self._seen: dict[str | None, tuple[float, Alive | None]] = {}

    def alive(self, name: str | None = None, max_age: float = 2.0) -> Alive | None:
        at, found = self._seen.get(name, (0.0, None))
        if name not in self._seen or time.time() - at >= max_age:
            found = squeue_alive(name)
            self._seen[name] = (time.time(), found)
        return found

    def alive_ids(self, name: str | None = None, max_age: float = 2.0) -> set[str] | None:
        found = self.alive(name, max_age)
        return None if found is None else found.ids


@dataclass
class Alive:
    ids: set[str]                  # ``123`` and ``123_4`` for array tasks
    comments: set[str]             # the arrays' comments (``sambench:<submission>:...``)


def squeue_alive(name: str | None = None) -> Alive | None:
    """The jobs still in the queue (named ``name``, when given; every user's), or None when squeue
    is missing or fails."""
    if shutil.which("squeue") is None:
        return None
    cmd = ["squeue", "-h", "-r", "-o", "%i %A %T %k"] + (["-n", name] if name else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    found = Alive(set(), set())
    for line in out.stdout.splitlines():
        parts = line.split(None, 3)
        if len(parts) >= 2:
            found.ids.update(parts[:2])
        if len(parts) == 4:
            found.comments.add(parts[3].strip())
    return found


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"submitit" in f.read()
    except OSError:
        return True


def job_alive(info: dict | None, queue: Queue) -> bool:
    """Whether a job recorded in a run's job.json may still train it."""
    if not info:
        return False
    jobs = info.get("jobs") or []
    if info.get("executor") == "slurm":
        alive = queue.alive(f"sambench-{info['suite']}" if info.get("suite") else None)
        if alive is None:
            return False
        if not jobs and info.get("comment"):  # recorded before its sbatch returned: look for the array
            return info["comment"] in alive.comments
        return any(str(j.get("job_id")) in alive.ids for j in jobs)
    if info.get("executor") == "local" and info.get("host") == socket.gethostname():
        return any(_pid_alive(int(j["job_id"])) for j in jobs if str(j.get("job_id", "")).isdigit())
    return False


# --- what is there ----------------------------------------------------------------------------------

def slurm_up() -> bool:
    """Whether a SLURM controller answers (``scontrol ping`` says UP)."""
    if shutil.which("scontrol") is None:
        return False
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "is UP" in out.stdout


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return 0
