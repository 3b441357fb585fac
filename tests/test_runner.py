"""The suite runner: debug/local executors end to end, resubmission, dry run, status,
resume after SIGKILL, and two suites sharing one results folder."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from bench import io, rundir
from bench.cli import app as cli
from bench.engine import train
from bench.orchestration import executors, job
from bench.orchestration.suite import load_suite

REPO = Path(__file__).resolve().parents[1]

TINY = """\
name: tiny
defaults: {dataset: digits, model: resnet_ci, epochs: 1, rho: 0.1}
grid:
  - {mask: [all, norm_only]}
  - {model: vit_ci, mask: norm_only, rho: 0.5}
include:
  - {variant: none}
"""


def listing(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*") if p.is_file()}


def test_debug_end_to_end_resubmit_failure_and_status(tmp_path, capsys, monkeypatch, write_file, plan_counts):
    suite = write_file("tiny.yaml", TINY)
    out = tmp_path / "out"
    ids = load_suite(suite).run_ids

    # a crash in one run is recorded and does not stop the others
    real_train = train._train
    boom = ids[1]

    def flaky(cfg, rid, *rest):
        if rid == boom:
            raise RuntimeError("simulated crash")
        return real_train(cfg, rid, *rest)

    monkeypatch.setattr(train, "_train", flaky)
    assert cli.main(["run", str(suite), "--out", str(out), "--executor", "debug"]) == 1
    text = capsys.readouterr().out
    assert plan_counts(text) == {"runs": 4, "done": 0, "diverged": 0, "failed": 0, "corrupt": 0,
                           "resume": 0, "new": 4, "running": 0, "submitting": 4}
    assert "tiny: 4 runs: 3 done, 0 diverged, 1 failed, 0 corrupt, 0 to resume, 0 new, 0 running (" in text
    for rid in ids:
        d = out / "tiny" / rid
        res = io.read_json(d / "result.json")
        assert res["status"] == ("failed" if rid == boom else "done")
        assert io.read_json(d / "config.json")["run_id"] == rid
        assert io.read_json(d / "job.json")["executor"] == "debug"
    assert (out / "tiny" / ".submitit").is_dir()

    # status: counts from the folder, the failed run's id and error (other folders are not runs)
    (out / "tiny" / "figures").mkdir()
    assert cli.main(["status", str(out / "tiny")]) == 0
    text = capsys.readouterr().out
    assert "tiny: 4 runs: 3 done, 0 diverged, 1 failed, 0 corrupt, 0 to resume, 0 new, 0 running" in text
    assert f"failed {boom}: RuntimeError: simulated crash" in text
    assert cli.main(["status", str(suite), "--out", str(out)]) == 0
    assert "3 done, 0 diverged, 1 failed" in capsys.readouterr().out
    (out / "tiny" / "figures").rmdir()

    # resubmission retries only the failed run
    monkeypatch.setattr(train, "_train", real_train)
    done_before = {rid: (out / "tiny" / rid / "result.json").stat().st_mtime for rid in ids if rid != boom}
    assert cli.main(["run", str(suite), "--out", str(out), "--executor", "debug"]) == 0
    text = capsys.readouterr().out
    assert plan_counts(text)["submitting"] == 1 and plan_counts(text)["failed"] == 1 and plan_counts(text)["done"] == 3
    assert io.read_json(out / "tiny" / boom / "result.json")["status"] == "done"
    assert all((out / "tiny" / rid / "result.json").stat().st_mtime == t for rid, t in done_before.items())

    # and then nothing at all
    before = listing(out)
    assert cli.main(["run", str(suite), "--out", str(out), "--executor", "debug"]) == 0
    text = capsys.readouterr().out
    assert plan_counts(text) == {"runs": 4, "done": 4, "diverged": 0, "failed": 0, "corrupt": 0,
                           "resume": 0, "new": 0, "running": 0, "submitting": 0}
    assert listing(out) == before

    # dry run: the table, the count, nothing written (existing and fresh folders)
    for folder, state in ((out, "done"), (tmp_path / "fresh", "new")):
        assert cli.main(["run", str(suite), "--out", str(folder), "--dry-run", "--set", "log_every=5"]) == 0
        text = capsys.readouterr().out
        lines = text.strip().splitlines()
        assert lines[0].split() == ["id", "dataset", "model", "base", "variant", "mask", "sparsity", "rho", "seed",
                                   "state"]
        rows = {ln.split()[0]: ln.split() for ln in lines[1:5]}
        assert set(rows) == set(ids) and all(r[-1] == state for r in rows.values())
        assert "dry run: nothing written" in lines[-1]
    assert listing(out) == before
    assert not (tmp_path / "fresh").exists()


def test_run_job_continues_after_a_broken_run(tmp_path, write_file):
    s = load_suite(write_file("s.yaml", "name: s\ndefaults: {dataset: digits, model: resnet_ci, epochs: 1}\n"
                                              "grid: {mask: [norm_only, all]}\n"))
    dirs = []
    for rid, cfg in s.items():
        d = tmp_path / "out" / rid
        d.mkdir(parents=True)
        io.write_json(d / "config.json", {"run_id": rid, "suite": "s", "config": cfg})
        dirs.append(d)
    (dirs[0] / "config.json").write_text("{not json")
    outcomes = job.RunJob()([str(d) for d in dirs], "s", None, None, None)
    assert [o["status"] for o in outcomes] == ["failed", "done"]
    assert io.read_json(dirs[0] / "result.json")["status"] == "failed"
    assert io.read_json(dirs[1] / "result.json")["status"] == "done"
    # submitit requeues the same callable with the same arguments after a timeout/preemption
    delayed = job.RunJob().checkpoint([str(d) for d in dirs], "s")
    assert delayed.args == ([str(d) for d in dirs], "s")


def test_slurm_up_and_auto(tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    ctl = fake / "scontrol"
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    ctl.write_text("#!/bin/sh\necho 'Slurmctld(primary) at node is DOWN'\nexit 1\n")
    ctl.chmod(0o755)
    assert executors.slurm_up() is False
    ctl.write_text("#!/bin/sh\necho 'Slurmctld(primary) at node is UP'\n")
    assert executors.slurm_up() is True


def test_locked_run_is_left_alone_and_waited_for(tmp_path, capsys, monkeypatch, write_file, plan_counts):
    suite = write_file("s.yaml", "name: s\ndefaults: {dataset: digits, model: resnet_ci, epochs: 1, "
                                        "mask: norm_only}\ngrid: {rho: [0.5, 0.1]}\n")
    s = load_suite(suite)
    (shared, shared_cfg), _ = s.items()
    shared_dir = tmp_path / "out" / "s" / shared
    gate = threading.Event()
    real_train = train._train

    def gated(cfg, rid, *rest):
        if rid == shared:
            assert gate.wait(120)
        return real_train(cfg, rid, *rest)

    monkeypatch.setattr(train, "_train", gated)
    # "another process" (a thread here) trains the shared run and holds its lock
    elsewhere = threading.Thread(target=train.run, args=(shared_cfg, shared_dir),
                                 kwargs={"progress": False, "log": lambda m: None})
    elsewhere.start()
    try:
        deadline = time.time() + 60
        while not ((shared_dir / ".lock").exists() and (shared_dir / ".lock").read_text().strip()
                   and (shared_dir / "config.json").exists()):
            assert time.time() < deadline
            time.sleep(0.01)
        assert rundir.lock_held(shared_dir)
        # a job that reaches a locked run leaves it and goes on
        assert job.RunJob()([str(shared_dir)], "s", None, None, None) == [
            {"run_id": shared, "status": "locked", "error": None}]
        # a suite run counts it as running elsewhere, submits the rest, and waits for it
        threading.Timer(1.0, gate.set).start()
        assert cli.main(["run", str(suite), "--out", str(tmp_path / "out"), "--executor", "debug"]) == 0
    finally:
        gate.set()
        elsewhere.join(120)
    text = capsys.readouterr().out
    assert plan_counts(text) == {"runs": 2, "done": 0, "diverged": 0, "failed": 0, "corrupt": 0,
                           "resume": 0, "new": 1, "running": 1, "submitting": 1}
    assert "s: 2 runs: 2 done, 0 diverged, 0 failed, 0 corrupt, 0 to resume, 0 new, 0 running (" in text
    assert [m["epoch"] for m in io.read_jsonl(shared_dir / "metrics.jsonl")] == [1]
    assert not (shared_dir / "job.json").exists()  # never submitted by the suite


def test_preempted_job_is_requeued_and_resumes(tmp_path, write_file):
    """submitit's preemption path: SIGUSR2 -> RunJob.checkpoint() -> requeue -> resume."""
    import submitit

    s = load_suite(write_file("p.yaml", "name: p\ndefaults: {dataset: digits, model: resnet_ci, epochs: 6, "
                                              "mask: norm_only, rho: 0.5}\n"))
    (rid, cfg), = s.items()
    run_dir = tmp_path / "out" / rid
    run_dir.mkdir(parents=True)
    io.write_json(run_dir / "config.json", {"run_id": rid, "suite": "p", "config": cfg})
    ex = submitit.LocalExecutor(folder=tmp_path / "out" / ".submitit")
    ex.update_parameters(timeout_min=30)
    submitted = ex.submit(job.RunJob(), [str(run_dir)], "p", 1, None, None)
    deadline = time.time() + 120
    while not (run_dir / "checkpoint.pt").exists():
        assert time.time() < deadline and submitted.state == "RUNNING", submitted.state
        time.sleep(0.01)
    pid = submitted._process.pid  # the local controller; the job's python is its child
    (task,) = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    os.kill(int(task), signal.SIGUSR2)  # what SLURM sends before a timeout or preemption
    assert submitted.result() == [{"run_id": rid, "status": "done", "error": None}]
    log = Path(submitted.paths.stdout).read_text()
    assert "checkpoint: requeueing" in log and re.search(r"resuming after epoch [1-5]/6", log), log
    assert [m["epoch"] for m in io.read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert io.read_json(run_dir / "result.json")["status"] == "done"


def _final_params(run_dir: Path) -> dict:
    return io.load_checkpoint(run_dir / "checkpoint.pt")["model"]


def test_sigkill_and_resume_matches_uninterrupted(tmp_path, write_file, sambench_env):
    s = load_suite(write_file("k.yaml", """\
        name: k
        defaults: {dataset: digits, model: resnet_ci, epochs: 6, mask: norm_only, rho: 0.5, device: cpu}
        """))
    (rid, cfg), = s.items()
    killed = tmp_path / "out" / "k" / rid
    killed.mkdir(parents=True)
    io.write_json(killed / "config.json", {"run_id": rid, "suite": "k", "config": cfg})
    # one thread here and in the subprocess: same arithmetic, and no OpenMP oversubscription
    # while both train at once on 2 cores
    code = ("import sys; from bench.orchestration.job import RunJob; "
            "print(RunJob()([sys.argv[1]], 'k', 1, None, None), flush=True)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(killed)], env=sambench_env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not (killed / "checkpoint.pt").exists():  # written at the end of every epoch
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.time() < deadline
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "result.json").exists()
    epoch_at_kill = int(io.load_checkpoint(killed / "checkpoint.pt")["epoch"])
    assert 1 <= epoch_at_kill < 6
    assert not rundir.lock_held(killed)  # the kernel released the dead process's lock

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        reference = tmp_path / "ref"  # the uninterrupted run
        ref = train.run(cfg, reference, suite="k", progress=False, log=lambda m: None)
        outcomes = job.RunJob()([str(killed)], "k", 1, None, None)
    finally:
        torch.set_num_threads(threads)
    assert outcomes == [{"run_id": rid, "status": "done", "error": None}]
    res = io.read_json(killed / "result.json")
    for key in ("status", "test_acc", "test_loss", "train_loss", "train_acc", "epochs", "perturbed_fraction"):
        assert res[key] == ref[key], key
    a, b = _final_params(killed), _final_params(reference)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [m["epoch"] for m in io.read_jsonl(killed / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_two_suites_share_one_results_folder(tmp_path, write_file, sambench_env):
    common = "defaults: {dataset: digits, model: resnet_ci, epochs: 1, mask: norm_only}\n"
    # same suite name, one run in common (rho 0.5, listed first in both, to collide on its lock)
    a = write_file("a.yaml", "name: shared\n" + common + "grid: {rho: [0.5, 0.1, 0.2]}\n")
    b = write_file("b.yaml", "name: shared\n" + common + "grid: {rho: [0.5, 0.3]}\n")
    out = tmp_path / "out"
    env = dict(sambench_env, OMP_NUM_THREADS="1")  # two suites at once on 2 cores: one thread per worker
    # suite a with two workers (they share its runs through the run locks), b with one
    procs = [subprocess.Popen([sys.executable, "-m", "bench", "run", str(f), "--out", str(out), "--executor", "local",
                               "--max-parallel", n], env=env, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for f, n in ((a, "2"), (b, "1"))]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text
    ids = set(load_suite(a).run_ids) | set(load_suite(b).run_ids)
    assert len(ids) == 4
    root = out / "shared"
    assert {d.name for d in root.iterdir() if not d.name.startswith(".")} == ids
    logs = "\n".join(f.read_text() for f in (root / ".submitit").glob("*_log.out"))
    for rid in ids:
        res = json.loads((root / rid / "result.json").read_text())  # valid JSON
        assert res["status"] == "done" and res["run_id"] == rid
        assert [m["epoch"] for m in io.read_jsonl(root / rid / "metrics.jsonl")] == [1]
        assert logs.count(f"[{rid}] epoch 1/1") == 1, rid  # trained exactly once
    assert not list(root.rglob("*.tmp"))
    for text in outputs:
        assert "4 runs" not in text and re.search(r"shared: [23] runs: [23] done", text), text
