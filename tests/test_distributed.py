"""Runs across 2 processes through real torch.distributed process groups (gloo on CPU).

- tests/dist_checks.py, started as 2 ranks by bench.orchestration.launch: SAM with ``ascent: synced`` across the
  2 processes equals one-process SAM on the global batch (every variant, masks all and norm_only);
  ``ascent: local`` equals one process with m-sharpness m = per-process batch (and SAM's rule written
  out shard by shard); ``accumulate: 2`` at batch B equals one step at batch 2B; an fp16 overflow in
  one rank's ascent skips the step on both, weights bit-equal; the ascent all-reduce carries only
  the perturbed tensors, in one call per step; only rank 0 writes a run's files.
- whole runs: ``sambench train --nproc 2`` ends with the parameters and test_loss of the one-process
  run; a killed rank fails the run within 120 s and the re-run resumes it to the same parameters (and
  under torchrun, the killed rank is named);
  docs/distributed.md's torchrun command; a suite with ``nproc: 2`` through the local executor (rank 1 killed: the
  failure names it, the next run resumes); (SLURM) a
  2-process run as one job of 2 tasks.

Budget: about 2.5 minutes on 2 cores (without the SLURM test).
"""
from __future__ import annotations

import json
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench import config, io
from bench.engine import train
from bench.orchestration import launch

ROOT = Path(__file__).resolve().parents[1]


def documented_torchrun_command() -> list[str]:
    """docs/distributed.md's ``torchrun --standalone --nproc_per_node=2 -m bench train ...`` line."""
    text = (ROOT / "docs" / "distributed.md").read_text()
    line = next(ln for ln in text.splitlines() if "torchrun --standalone --nproc_per_node=2 -m bench train" in ln)
    return shlex.split(line.split("#")[0])


def train_args(argv: list[str]) -> list[str]:
    """The arguments after ``train``, without ``--out DIR``."""
    args = argv[argv.index("train") + 1:]
    at = args.index("--out")
    return args[:at] + args[at + 2:] + ["--device", "cpu"]


# the documented run: a LayerNorm ViT without dropout, fp32, augmentation on (keyed to the sample, so 1 and
# 2 processes agree); RUN_CFG is the same run as a config (the tests check that the run ids agree)
RUN = train_args(documented_torchrun_command())
RUN_CFG = {"dataset": "digits", "model": "vit_ci", "variant": "sam", "mask": "norm_only", "rho": 0.5,
           "base.lr": 0.05, "epochs": 3, "batch_size": 64, "device": "cpu"}


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-5, atol=1e-6), (name, float((a[name] - b[name]).abs().max()))


# --- the checks inside 2 ranks ------------------------------------------------------------------

@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """The reports of the 2 ranks of tests/dist_checks.py."""
    out = tmp_path_factory.mktemp("dist")
    env_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    os.environ["PYTHONPATH"] = env_path  # the ranks import this checkout
    failure = launch.start_and_watch([sys.executable, str(ROOT / "tests" / "dist_checks.py"), str(out)], 2, 1)
    assert failure is None, failure.describe()
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)], out


def test_synced_ascent_is_one_process_sam_of_the_global_batch(ranks):
    reports, _ = ranks
    keys = [k for k in reports[0] if k.startswith("synced/")]
    assert len(keys) == 16  # 8 variants x masks all, norm_only
    for k in keys:
        for rep in reports:
            assert rep[k]["close"], (k, rep[k]["max_diff"])  # allclose rtol 1e-5, atol 1e-6, after 3 steps
        assert reports[0][k]["params"] == reports[1][k]["params"], k  # both ranks hold the same weights


def test_local_ascent_is_m_sharpness_with_m_the_per_process_batch(ranks):
    reports, _ = ranks
    for k in ("local/sam", "local/fsam", "local/gsam", "local/looksam", "local/sam/hand"):
        for rep in reports:
            assert rep[k]["close"], (k, rep[k]["max_diff"])
    assert reports[0]["local/sam"]["params"] == reports[1]["local/sam"]["params"]


def test_accumulate_2_at_batch_b_is_one_step_at_batch_2b(ranks):
    reports, _ = ranks
    for k in ("accumulate/sam", "accumulate/fsam", "accumulate/looksam"):
        for rep in reports:
            assert rep[k]["close"], (k, rep[k]["max_diff"])


def test_fp16_overflow_in_one_ranks_ascent_skips_the_step_everywhere(ranks):
    reports, _ = ranks
    for rep in reports:
        for ascent in ("synced", "local"):
            r = rep[f"fp16/ascent_overflow/{ascent}"]
            assert r["bit_equal"] and r["base_state_empty"] and r["variant_state_empty"], (ascent, r)
            assert r["skipped"] == 1 and r["scale"] == 2.0 ** 15  # backed off from 2^16
        assert rep["fp16/no_overflow"]["close"], rep["fp16/no_overflow"]["max_diff"]  # scaling is exact
        assert rep["batchnorm"]["finite"]
    assert reports[0]["batchnorm"]["params"] == reports[1]["batchnorm"]["params"]


def test_ascent_all_reduces_only_the_perturbed_tensors(ranks):
    rep = ranks[0][0]
    sizes = rep["sizes"]
    assert rep["bytes/norm_only/synced"] == {"ascent": 4 * (sizes["norm.weight"] + sizes["norm.bias"]),
                                             "calls": 3, "steps": 3}  # one call per step
    assert rep["bytes/all/synced"]["ascent"] == 4 * sum(sizes.values())
    assert rep["bytes/all/local"] == {"ascent": 0, "calls": 0, "steps": 3}
    for name in ("resnet20", "wrn28_10"):
        dense, sam_on = rep[f"bytes/{name}/all"], rep[f"bytes/{name}/norm_only"]
        assert dense["ascent"] == 4 * rep[f"bytes/{name}/params"]
        assert sam_on["ascent"] == 4 * sam_on["perturbed"]
    ratio = rep["bytes/wrn28_10/norm_only"]["ascent"] / rep["bytes/wrn28_10/all"]["ascent"]
    assert ratio <= 0.002, ratio  # SAM-ON on wrn28_10: ~0.05% of dense SAM's ascent bytes


def test_only_rank_0_writes_the_run_files(ranks):
    reports, out = ranks
    assert reports[1]["files"] == {"written": [], "status": "done"}
    assert reports[0]["files"]["status"] == "done"
    # (loggers.json: the loggers' resume state; TensorBoard logging is on by default)
    assert {Path(p).name for p in reports[0]["files"]["written"]} == {"config.json", "metrics.jsonl",
                                                                      "checkpoint.pt", "result.json", "loggers.json"}
    assert io.read_json(out / "run" / "result.json")["world_size"] == 2


# --- whole runs -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """docs/distributed.md's torchrun command, run as it stands (its --out replaced): (run folder, process)."""
    argv = documented_torchrun_command()
    assert argv[0].endswith("torchrun")
    argv[0] = str(Path(sys.executable).parent / "torchrun")
    out = tmp_path_factory.mktemp("torchrun") / "run"
    argv[argv.index("--out") + 1] = str(out)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def sambench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "bench", *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_two_processes_end_where_one_process_ends(two_process_run, tmp_path):
    torchrun_dir, _ = two_process_run
    one = train.run(dict(RUN_CFG), tmp_path / "one", progress=False, log=lambda m: None)
    two = io.read_json(torchrun_dir / "result.json")
    assert one["status"] == two["status"] == "done"
    assert one["run_id"] == two["run_id"]  # synced: the number of processes is not in the run id
    assert (one["world_size"], two["world_size"], two["backend"]) == (1, 2, "gloo")
    assert math.isclose(one["test_loss"], two["test_loss"], rel_tol=1e-5), (one["test_loss"], two["test_loss"])
    assert math.isclose(one["train_loss"], two["train_loss"], rel_tol=1e-5)
    before = weights(tmp_path / "one")
    assert_same_weights(before, weights(torchrun_dir))
    def files(d):  # (a TensorBoard event file's name holds the host, the time and the process id)
        return sorted("events.out.tfevents" if p.name.startswith("events.out.tfevents") else p.name
                      for p in d.iterdir())

    assert files(torchrun_dir) == files(tmp_path / "one")


def ranks_of(pid: int, n: int, timeout: float = 60) -> dict[int, int]:
    """{rank: pid} of the processes a launcher started."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        found = {}
        for kid in kids:
            env = Path(f"/proc/{kid}/environ").read_bytes().split(b"\0")
            rank = [e for e in env if e.startswith(b"RANK=")]
            if rank:
                found[int(rank[0][5:])] = int(kid)
        if len(found) == n:
            return found
        time.sleep(0.1)
    raise AssertionError(f"the launcher {pid} did not start {n} processes")


DEATH_RECORDED_S = 30   # a rank's death is in result.json this soon (launch: <= STOP_GRACE_S + lock wait)


def assert_death_recorded(result: dict, rank: int, recorded_by: str, pid: int | None = None) -> None:
    """result.json names the dead rank, its signal, host and pid, in the one failure schema."""
    assert (result["kind"], result["rank"], result["signal"]) == ("rank-death", rank, "SIGKILL"), result
    assert result["host"] == socket.gethostname() and result["recorded_by"] == recorded_by, result
    assert pid is None or result["pid"] == pid
    assert any(r["signal"] == "SIGKILL" and r["rank"] == rank for r in result["reports"])
    assert result["epochs"] >= 1  # the checkpoint the next run resumes from


def rank_pids(marker: str, timeout: float = 120, guarded: bool = False) -> dict[int, int]:
    """{rank: pid} of the processes training a run: ``python -m bench.orchestration.launch RUN_DIR``, or
    (``guarded``) the guarded children of torchrun's workers."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = {}
        for entry in Path("/proc").iterdir():
            try:
                cmd = (entry / "cmdline").read_bytes()
                if entry.name.isdigit() and marker.encode() in cmd:
                    env = (entry / "environ").read_bytes().split(b"\0")
                    rank = [e for e in env if e.startswith(b"RANK=")]
                    wanted = b"SAMBENCH_GUARDED=1" in env if guarded else b"bench.orchestration.launch" in cmd
                    if rank and wanted:
                        found[int(rank[0][5:])] = int(entry.name)
            except OSError:
                continue
        if len(found) == 2:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no 2 processes training {marker}")


def test_a_killed_rank_fails_the_run_and_the_rerun_resumes_it(two_process_run, tmp_path):
    """``sambench train --nproc 2``: rank 0 (the one that writes result.json) is killed after the first
    epoch's checkpoint; the re-run ends where the uninterrupted torchrun run ended."""
    torchrun_dir, _ = two_process_run
    victim = 0
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="2", SAMBENCH_DIST_TIMEOUT_S="60")
    proc = subprocess.Popen([sys.executable, "-m", "bench", "train", *RUN, "--nproc", "2", "--out", str(out)],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        pids = ranks_of(proc.pid, 2)
        deadline = time.time() + 120
        while not (out / "checkpoint.pt").exists():  # written (atomically) after the epoch's metrics
            assert time.time() < deadline and proc.poll() is None, "no epoch finished"
            time.sleep(0.05)
        os.kill(pids[victim], signal.SIGKILL)
        t_kill = time.time()
        output, _ = proc.communicate(timeout=120)
        waited = time.time() - t_kill
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, output[-3000:]
    assert waited < DEATH_RECORDED_S, waited
    result = io.read_json(out / "result.json")
    assert result["status"] == "failed", result
    assert f"process {victim} ended with signal SIGKILL" in result["error"], result["error"]
    assert_death_recorded(result, victim, "launcher", pids[victim])
    assert (out / "checkpoint.pt").exists()

    again = sambench("train", *RUN, "--nproc", "2", "--out", str(out))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert re.search(r"resuming after epoch [12]/3", again.stdout), again.stdout
    assert io.read_json(out / "result.json")["status"] == "done"
    assert [m["epoch"] for m in io.read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
    assert_same_weights(weights(out), weights(torchrun_dir))  # every rank resumed from the same checkpoint
    print(f"rank {victim} killed: the run ended as failed {waited:.1f} s later")


def test_a_rank_killed_under_torchrun_is_recorded(tmp_path):
    """torchrun's worker guards its rank in a child: rank 1 killed, result.json names it; torchrun stops rank 0."""
    out = tmp_path / "run"
    argv = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "bench",
            "train", *RUN, "--epochs", "20", "--out", str(out)]  # (no --log: torchrun takes it for its own --log-dir)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        pids = rank_pids(str(out) + "\0", guarded=True)
        deadline = time.time() + 120
        while not (out / "checkpoint.pt").exists():
            assert time.time() < deadline and proc.poll() is None, "no epoch finished"
            time.sleep(0.05)
        os.kill(pids[1], signal.SIGKILL)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, output[-3000:]
    assert_death_recorded(io.read_json(out / "result.json"), 1, "torchrun-worker", pids[1])


def test_the_documented_torchrun_command_runs(two_process_run):
    out, proc = two_process_run
    result = io.read_json(out / "result.json")
    assert result["status"] == "done" and result["world_size"] == 2 and result["backend"] == "gloo"
    assert proc.stdout.count("done: test accuracy") == 1  # rank 0 reports


def _run_and_kill(suite: Path, out: Path, victim: int, epoch_before: int) -> tuple[dict, str]:
    """`sambench run` of the suite (local executor); SIGKILL rank ``victim`` of its run once a checkpoint
    newer than ``epoch_before`` exists; (result.json, the command's output)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", str(suite), "--executor", "local", "--out", str(out)],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        pids = rank_pids(str(out))
        (run_dir,) = [d for d in (out / "ddp").iterdir() if not d.name.startswith(".")]
        ckpt, deadline = run_dir / "checkpoint.pt", time.time() + 300
        while not (ckpt.exists() and int(io.load_checkpoint(ckpt)["epoch"]) > epoch_before):
            assert time.time() < deadline and proc.poll() is None, "no epoch finished"
            time.sleep(0.05)
        os.kill(pids[victim], signal.SIGKILL)
        t_kill = time.time()
        while not ((run_dir / "result.json").exists() and io.read_json(run_dir / "result.json").get("pid") == pids[victim]):
            assert time.time() - t_kill < DEATH_RECORDED_S, "no result.json after the kill"
            time.sleep(0.05)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, output[-3000:]
    result = io.read_json(run_dir / "result.json")
    assert_death_recorded(result, victim, "launcher", pids[victim])
    assert "1 failed" in output and f"process {victim} ended with signal SIGKILL" in output, output[-3000:]
    return result, output


def test_local_executor_records_a_killed_rank_and_the_next_run_resumes(tmp_path, write_file):
    """A suite of one 2-process run through the local executor: rank 0 (the one that writes the files), then
    rank 1 in the next run, is killed after a checkpoint; result.json names it (rank, signal, host) and the
    next `sambench run` resumes the run from its checkpoint."""
    suite = write_file("s.yaml", """
        name: ddp
        defaults: {dataset: digits, model: vit_ci, epochs: 4, batch_size: 64, variant: sam, mask: norm_only,
                   rho: 0.5, device: cpu, nproc: 2, ascent: local, logging: {tensorboard: false}}
    """)
    out = tmp_path / "out"
    epoch = 0
    for victim in (0, 1):
        failed, _ = _run_and_kill(suite, out, victim, epoch)
        epoch = failed["epochs"]
    again = sambench("run", str(suite), "--executor", "local", "--out", str(out))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    (run_dir,) = [d for d in (out / "ddp").iterdir() if not d.name.startswith(".")]
    log = max((out / "ddp" / ".submitit").glob("*_log.out"), key=lambda p: p.stat().st_mtime).read_text()
    assert f"resuming after epoch {epoch}/4" in log, log[-3000:]
    result = io.read_json(run_dir / "result.json")
    assert result["status"] == "done" and result["world_size"] == 2 and result["backend"] == "gloo", result
    assert [m["epoch"] for m in io.read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3, 4]
    local = config.resolve({**RUN_CFG, "epochs": 4, "batch_size": 64, "base.lr": 0.1, "ascent": "local"})
    assert result["run_id"] == config.run_id({**local, "nproc": 2})
    assert result["run_id"] != config.run_id(local)  # a local ascent's m = batch / processes: in the id
    synced = {**local, "ascent": "synced"}
    assert config.run_id({**synced, "nproc": 2}) == config.run_id(synced)  # a synced one's is not


@pytest.mark.slurm
def test_slurm_trains_a_two_process_run_as_one_job_of_two_tasks(slurm_cluster, tmp_path, write_file):
    """``nproc: 2`` through --executor slurm: ONE job of 2 tasks (submitit), whose tasks join one
    gloo group from submitit's job environment and train the run together."""
    suite = write_file("s.yaml", """
        name: ddp-slurm
        defaults: {dataset: digits, model: vit_ci, epochs: 1, batch_size: 64, variant: sam, mask: norm_only,
                   rho: 0.5, device: cpu, nproc: 2, ascent: local}
        slurm: {nodes: 1, cpus_per_task: 1, timeout_min: 10}
    """)
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 2))
    out = tmp_path / "out"
    proc = sambench("run", str(suite), "--executor", "slurm", "--out", str(out), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = [d for d in (out / "ddp-slurm").iterdir() if d.is_dir() and not d.name.startswith(".")]
    result = io.read_json(run_dir / "result.json")
    assert result["status"] == "done" and result["world_size"] == 2 and result["backend"] == "gloo", result
    assert io.read_json(run_dir / "job.json")["executor"] == "slurm"
    jobs = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID", "-S", since, "--name", "sambench-ddp-slurm"],
                          capture_output=True, text=True, timeout=30, check=True).stdout.split()
    assert len(jobs) == 1, jobs  # one job for the run
    steps = subprocess.run(["sacct", "-n", "-P", "-o", "JobID,NTasks,State", "-j", jobs[0]], capture_output=True,
                           text=True, timeout=30, check=True).stdout.splitlines()
    assert any(line.split("|")[1] == "2" and line.split("|")[2] == "COMPLETED" for line in steps), steps  # 2 tasks


def test_perf_nproc_2_reports_ms_and_bytes_per_step(tmp_path):
    out = tmp_path / "perf.json"
    proc = sambench("perf", "--nproc", "2", "--device", "cpu", "--model", "resnet_ci", "--dataset", "digits",
                    "--steps", "2", "--warmup", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ascent all-reduce" in proc.stdout and proc.stdout.count("model resnet_ci") == 1  # rank 0 prints
    records = {r["label"]: r for r in json.loads(out.read_text())}
    assert set(records) == {"sgd", "sam all synced", "sam all local", "sam norm_only synced", "sam norm_only local"}
    from bench.models import create_model_for

    model = create_model_for("resnet_ci", "digits")
    total = sum(p.numel() for p in model.parameters())
    norms = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters())
    assert all(r["nproc"] == 2 and r["ms"] > 0 and r["descent_bytes"] == 4 * total for r in records.values())
    assert records["sam all synced"]["ascent_bytes"] == 4 * total
    assert records["sam norm_only synced"]["ascent_bytes"] == 4 * norms
    assert records["sam all local"]["ascent_bytes"] == records["sam norm_only local"]["ascent_bytes"] == 0
    assert records["sgd"]["ascent_bytes"] == 0


@pytest.mark.parametrize("args, needle", [
    (["--nproc", "2", "--batch-size", "63", "--model", "vit_ci"], "batch_size: must be divisible by the number"),
    (["--nproc", "2", "--model", "resnet_ci"], "sync_bn: 'resnet_ci' has BatchNorm, and SyncBatchNorm runs on CUDA"),
    (["--nproc", "2", "--model", "vit_ci", "--m", "48"], "variant_opts.m: must divide the per-process"),
    (["--nproc", "0"], "nproc"),
])
def test_bad_process_settings_exit_2_before_anything_is_written(tmp_path, capsys, args, needle):
    from bench.cli import app as cli

    out = tmp_path / "out"
    assert cli.main(["train", "--dataset", "digits", "--device", "cpu", "--epochs", "1", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err, err
    assert not out.exists()


def test_runs_over_several_nodes_need_slurm(tmp_path, capsys, write_file):
    from bench.cli import app as cli

    suite = write_file("s.yaml", "name: n\ndefaults: {dataset: digits, model: vit_ci, epochs: 1, nproc: 2, "
                                 "batch_size: 64}\nslurm: {nodes: 2}\n")
    assert cli.main(["run", str(suite), "--out", str(tmp_path / "out"), "--executor", "local"]) == 2
    assert "need --executor slurm" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
