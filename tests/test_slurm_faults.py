"""Faults met on the real single-node SLURM cluster (bench/slurm/up.sh, MaxArraySize=100):

- a rank of a 2-task job killed (rank 1, then rank 0 in the resubmission): result.json names the
  rank, its signal and host within DEATH_RECORDED_S, and the next `sambench run` resumes the run
  from its checkpoint, no finished epoch trained again;
- `sambench run` SIGKILLed while submitting 250 held runs (3 arrays of at most 100 tasks): the
  queued jobs stay, `sambench status` counts them running, the next `sambench run` submits only
  the runs no live array holds (no duplicate);
- a diverging run in an array task: recorded diverged, the task's next run trains, the suite ends 0.

Needs root (the fixture installs and starts slurm/munge/mariadb); SAMBENCH_NO_SLURM=1 skips.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import io

try:  # tests/ is on sys.path under pytest's default (prepend) import mode
    from slurm_fixture import slurm_cluster  # fixture import
except ImportError:  # tests/ turned into a package
    from tests.slurm_fixture import slurm_cluster  # noqa: F401

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[1]
DEATH_RECORDED_S = 30


def squeue(name: str, fmt: str = "%i") -> list[str]:
    out = subprocess.run(["squeue", "-h", "-r", "-n", name, "-o", fmt], capture_output=True, text=True, timeout=30,
                         check=True)
    return [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]


def rank_pid(run_dir: Path, rank: int, timeout: float = 300) -> int:
    """The pid of the process training ``rank`` of the run in ``run_dir`` (the child its task guards)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for entry in Path("/proc").iterdir():
            try:
                cmd = (entry / "cmdline").read_bytes()
                if entry.name.isdigit() and b"bench.orchestration.launch" in cmd and str(run_dir).encode() in cmd:
                    if f"RANK={rank}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                        return int(entry.name)
            except OSError:
                continue
        time.sleep(0.1)
    raise AssertionError(f"no process trains rank {rank} of {run_dir}")


def wait_for(pred, timeout: float, what: str) -> float:
    t0 = time.time()
    while not pred():
        assert time.time() - t0 < timeout, what
        time.sleep(0.05)
    return time.time() - t0


def kill_rank_after_a_checkpoint(run_dir: Path, rank: int, epoch_before: int) -> dict:
    """SIGKILL ``rank`` once a checkpoint newer than ``epoch_before`` exists; the failure recorded."""
    pid = rank_pid(run_dir, rank)
    ckpt = run_dir / "checkpoint.pt"
    wait_for(lambda: ckpt.exists() and int(io.load_checkpoint(ckpt)["epoch"]) > epoch_before, 300, "no new checkpoint")
    os.kill(pid, signal.SIGKILL)
    took = wait_for(lambda: (run_dir / "result.json").exists() and io.read_json(run_dir / "result.json").get("pid") == pid,
                    DEATH_RECORDED_S, "the death was not recorded")
    result = io.read_json(run_dir / "result.json")
    assert (result["status"], result["kind"], result["rank"], result["signal"]) == ("failed", "rank-death", rank,
                                                                                    "SIGKILL"), result
    assert result["host"] == socket.gethostname() and result["pid"] == pid and result["recorded_by"] == "slurm-task"
    print(f"rank {rank} killed: recorded {took:.1f} s later")
    return result


def test_a_killed_rank_of_a_slurm_job_is_recorded_and_the_run_resumed(slurm_cluster, tmp_path, run_sambench,
                                                                       write_file):
    suite = write_file("s.yaml", """
        name: ddp-kill
        defaults: {dataset: digits, model: vit_ci, epochs: 5, batch_size: 64, variant: sam, mask: norm_only,
                   rho: 0.5, device: cpu, nproc: 2, ascent: local, logging: {tensorboard: false}}
        slurm: {nodes: 1, cpus_per_task: 1, timeout_min: 10}
    """)
    out = tmp_path / "out"
    epoch = 0
    for victim in (1, 0):
        sub = run_sambench("run", suite, "--executor", "slurm", "--out", out, "--no-wait", timeout=120)
        assert sub.returncode == 0, sub.stdout + sub.stderr
        (run_dir,) = [d for d in (out / "ddp-kill").iterdir() if (d / "config.json").is_file()]
        result = kill_rank_after_a_checkpoint(run_dir, victim, epoch)
        epoch = result["epochs"]
        assert epoch >= 1
        wait_for(lambda: not squeue("sambench-ddp-kill"), 60, "the job did not end")  # srun stopped the other rank
    status = run_sambench("status", out / "ddp-kill", timeout=60)
    assert "1 runs: 0 done, 0 diverged, 1 failed" in status.stdout and "process 0 ended with signal SIGKILL" in \
        status.stdout, status.stdout
    final = run_sambench("run", suite, "--executor", "slurm", "--out", out, timeout=300)
    assert final.returncode == 0, final.stdout + final.stderr
    done = io.read_json(run_dir / "result.json")
    assert done["status"] == "done" and done["epochs"] == 5 and done["world_size"] == 2
    logs = sorted((out / "ddp-kill" / ".submitit").glob("*_0_log.out"), key=lambda p: p.stat().st_mtime)
    last = logs[-1].read_text()
    m = re.search(r"resuming after epoch (\d+)/5", last)
    assert m and int(m.group(1)) == epoch, last
    assert [int(e) for e in re.findall(r"\] epoch (\d+)/5  train", last)] == list(range(epoch + 1, 6)), last
    assert [r["epoch"] for r in io.read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3, 4, 5]


def test_sigkill_of_sambench_run_while_submitting_leaves_the_queued_arrays_known(slurm_cluster, tmp_path,
                                                                                  run_sambench, sambench_env):
    seeds = ", ".join(map(str, range(50)))
    suite = tmp_path / "q.yaml"
    suite.write_text("name: queued\ndefaults: {dataset: digits, model: resnet_ci, epochs: 1, mask: norm_only, "
                     "device: cpu}\ngrid: {rho: [0.1, 0.2, 0.3, 0.4, 0.5]}\n"
                     f"seeds: [{seeds}]\nslurm: {{cpus_per_task: 1, timeout_min: 5, additional_parameters: "
                     "{hold: true}}\n")
    out = tmp_path / "out"
    try:
        proc = subprocess.Popen([sys.executable, "-m", "bench", "run", str(suite), "--executor", "slurm", "--out",
                                 str(out)], env=sambench_env, cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        wait_for(lambda: squeue("sambench-queued") or proc.poll() is not None, 120, "no array queued")
        os.kill(proc.pid, signal.SIGKILL)  # as soon as the first array is queued
        proc.wait()
        queued = set(squeue("sambench-queued"))
        assert 1 <= len(queued) <= 250
        status = run_sambench("status", out / "queued", timeout=60)
        m = re.search(r"250 runs: .* (\d+) new, (\d+) running", status.stdout)
        assert m and int(m.group(2)) == len(queued) and int(m.group(1)) == 250 - len(queued), status.stdout
        again = run_sambench("run", suite, "--executor", "slurm", "--out", out, "--no-wait", timeout=180)
        assert again.returncode == 0, again.stdout + again.stderr
        assert f"-> submitting {250 - len(queued)}" in again.stdout, again.stdout
        tasks = squeue("sambench-queued", "%i %k")
        assert len(tasks) == 250  # every run queued once
        per_array: dict[str, int] = {}
        for line in tasks:
            per_array[line.split("_")[0]] = per_array.get(line.split("_")[0], 0) + 1
        assert len(per_array) >= 3 and max(per_array.values()) <= 100, per_array  # MaxArraySize=100
        ids, comments = {t.split()[0] for t in tasks}, {t.split()[1] for t in tasks}
        for d in (out / "queued").iterdir():
            if not d.name.startswith("."):
                info = io.read_json(d / "job.json")  # each run: the one live task that holds it, or its array
                assert (len(info["jobs"]) == 1 and info["jobs"][0]["job_id"] in ids) or (
                    not info["jobs"] and info["comment"] in comments), info
    finally:
        subprocess.run(["scancel", "-n", "sambench-queued"], check=False, timeout=30)


def test_a_diverging_run_in_an_array_is_recorded_and_the_others_finish(slurm_cluster, tmp_path, run_sambench,
                                                                       plan_counts, write_file):
    suite = write_file("d.yaml", """
        name: diverge
        defaults: {dataset: digits, model: resnet_ci, epochs: 2, mask: norm_only, rho: 0.5, device: cpu,
                   logging: {tensorboard: false}}
        grid:
          - {base: {lr: 1.0e+12}}
          - {base: {lr: 0.1}, seed: [0, 1]}
        slurm: {cpus_per_task: 1, timeout_min: 10, runs_per_job: 2}
    """)
    out = tmp_path / "out"
    proc = run_sambench("run", suite, "--executor", "slurm", "--out", out, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "diverge: 3 runs: 2 done, 1 diverged, 0 failed" in proc.stdout, proc.stdout
    results = sorted(((io.read_json(d / "config.json")["config"]["base"]["lr"], io.read_json(d / "result.json"))
                      for d in (out / "diverge").iterdir() if (d / "config.json").is_file()), key=lambda t: t[0])
    assert [(lr, r["status"]) for lr, r in results] == [(0.1, "done"), (0.1, "done"), (1e12, "diverged")]
    assert results[-1][1]["test_acc"] is None and results[-1][1]["epochs"] == 1  # stopped at its first epoch
    jobs = {io.read_json(d / "job.json")["jobs"][0]["job_id"] for d in (out / "diverge").iterdir()
            if (d / "config.json").is_file()}
    assert len(jobs) == 2  # 3 runs, 2 per task: the diverging run shares its task with a run that finished


def test_a_one_process_job_killed_outright_is_recorded_from_slurms_accounting(slurm_cluster, tmp_path, run_sambench,
                                                                              write_file):
    """The job's only process SIGKILLed (what the OOM killer does): nothing in the job can say so; the next
    `sambench status` (or run) reads how the job ended from sacct and records it."""
    suite = write_file("k.yaml", """
        name: killed
        defaults: {dataset: digits, model: resnet_ci, epochs: 30, mask: norm_only, rho: 0.5, device: cpu,
                   logging: {tensorboard: false}}
        slurm: {cpus_per_task: 1, timeout_min: 10}
    """)
    out = tmp_path / "out"
    sub = run_sambench("run", suite, "--executor", "slurm", "--out", out, "--no-wait", timeout=120)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    (run_dir,) = [d for d in (out / "killed").iterdir() if (d / "config.json").is_file()]
    job_id = io.read_json(run_dir / "job.json")["jobs"][0]["job_id"]
    wait_for(lambda: (run_dir / "checkpoint.pt").exists(), 300, "no checkpoint")
    (task,) = [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and _is_task(e, out)]
    os.kill(task, signal.SIGKILL)
    wait_for(lambda: not squeue("sambench-killed"), 60, "the job did not end")
    deadline = time.time() + 60  # (slurmctld hands the job's end to the accounting database)
    while True:
        status = run_sambench("status", out / "killed", timeout=60)
        if "1 failed" in status.stdout or time.time() > deadline:
            break
        time.sleep(2)
    assert "1 runs: 0 done, 0 diverged, 1 failed" in status.stdout, status.stdout
    result = io.read_json(run_dir / "result.json")
    assert (result["kind"], result["rank"], result["signal"], result["recorded_by"]) == (
        "job-ended", 0, "SIGKILL", "runner"), result
    assert result["host"] == socket.gethostname() and result["job_id"] == job_id and result["epochs"] >= 1
    assert f"SLURM job {job_id} ended FAILED" in result["error"]


def _is_task(entry: Path, out: Path) -> bool:
    try:
        cmd = (entry / "cmdline").read_bytes()
    except OSError:
        return False
    argv0 = cmd.split(b"\0", 1)[0]
    # the job's python process (not srun, which names the same command line in its arguments)
    return b"python" in Path(argv0.decode(errors="replace")).name.encode() and b"submitit.core._submit" in cmd \
        and str(out).encode() in cmd


def test_more_tasks_than_the_clusters_max_job_count_are_refused_naming_runs_per_job(slurm_cluster, tmp_path):
    from bench.errors import InvalidInput
    from bench.orchestration import executors
    from bench.rundir import RunState

    limit = executors.cluster_limit("MaxJobCount", 0)
    assert limit == 100_000  # bench/slurm/slurm.conf.in
    runs = [RunState(f"{i:012x}", {}, tmp_path / str(i), "new") for i in range(limit + 1)]
    executors.check_slurm_limits(runs, {"runs_per_job": 2})  # 50,001 tasks: fine
    with pytest.raises(InvalidInput, match=r"100,001 SLURM tasks, more than the cluster's MaxJobCount=100,000") as e:
        executors.check_slurm_limits(runs, {})
    assert "slurm.runs_per_job to at least 2" in str(e.value)
