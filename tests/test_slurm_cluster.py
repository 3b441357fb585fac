"""End-to-end checks of the local SLURM cluster (bench/slurm/up.sh) through submitit.

Needs root (the fixture installs and starts slurm/munge/mariadb); set SAMBENCH_NO_SLURM=1 to skip.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import cloudpickle
import pytest
import submitit
from submitit.core.utils import UncompletedJobError

try:  # tests/ is on sys.path under pytest's default (prepend) import mode
    from slurm_fixture import slurm_cluster
except ImportError:  # tests/ turned into a package
    from tests.slurm_fixture import slurm_cluster  # noqa: F401  (a fixture: used by name)

pytestmark = pytest.mark.slurm

# The job-side python cannot import this test module (it is not on the job's sys.path), so ship its
# functions by value rather than by reference.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

RESULT_TIMEOUT_S = 60
# job id -> expected sacct state prefix, filled by the tests below, checked by test_sacct_lists_jobs.
_SUBMITTED: dict[str, str] = {}


def add(a: int, b: int) -> int:
    return a + b


def square_and_task(x: int) -> tuple[int, str]:
    env = submitit.JobEnvironment()
    return x * x, env.job_id


def sleep_long() -> None:
    time.sleep(600)


def _result_within(job: submitit.Job, timeout: float = RESULT_TIMEOUT_S):
    """job.result(), but failing the test instead of hanging forever (result() has no timeout)."""
    out: dict = {}

    def target() -> None:
        try:
            out["value"] = job.result()
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the test thread
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"job {job.job_id}: no result within {timeout}s (state {job.state})")
    if "error" in out:
        raise out["error"]
    return out["value"]


def _sacct(*job_ids: str) -> dict[str, str]:
    """JobID -> State for the given jobs (array tasks appear as ID_N), from the accounting DB."""
    cmd = ["sacct", "--noheader", "--parsable2", "-X", "-o", "JobID,State"]
    for jid in job_ids:
        cmd += ["-j", jid]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30).stdout
    return dict(line.split("|", 1) for line in out.splitlines() if line)


def _sacct_until(pred, *job_ids: str, timeout: float = 30) -> dict[str, str]:
    # The controller hands job records to slurmdbd asynchronously; give it a moment.
    deadline = time.monotonic() + timeout
    while True:
        states = _sacct(*job_ids)
        if pred(states) or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


@pytest.fixture
def executor(slurm_cluster, tmp_path):
    ex = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    assert ex.cluster == "slurm"
    ex.update_parameters(timeout_min=10)
    return ex


def test_cluster_is_up(slurm_cluster):
    assert "accounting on" in slurm_cluster.summary, slurm_cluster.summary
    sinfo = subprocess.run(["sinfo", "-h", "-o", "%P %a %T"], capture_output=True, text=True, check=True)
    assert sinfo.stdout.split()[:2] == ["debug*", "up"], sinfo.stdout


def test_single_job(executor):
    job = executor.submit(add, 2, 3)
    assert _result_within(job) == 5
    states = _sacct_until(lambda s: s.get(job.job_id) == "COMPLETED", job.job_id)
    assert states.get(job.job_id) == "COMPLETED", states
    _SUBMITTED[job.job_id] = "COMPLETED"


def test_job_array(executor):
    jobs = executor.map_array(square_and_task, [0, 1, 2, 3])
    assert len(jobs) == 4
    results = [_result_within(j) for j in jobs]
    assert [r[0] for r in results] == [0, 1, 4, 9]
    array_id = jobs[0].job_id.split("_")[0]
    task_ids = [f"{array_id}_{i}" for i in range(4)]
    assert [j.job_id for j in jobs] == task_ids
    assert [r[1] for r in results] == task_ids  # each task ran as its own array element
    states = _sacct_until(lambda s: all(s.get(t) == "COMPLETED" for t in task_ids), array_id)
    assert {t: states.get(t) for t in task_ids} == dict.fromkeys(task_ids, "COMPLETED"), states
    _SUBMITTED.update(dict.fromkeys(task_ids, "COMPLETED"))


def test_cancelled_job_raises(executor):
    job = executor.submit(sleep_long)
    deadline = time.monotonic() + 30
    while job.get_info(mode="force").get("State") != "RUNNING":
        assert time.monotonic() < deadline, f"job {job.job_id} never started: {job.state}"
        time.sleep(0.5)
    subprocess.run(["scancel", job.job_id], check=True, timeout=30)
    t0 = time.monotonic()
    with pytest.raises(UncompletedJobError):
        _result_within(job, RESULT_TIMEOUT_S)
    assert time.monotonic() - t0 < RESULT_TIMEOUT_S
    states = _sacct_until(lambda s: s.get(job.job_id, "").startswith("CANCELLED"), job.job_id)
    assert states.get(job.job_id, "").startswith("CANCELLED"), states  # "CANCELLED by 0"
    _SUBMITTED[job.job_id] = "CANCELLED"


def test_sacct_lists_jobs(slurm_cluster, tmp_path):
    # Plain sbatch (no submitit) reads /etc/slurm/slurm.conf and shows up in accounting, next to
    # every job the tests above submitted.
    out = subprocess.run(
        ["sbatch", "--parsable", f"--output={tmp_path}/out.txt", "--wrap", "echo hello"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    job_id = out.stdout.strip().split(";")[0]
    expected = {**_SUBMITTED, job_id: "COMPLETED"}
    # Ask by id: Slurm 22.05 leaves time_eligible unset for jobs that start within a few ms of
    # submission, and a plain time-window `sacct` silently omits those.
    states = _sacct_until(lambda s: _matches(s, expected), *{j.split("_")[0] for j in expected})
    assert _matches(states, expected), (states, expected)
    assert (tmp_path / "out.txt").read_text().strip() == "hello"


def _matches(states: dict[str, str], expected: dict[str, str]) -> bool:
    return all(states.get(j, "").startswith(want) for j, want in expected.items())
