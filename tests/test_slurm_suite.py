"""Suites through the real single-node SLURM cluster (bench/slurm/up.sh): the smoke suite end to
end, a resubmission that submits nothing, and a cancelled job that resumes from its checkpoint.

Needs root (the fixture installs and starts slurm/munge/mariadb); SAMBENCH_NO_SLURM=1 skips.
Budget: about 6 minutes in all (the smoke suite is ~1.5 min on 2 cores).
"""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from bench import io

try:  # tests/ is on sys.path under pytest's default (prepend) import mode
    from slurm_fixture import slurm_cluster  # fixture import
except ImportError:  # tests/ turned into a package
    from tests.slurm_fixture import slurm_cluster  # noqa: F401

pytestmark = pytest.mark.slurm


def sacct_jobs(since: str, name: str) -> list[str]:
    """Ids of the jobs named ``name`` submitted since then (up.sh submits a probe job of its own)."""
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID", "-S", since, "--name", name],
                         capture_output=True, text=True,
                         timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    return sorted(line for line in out.stdout.split() if line)


def sacct_state(job_id: str) -> str:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id], capture_output=True, text=True,
                         timeout=30, check=False)
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""


def in_queue(job_id: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, timeout=30, check=False)
    return job_id in out.stdout.split()


def test_smoke_suite_through_slurm_and_resubmit(slurm_cluster, tmp_path, run_sambench, plan_counts):
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 2))
    out = tmp_path / "out"
    t0 = time.time()
    first = run_sambench("run", "suites/smoke.yaml", "--executor", "slurm", "--out", str(out), timeout=300)
    wall = time.time() - t0
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    c = plan_counts(first.stdout)
    assert c["new"] == c["runs"] == c["submitting"] == 76
    assert wall < 300, wall
    root = out / "smoke"
    runs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    assert len(runs) == 76
    for d in runs:
        assert io.read_json(d / "result.json")["status"] == "done", d
        assert io.read_json(d / "job.json")["executor"] == "slurm"
    jobs = sacct_jobs(since, "sambench-smoke")
    assert len(jobs) == 2, jobs  # 76 runs, 38 per job: one array of 2 tasks

    again = run_sambench("run", "suites/smoke.yaml", "--executor", "slurm", "--out", str(out), timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    c = plan_counts(again.stdout)
    assert c["done"] == 76 and c["submitting"] == 0, again.stdout
    assert sacct_jobs(since, "sambench-smoke") == jobs  # nothing new reached the cluster
    print(f"smoke suite through SLURM: {wall:.1f} s")


def test_cancelled_job_resumes_from_checkpoint(slurm_cluster, tmp_path, run_sambench, plan_counts):
    suite = tmp_path / "resume.yaml"
    suite.write_text("name: resume\n"
                     "defaults: {dataset: digits, model: resnet20, epochs: 12, mask: norm_only, rho: 0.5}\n"
                     "slurm: {cpus_per_task: 1, timeout_min: 10}\n")
    out = tmp_path / "out"
    sub = run_sambench("run", str(suite), "--executor", "slurm", "--out", str(out), "--no-wait", timeout=120)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    assert plan_counts(sub.stdout)["submitting"] == 1
    (run_dir,) = [d for d in (out / "resume").iterdir() if not d.name.startswith(".")]
    job_id = io.read_json(run_dir / "job.json")["jobs"][0]["job_id"]

    deadline = time.time() + 120
    while not (run_dir / "checkpoint.pt").exists():  # after epoch 1
        assert time.time() < deadline, "no checkpoint after 120 s"
        assert not (run_dir / "result.json").exists()
        time.sleep(0.05)
    subprocess.run(["scancel", job_id], check=True, timeout=30)
    deadline = time.time() + 90
    while in_queue(job_id) or not sacct_state(job_id).startswith("CANCELLED"):
        assert time.time() < deadline, f"job {job_id}: {sacct_state(job_id)}"
        time.sleep(0.5)
    assert not (run_dir / "result.json").exists(), "the run finished before it was cancelled"
    epoch_at_cancel = int(io.load_checkpoint(run_dir / "checkpoint.pt")["epoch"])
    assert 1 <= epoch_at_cancel < 12

    status = run_sambench("status", str(out / "resume"), timeout=60)
    assert "1 runs: 0 done, 0 diverged, 0 failed, 0 corrupt, 1 to resume, 0 new, 0 running" in status.stdout, \
        status.stdout

    again = run_sambench("run", str(suite), "--executor", "slurm", "--out", str(out), timeout=180)
    assert again.returncode == 0, again.stdout + again.stderr
    c = plan_counts(again.stdout)
    assert c["resume"] == 1 and c["submitting"] == 1, again.stdout
    result = io.read_json(run_dir / "result.json")
    assert result["status"] == "done" and result["epochs"] == 12
    assert [m["epoch"] for m in io.read_jsonl(run_dir / "metrics.jsonl")] == list(range(1, 13))
    new_job = io.read_json(run_dir / "job.json")["jobs"][0]
    assert new_job["job_id"] != job_id
    log = Path(new_job["stdout"]).read_text()
    m = re.search(r"resuming after epoch (\d+)/12", log)
    assert m and int(m.group(1)) >= epoch_at_cancel, log
    trained = [int(e) for e in re.findall(r"\] epoch (\d+)/12  train", log)]
    assert trained == list(range(int(m.group(1)) + 1, 13)), log  # no epoch trained twice
