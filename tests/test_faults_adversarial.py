"""Issue 21's adversarial pass, one test per finding: each fault ends with a clear message, the right
exit code, and nothing lost or trained twice (docs/faults.md lists them, one row each). Also issue
22's one failure schema, written only through bench.rundir.

Real components: training on the bundled digits, a real tmpfs for a full disk (root only), a real
second user (``nobody``, root only), PIL images on disk, the CLI in subprocesses where its exit
status is the point. Budget: about 40 s on 2 cores.
"""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from analysis_fixtures import make_cfg, write_run

import analysis
from bench import io, rundir
from bench.cli import app as cli
from bench.engine import train
from bench.orchestration import job

REPO = Path(__file__).resolve().parents[1]
TINY = {"dataset": "digits", "model": "resnet_ci", "epochs": 1, "mask": "norm_only", "rho": 0.5, "device": "cpu",
        "logging": {"tensorboard": False}}
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount, a second user)")


def quiet(msg: str) -> None:
    pass


# --- issue 22: one failure schema, one writer ------------------------------------------------------

def _writes_of_result_json(path: Path) -> list[int]:
    """Lines of ``path`` that call a writer with the literal "result.json" among its arguments."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "write_json", "atomic_write_bytes", "write_text", "write_bytes"):
            if any(isinstance(n, ast.Constant) and n.value == "result.json" for a in node.args for n in ast.walk(a)):
                lines.append(node.lineno)
    return lines


def test_a_failure_has_one_schema_written_only_through_rundir(tmp_path):
    writers = {str(p.relative_to(REPO)): _writes_of_result_json(p) for p in (REPO / "bench").rglob("*.py")}
    writers = {k: v for k, v in writers.items() if v}
    # failures: rundir only; finished results: the training run and its sharpness (issue 22 moves
    # those into rundir), and the perf fixture's copies of one finished result
    assert set(writers) <= {"bench/rundir.py", "bench/engine/train.py", "bench/engine/sharpness_runs.py",
                            "bench/perf/scale.py"}, writers

    # training fails (its data set is missing): written by train.run through rundir
    broken = {**TINY, "dataset": "cifar10", "data_root": str(tmp_path / "none")}
    with pytest.raises(Exception, match="CIFAR-10 not found"):
        train.run(broken, tmp_path / "a", progress=False, log=quiet, submission="s1")
    by_train = io.read_json(tmp_path / "a" / "result.json")
    # the job cannot read config.json: recorded by the job, through rundir
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text("{not json")
    assert job.RunJob()([str(tmp_path / "b")], "s", None, "s2", None)[0]["status"] == "failed"
    by_job = io.read_json(tmp_path / "b" / "result.json")
    for doc, kind, who in ((by_train, "exception", "train"), (by_job, "setup", "job")):
        assert set(rundir.FAILURE_FIELDS) <= set(doc), set(rundir.FAILURE_FIELDS) - set(doc)
        assert doc["status"] == "failed" and doc["failure_schema"] == rundir.FAILURE_SCHEMA
        assert (doc["kind"], doc["recorded_by"], doc["rank"]) == (kind, who, 0)
        assert doc["host"] == doc["env"]["hostname"] and doc["failed_at"].endswith("+00:00")
        assert len(doc["reports"]) == 1 and doc["reports"][0]["error"] == doc["error"]
    assert "DataError" in by_train["error"] and "Traceback" in by_train["traceback"]
    assert by_train["config"]["dataset"] == "cifar10" and by_train["submission"] == "s1"

    # another process's report of the same failure joins it; a signal death tells most and goes on top
    death = rundir.failure("process 1 ended with signal SIGKILL", "rank-death", rid=by_train["run_id"], rank=1,
                           signal="SIGKILL", recorded_by="launcher", submission="s1")
    joined = rundir.record_failure(tmp_path / "a", death)
    assert (joined["kind"], joined["rank"], joined["signal"]) == ("rank-death", 1, "SIGKILL")
    assert [r["recorded_by"] for r in joined["reports"]] == ["train", "launcher"]
    assert joined["config"] == by_train["config"]  # kept from the report that had it
    # a report of another submission replaces the old failure; nothing is written over a final result
    later = rundir.failure("x", "exception", rid=by_train["run_id"], submission="s3")
    assert len(rundir.record_failure(tmp_path / "a", later)["reports"]) == 1
    io.write_json(tmp_path / "a" / "result.json", {"status": "done", "run_id": by_train["run_id"]})
    assert rundir.record_failure(tmp_path / "a", later) is None
    assert io.read_json(tmp_path / "a" / "result.json")["status"] == "done"
    with pytest.raises(ValueError, match="failure kind"):
        rundir.failure("x", "bogus")


# --- checkpoint.pt that is not this run's ------------------------------------------------------------

class _Code:
    """Pickled by reference: loading it would import and call code (weights_only refuses)."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_checkpoints_that_are_not_a_runs_are_kept_aside_and_the_run_restarted(tmp_path):
    good = train.run(TINY, tmp_path / "good", progress=False, log=quiet)
    state = io.load_checkpoint(tmp_path / "good" / "checkpoint.pt")
    bad = {"a tensor": torch.zeros(3), "no model": {k: v for k, v in state.items() if k != "model"},
           "code": {**state, "model": _Code()}}
    for name, obj in bad.items():
        d = tmp_path / name.replace(" ", "_")
        d.mkdir()
        shutil.copy(tmp_path / "good" / "config.json", d / "config.json")
        torch.save(obj, d / "checkpoint.pt")
        data = (d / "checkpoint.pt").read_bytes()
        logs: list[str] = []
        result = train.run(TINY, d, progress=False, log=logs.append)
        assert result["status"] == "done" and result["test_acc"] == good["test_acc"], name  # trained from the start
        assert any("kept as checkpoint.pt.corrupt, training from the start" in ln for ln in logs), (name, logs)
        assert (d / "checkpoint.pt.corrupt").read_bytes() == data, name  # nothing lost
    # a checkpoint of another run: refused, the folder untouched (exit 2 from the command line)
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(tmp_path / "good" / "checkpoint.pt", other / "checkpoint.pt")
    before = (other / "checkpoint.pt").read_bytes()
    code = cli.main(["train", "--dataset", "digits", "--model", "resnet_ci", "--epochs", "1", "--rho", "0.1",
                     "--device", "cpu", "--out", str(other)])
    assert code == 2 and sorted(p.name for p in other.iterdir()) == ["checkpoint.pt"]
    assert (other / "checkpoint.pt").read_bytes() == before


# --- the disk (or quota) fills up during a checkpoint -------------------------------------------------

@ROOT_ONLY
def test_a_full_disk_during_a_checkpoint_fails_the_run_and_keeps_the_last_checkpoint(tmp_path, capsys):
    args = ["train", "--dataset", "digits", "--model", "resnet_ci", "--epochs", "2", "--mask", "norm_only",
            "--rho", "0.5", "--device", "cpu", "--log", "none", "--out"]
    assert cli.main([*args, str(tmp_path / "probe")]) == 0
    size = (tmp_path / "probe" / "checkpoint.pt").stat().st_size
    disk = tmp_path / "disk"
    disk.mkdir()
    # room for one checkpoint and the small files, not for the second checkpoint beside the first
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size * 1.6)}", "tmpfs", str(disk)], check=True)
    try:
        capsys.readouterr()
        assert cli.main([*args, str(disk / "run")]) == 1
        said = capsys.readouterr().out
        result = io.read_json(disk / "run" / "result.json")
        assert result["status"] == "failed" and result["kind"] == "exception" and result["epochs"] == 1
        assert result["error"].startswith("DiskFull: [Errno 28] No space left on device: could not write")
        assert f"{disk / 'run' / 'checkpoint.pt'}" in result["error"] and "is unchanged" in result["error"]
        assert f"failed: {result['error']} (traceback in" in said and "Traceback" not in said, said
        assert int(io.load_checkpoint(disk / "run" / "checkpoint.pt")["epoch"]) == 1  # the last one, intact
        assert not [p for p in (disk / "run").iterdir() if p.name.endswith(".tmp")]
        subprocess.run(["mount", "-o", f"remount,size={size * 4}", str(disk)], check=True)
        assert cli.main([*args, str(disk / "run")]) == 0
        assert "resuming after epoch 1/2" in capsys.readouterr().out  # epoch 1 is not trained twice
        assert [m["epoch"] for m in io.read_jsonl(disk / "run" / "metrics.jsonl")] == [1, 2]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


# --- two users' `sambench run` on one results folder ---------------------------------------------------

def _as_another_user(*args: str, env: dict, timeout: float = 180) -> subprocess.CompletedProcess:
    """``sambench ARGS`` as a user without root's permission overrides: uid 0 with CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH and CAP_FOWNER dropped (this machine's Python lives under /root, which no
    other uid may enter), so files that belong to ``nobody`` are someone else's files for it."""
    drop = "-dac_override,-dac_read_search,-fowner,-chown"
    return subprocess.run(["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", sys.executable, "-m", "bench",
                           *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@ROOT_ONLY
def test_a_second_user_who_cannot_write_the_folder_is_refused_and_one_who_can_shares_it(tmp_path, write_file,
                                                                                        sambench_env):
    text = ("name: shared\ndefaults: {dataset: digits, model: resnet_ci, epochs: 1, mask: norm_only, rho: 0.5, "
            "device: cpu, logging: {tensorboard: false}}\n")
    mine, theirs = write_file("a.yaml", text), write_file("b.yaml", text + "grid: {rho: [0.5, 0.2]}\n")
    out = tmp_path / "out"
    assert cli.main(["run", str(mine), "--out", str(out), "--executor", "debug"]) == 0  # user A's run
    (rid,) = [d.name for d in (out / "shared").iterdir() if not d.name.startswith(".")]
    subprocess.run(["chown", "-R", "nobody:nogroup", str(out)], check=True)  # A's files, mode 755/644
    denied = _as_another_user("run", str(theirs), "--out", str(out), "--executor", "debug", env=sambench_env)
    assert denied.returncode == 2, denied.stdout + denied.stderr
    assert "not writable by this user" in denied.stderr and "belongs to nobody" in denied.stderr, denied.stderr
    assert "Traceback" not in denied.stderr
    assert sorted(d.name for d in (out / "shared").iterdir() if not d.name.startswith(".")) == [rid]
    subprocess.run(["chmod", "-R", "a+rwX", str(out)], check=True)  # a group project folder: A lets B write
    shared = _as_another_user("run", str(theirs), "--out", str(out), "--executor", "debug", env=sambench_env)
    assert shared.returncode == 0, shared.stdout + shared.stderr
    assert "2 runs: 1 done, 0 diverged, 0 failed, 0 corrupt, 0 to resume, 1 new" in shared.stdout  # A's is done
    assert "shared: 2 runs: 2 done" in shared.stdout
    assert (out / "shared" / rid / "result.json").owner() == "nobody"  # A's result, not trained again


# --- an image folder with an empty class or a corrupt image ---------------------------------------------

def _image_folder(root: Path, empty_class: bool = False, corrupt: bool = False) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    if empty_class:
        (root / "train" / "emu").mkdir()
        (root / "val" / "emu").mkdir()
    if corrupt:
        (root / "train" / "dog" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return root


def test_an_image_folder_with_an_empty_class_is_refused_and_a_corrupt_image_named(tmp_path, capsys, write_file):
    empty = _image_folder(tmp_path / "empty", empty_class=True)
    suite = write_file("s.yaml", f"name: img\ndefaults: {{dataset: imagefolder, data_root: '{empty}', model: vit_ci, "
                                 "epochs: 1, batch_size: 4, device: cpu, data_workers: 0}\n")
    assert cli.main(["run", str(suite), "--out", str(tmp_path / "out"), "--executor", "debug"]) == 2
    err = capsys.readouterr().err
    assert "2 class folder(s) hold no image" in err and str(empty / "train" / "emu") in err, err
    assert not (tmp_path / "out").exists()  # nothing written, nothing submitted

    bad = _image_folder(tmp_path / "bad", corrupt=True)
    cfg = {"dataset": "imagefolder", "data_root": str(bad), "model": "vit_ci", "epochs": 1, "batch_size": 4,
           "eval_batch_size": 4, "device": "cpu", "data_workers": 1, "logging": {"tensorboard": False}}
    with pytest.raises(Exception, match="not a readable image"):
        train.run(cfg, tmp_path / "r", progress=False, log=quiet)
    result = io.read_json(tmp_path / "r" / "result.json")
    assert result["status"] == "failed" and result["error"].startswith("DataError: ")
    assert f"{bad / 'train' / 'dog' / '2.png'}: not a readable image" in result["error"]
    assert "Caught" not in result["error"]  # one line naming the file, not the worker's traceback


# --- clock skew on result files ---------------------------------------------------------------------------

def test_clock_skew_cannot_hide_a_changed_result_from_status_or_collect(tmp_path, capsys):
    suite = tmp_path / "res" / "s"
    dirs = [write_run(tmp_path / "res", "s", make_cfg(seed=seed), test_acc=80.0 + seed) for seed in range(3)]
    past = time.time() - 3 * 86400
    for d in dirs:
        os.utime(d / "result.json", (past, past))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert sorted(analysis.collect(suite)["test_acc"]) == [80.0, 81.0, 82.0]  # builds the index
    assert cli.main(["status", str(suite)]) == 0  # fills the cache of finished results
    assert "3 runs: 3 done" in capsys.readouterr().out
    assert (suite / analysis.index.NAME).is_file() and (suite / rundir.ResultCache.NAME).is_file()
    # a result rewritten by a host whose clock is days behind: older than both caches
    doc = io.read_json(dirs[0] / "result.json")
    io.write_json(dirs[0] / "result.json", {**doc, "status": "failed", "error": "RuntimeError: x", "test_acc": 1.0})
    older = time.time() - 10 * 86400
    os.utime(dirs[0] / "result.json", (older, older))
    future = time.time() + 86400  # and one from a host whose clock is a day ahead
    io.write_json(dirs[1] / "result.json", {**io.read_json(dirs[1] / "result.json"), "test_acc": 99.0})
    os.utime(dirs[1] / "result.json", (future, future))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = analysis.collect(suite)
    assert sorted(df["test_acc"]) == [1.0, 82.0, 99.0] and sorted(df["status"]) == ["done", "done", "failed"]
    assert cli.main(["status", str(suite)]) == 0
    assert "3 runs: 2 done, 0 diverged, 1 failed" in capsys.readouterr().out


# --- paths with spaces, paths that are not UTF-8 -------------------------------------------------------------

def test_paths_with_spaces_work_and_paths_that_are_not_utf8_are_refused(tmp_path, capsys, write_file):
    spaced = tmp_path / "my results" / "run one"
    assert cli.main(["train", "--dataset", "digits", "--model", "resnet_ci", "--epochs", "1", "--device", "cpu",
                     "--out", str(spaced)]) == 0
    assert io.read_json(spaced / "result.json")["status"] == "done"
    assert cli.main(["collect", str(tmp_path / "my results"), "-o", str(tmp_path / "a b.csv")]) == 0
    assert (tmp_path / "a b.csv").read_text().count("\n") == 2
    capsys.readouterr()
    odd = os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9")  # Latin-1, not UTF-8
    suite = write_file("s.yaml", "name: s\ndefaults: {dataset: digits, model: resnet_ci, epochs: 1}\n")
    for argv in (["train", "--dataset", "digits", "--epochs", "1", "--out", odd],
                 ["run", str(suite), "--out", odd, "--executor", "debug"], ["collect", odd]):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "not valid UTF-8 (byte b'\\xe9' at" in err and "Traceback" not in err, err
    assert not os.path.exists(odd)
