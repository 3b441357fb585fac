"""Runs whose SLURM job ended without a word: their failure recorded from SLURM's accounting.

Inside a job, the training process, the launcher of a run's processes and each task's guard record
every failure they see (bench.rundir). What nobody inside the job can see is the death of the job
itself: the node that ran it failed, the job's only process was killed (the OOM killer, SIGKILL),
the job ran out of memory or time. :func:`reap`, run by ``sambench run`` (before it plans, and
while it waits) and ``sambench status``, finds the runs that were started (metrics.jsonl written),
have no result and no live job, asks ``sacct`` how their last job ended, and for a failure records
it (kind ``node-failure``, ``job-ended`` or ``timeout``; rank 0, the signal or exit status from
sacct's ExitCode, the host from its NodeList). A cancelled, preempted or requeued job is not a
failure: the run resumes from its checkpoint. Without accounting (no sacct) nothing is recorded.
"""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable

from bench import rundir
from bench.rundir import RunState

FAILED_STATES = {"NODE_FAIL": "node-failure", "BOOT_FAIL": "node-failure", "FAILED": "job-ended",
                 "OUT_OF_MEMORY": "job-ended", "TIMEOUT": "timeout", "DEADLINE": "timeout"}
SACCT_CHUNK = 500


def reap(states: list[RunState], alive) -> list[RunState]:
    """Record the failures SLURM knows of for these runs (see the module doc); return the runs whose
    state changed (now ``failed``). ``alive(job.json)`` says whether a recorded job may still run."""
    candidates = []
    for st in states:
        if st.state not in ("resume", "new") or st.result is None or not (st.dir / "metrics.jsonl").exists():
            continue  # (st.result None: no folder yet)
        info = rundir.read_job(st.dir)
        if info and info.get("executor") == "slurm" and info.get("jobs") and not alive(info):
            candidates.append((st, info))
    if not candidates:
        return []
    ended = sacct_states(str(info["jobs"][-1]["job_id"]) for _, info in candidates)
    changed = []
    for st, info in candidates:
        job_id = str(info["jobs"][-1]["job_id"])
        found = ended.get(job_id)
        if found is None or found[0] not in FAILED_STATES:
            continue
        if rundir.record_failure(st.dir, failure_of(st.rid, job_id, *found, info.get("submission"))) is not None:
            st.state, st.result = "failed", rundir.read_result(st.dir)
            changed.append(st)
    return changed


def failure_of(rid: str, job_id: str, state: str, exit_code: str, nodes: str, submission: str | None) -> dict:
    """The failure record of a job that ended ``state`` with sacct's ``exit_code`` ("status:signal")."""
    status, _, sig = exit_code.partition(":")
    code = int(status) if status.isdigit() else None
    sig_name = rundir.signal_name(int(sig)) if sig.isdigit() and int(sig) else None
    if sig_name is None and code is not None and 128 < code < 160:  # the batch shell's 128 + N: srun's task
        sig_name = rundir.signal_name(code - 128)                    # was ended by signal N
    how = f"signal {sig_name}" if sig_name else f"exit status {code}"
    record = rundir.failure(f"SLURM job {job_id} ended {state} ({how}) on {nodes or 'an unknown node'} before the "
                            f"run recorded a result", FAILED_STATES[state], rid=rid, rank=0, signal=sig_name,
                            exit_code=code, host=nodes or None, pid=None, recorded_by="runner",
                            submission=submission, job_id=job_id)  # (the job's process is gone: no pid)
    return record


def sacct_states(job_ids: Iterable[str]) -> dict[str, tuple[str, str, str]]:
    """job id -> (State, ExitCode, NodeList) from the accounting database ({} without sacct)."""
    ids = sorted(set(job_ids))
    if not ids or shutil.which("sacct") is None:
        return {}
    found: dict[str, tuple[str, str, str]] = {}
    for start in range(0, len(ids), SACCT_CHUNK):
        try:
            out = subprocess.run(["sacct", "-n", "-P", "-o", "JobID,State,ExitCode,NodeList", "-j",
                                  ",".join(ids[start:start + SACCT_CHUNK])], capture_output=True, text=True,
                                 timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return found
        found.update(_jobs_of(out.stdout))
    return found


def _jobs_of(sacct_lines: str) -> dict[str, tuple[str, str, str]]:
    """job id -> (State, ExitCode, NodeList) from ``sacct -P`` lines of jobs and their steps. A job's
    ExitCode is its batch script's (srun exits with a status when its task was killed); the signal
    that ended the task is in its step's ExitCode ("0:9"), which is taken when the job's has none."""
    jobs: dict[str, tuple[str, str, str]] = {}
    step_signal: dict[str, str] = {}
    for line in sacct_lines.splitlines():
        parts = line.split("|")
        if len(parts) != 4:
            continue
        job_id, step = parts[0].partition(".")[::2]
        if not step:
            jobs[job_id] = (parts[1].split()[0] if parts[1] else "", parts[2], parts[3])
        elif parts[2].partition(":")[2] not in ("", "0") and job_id not in step_signal:
            step_signal[job_id] = parts[2].partition(":")[2]
    for job_id, sig in step_signal.items():
        if job_id in jobs and jobs[job_id][1].partition(":")[2] in ("", "0"):
            state, exit_code, nodes = jobs[job_id]
            jobs[job_id] = (state, f"{exit_code.partition(':')[0]}:{sig}", nodes)  # the job's status, the step's signal
    return jobs
