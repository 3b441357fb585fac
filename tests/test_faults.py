"""The faults an adversarial review found (issue 14), each with a test that failed before its fix:
nothing lost or orphaned, bad input refused with exit 2 and one line."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from analysis_fixtures import make_cfg, write_run

import analysis
from bench import config, io, rundir
from bench.cli import app as cli
from bench.engine import train
from bench.orchestration import suite, suite_file
from bench.orchestration.suite import load_suite

REPO = Path(__file__).resolve().parents[1]
TINY = "name: f\ndefaults: {dataset: digits, model: resnet_ci, epochs: 1, mask: norm_only, rho: 0.5, device: cpu}\n"
TRAIN = ["--dataset", "digits", "--model", "resnet_ci", "--mask", "norm_only", "--rho", "0.5", "--epochs", "1",
         "--device", "cpu"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def prepared(write_file, text: str, out: Path) -> tuple[suite.Suite, list[Path]]:
    """A suite and its run folders with config.json, as `sambench run` writes them at submission."""
    s = load_suite(write_file("f.yaml", text))
    dirs = []
    for rid, cfg in s.items():
        d = out / s.name / rid
        d.mkdir(parents=True)
        io.write_json(d / "config.json", {"run_id": rid, "suite": s.name, "config": cfg})
        dirs.append(d)
    return s, dirs


# --- 1: a --out holding another run is refused, nothing touched ------------------------------------

def _other_run(folder: Path, status: str | None, with_config: bool = True) -> str:
    cfg = config.resolve({"dataset": "digits", "model": "resnet_ci", "epochs": 1, "rho": 0.1})
    rid = config.run_id(cfg)
    folder.mkdir(parents=True)
    if with_config:
        io.write_json(folder / "config.json", {"run_id": rid, "suite": None, "config": cfg})
    if status is not None:
        io.write_json(folder / "result.json", {"status": status, "run_id": rid, "test_acc": 77.0, "epochs": 1,
                                               "wall_time_s": 1.0, "perturbed_fraction": 1.0, "error": "x"})
    return rid


@pytest.mark.parametrize("status, with_config", [("failed", True), ("done", True), ("done", False), (None, True)])
def test_train_refuses_a_folder_holding_another_run(tmp_path, capsys, status, with_config):
    folder = tmp_path / "other"
    other = _other_run(folder, status, with_config)
    before = snapshot(folder)
    assert cli.main(["train", *TRAIN, "--out", str(folder)]) == 2
    out, err = capsys.readouterr()
    assert f"holds run {other}" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "done:" not in out  # never another run's result reported as this one's
    assert snapshot(folder) == before


def test_train_out_that_is_a_file_or_under_one(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    for out in (tmp_path / "f", tmp_path / "f" / "run"):
        assert cli.main(["train", *TRAIN, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "is a file" in err and "Traceback" not in err, err
    assert (tmp_path / "f").read_text() == "x"


# --- 2: corrupt result.json: reported, kept under another name, the run redone ------------------------

CORRUPT = {"empty": b"", "truncated": b'{"status": "done", "test_acc": 9', "binary": b"\x00\xff\xfe\x10",
           "list": b"[1]", "null": b"null", "no_status": b'{"run_id": "x"}'}


def test_corrupt_results_are_kept_and_the_runs_redone(tmp_path, capsys, write_file):
    text = TINY + "grid: {rho: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]}\n"
    out = tmp_path / "out"
    s, dirs = prepared(write_file, text, out)
    for d, data in zip(dirs, CORRUPT.values()):
        (d / "result.json").write_bytes(data)

    assert cli.main(["status", str(out / "f")]) == 0
    text_out = capsys.readouterr().out
    assert "6 runs: 0 done, 0 diverged, 0 failed, 6 corrupt" in text_out
    assert all(f"corrupt {d.name}: result.json" in text_out for d in dirs), text_out
    assert cli.main(["run", str(s.source), "--out", str(out), "--dry-run"]) == 0
    rows = [ln.split() for ln in capsys.readouterr().out.splitlines()[1:7]]
    assert {r[0]: r[-1] for r in rows} == {d.name: "corrupt" for d in dirs}

    assert cli.main(["run", str(s.source), "--out", str(out), "--executor", "debug"]) == 0
    assert "6 runs: 6 done" in capsys.readouterr().out
    for d, data in zip(dirs, CORRUPT.values()):
        assert io.read_json(d / "result.json")["status"] == "done"
        assert (d / "result.json.corrupt").read_bytes() == data  # kept, renamed


def test_a_second_corrupt_copy_gets_its_own_name(tmp_path):
    (tmp_path / "result.json.corrupt").write_text("first")
    (tmp_path / "result.json").write_text("second")
    assert rundir.move_aside(tmp_path / "result.json").name == "result.json.corrupt-2"
    assert (tmp_path / "result.json.corrupt").read_text() == "first"


# --- 3: the final summary waits for the workers it started ----------------------------------------

SLOW_EXIT_MASK = '''
import atexit
import time

from masks import Mask, register_mask

atexit.register(time.sleep, 4)  # every process that loads this plugin takes 4 s to exit


@register_mask("fails_in_training")
class FailsInTraining(Mask):
    """passes validation (it needs data), fails as training builds it"""

    needs_data = True

    def select(self, model, data):
        raise RuntimeError("this mask fails once training starts")
'''


def test_final_summary_counts_a_failed_run_whose_worker_is_still_exiting(tmp_path, write_file, run_sambench,
                                                                         sambench_env):
    write_file("plugins/slow_exit_mask.py", SLOW_EXIT_MASK)
    path = write_file("s.yaml", TINY.replace("mask: norm_only", "mask: fails_in_training"))
    env = dict(sambench_env, SAMBENCH_MASK_PATH=str(tmp_path / "plugins"))
    proc = run_sambench("run", path, "--out", tmp_path / "out", "--executor", "local", timeout=240, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "f: 1 runs: 0 done, 0 diverged, 1 failed, 0 corrupt, 0 to resume, 0 new, 0 running (" in proc.stdout, \
        proc.stdout + proc.stderr
    assert "this mask fails once training starts" in proc.stdout


# --- 4: an alias bomb: refused in a few lines, values cut in messages ------------------------------

def _bomb(levels: int, width: int = 10) -> str:
    anchors = [f"&a0 [{', '.join(['xxxxxxxxxx'] * width)}]"]
    anchors += [f"&a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "name: bomb\ndefaults:\n  rho: [" + ", ".join(anchors) + "]\n"


def test_alias_bomb_is_refused_and_messages_stay_short(tmp_path, run_sambench):
    big = tmp_path / "big.yaml"
    big.write_text(_bomb(7))  # ~10^7 values once expanded, from a few hundred bytes
    assert big.stat().st_size < 500
    t0 = time.time()
    proc = run_sambench("run", big, "--out", tmp_path / "out", "--dry-run", timeout=120)
    assert proc.returncode == 2 and len(proc.stderr) < 500, proc.stderr[:2000]
    assert "more than 100,000 values once its aliases (*name) are expanded" in proc.stderr
    assert time.time() - t0 < 60
    small = tmp_path / "small.yaml"
    small.write_text(_bomb(4))  # 11,110 values: loaded, then rejected as a rho, shown cut short
    proc = run_sambench("run", small, "--out", tmp_path / "out", "--dry-run", timeout=120)
    assert proc.returncode == 2 and "defaults.rho: must be a finite number" not in proc.stderr
    assert "defaults.rho: must be a number >= 0, got [[" in proc.stderr and len(proc.stderr) < 400, proc.stderr
    assert not (tmp_path / "out").exists()


# --- 5, 6: NaN/inf and non-integer seeds are rejected ---------------------------------------------

@pytest.mark.parametrize("key, value", [("rho", ".nan"), ("rho", ".inf"), ("base.lr", ".nan"),
                                        ("base.momentum", ".inf"), ("base.weight_decay", "-.inf"),
                                        ("label_smoothing", ".nan"), ("sparsity", ".nan"),
                                        ("variant_opts.eta", ".inf")])
def test_non_finite_numbers_exit_2(tmp_path, capsys, write_file, key, value):
    fields = {"dataset": "digits", "model": "resnet_ci", "epochs": "1", "variant": "asam", "mask": "random",
              "sparsity": "0.5", "rho": "0.5"}
    path = write_file("s.yaml", "name: f\ndefaults: {" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + "}\n")
    assert cli.main(["run", str(path), "--out", str(tmp_path / "o"), "--set", f"{key}={value}"]) == 2
    err = capsys.readouterr().err
    assert f"--set {key}: must be a finite number" in err, err
    fields[key] = value
    path = write_file("t.yaml", "name: f\ndefaults: {" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + "}\n")
    assert cli.main(["run", str(path), "--out", str(tmp_path / "o"), "--dry-run"]) == 2
    assert f"defaults.{key}: must be a finite number" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_adamw_betas_must_be_finite(tmp_path, capsys, write_file):
    path = write_file("s.yaml", TINY + "grid: {base: {name: adamw, betas: [[0.9, .nan]]}}\n")
    assert cli.main(["run", str(path), "--out", str(tmp_path / "o"), "--dry-run"]) == 2
    assert "grid.base.betas[1]: must be a finite number, got nan" in capsys.readouterr().err


@pytest.mark.parametrize("seed", ['"abc"', "1.0", "-1", "true"])
@pytest.mark.parametrize("seeds", ["", "seeds: [0, 1]\n"])
def test_a_seed_that_is_not_an_integer_exits_2(tmp_path, capsys, write_file, seed, seeds):
    path = write_file("s.yaml", TINY.replace("rho: 0.5", f"rho: 0.5, seed: {seed}") + seeds)
    assert cli.main(["run", str(path), "--out", str(tmp_path / "o"), "--dry-run"]) == 2
    assert "defaults.seed: must be an integer >= 0, got" in capsys.readouterr().err


# --- 7: symbolic links: status and collect count the same runs --------------------------------------

def test_status_and_collect_follow_the_same_links_once(tmp_path, capsys):
    results = tmp_path / "results"
    for seed in range(3):
        write_run(results, "real", make_cfg(seed=seed), test_acc=80.0)
    elsewhere = tmp_path / "elsewhere"
    for seed in range(2):
        write_run(elsewhere, "linked", make_cfg(seed=seed, rho=0.1), test_acc=81.0)
    (results / "linked").symlink_to(elsewhere / "linked")                    # a linked suite folder
    extra = write_run(tmp_path / "loose", "x", make_cfg(seed=9), test_acc=82.0)
    (results / "real" / extra.name).symlink_to(extra)                         # a linked run folder
    (results / "real" / "loop").symlink_to(results)                           # a loop
    (results / "again").symlink_to(results / "real")                          # the same folder twice

    assert cli.main(["status", str(results)]) == 0
    lines = capsys.readouterr().out.splitlines()
    counted = sum(int(ln.split(": ", 1)[1].split()[0]) for ln in lines if " runs: " in ln)
    df = analysis.collect(results)
    assert counted == len(df) == 6, lines
    assert sorted(df["test_acc"]) == [80.0] * 3 + [81.0] * 2 + [82.0]


# --- 8: a failed result is retried whatever its file time says ------------------------------------------

def test_failed_result_with_a_future_mtime_is_retried(tmp_path, capsys, write_file):
    out = tmp_path / "out"
    s, (d,) = prepared(write_file, TINY, out)
    io.write_json(d / "result.json", {"status": "failed", "run_id": d.name, "error": "RuntimeError: x"})
    future = time.time() + 86400
    os.utime(d / "result.json", (future, future))  # clock skew, a copied folder
    assert cli.main(["run", str(s.source), "--out", str(out), "--executor", "debug"]) == 0
    assert io.read_json(d / "result.json")["status"] == "done"
    assert "1 runs: 1 done" in capsys.readouterr().out


# --- 9: Ctrl-C, SIGTERM and `timeout` stop the local workers (or leave them, when asked) -------------

LONG = "name: sig\ndefaults: {dataset: digits, model: resnet_ci, epochs: 400, mask: norm_only, rho: 0.5, device: cpu}\n"


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _gone(text: str, within_s: float = 20.0) -> bool:
    deadline = time.time() + within_s
    while time.time() < deadline:
        if not _processes_mentioning(text):
            return True
        time.sleep(0.2)
    return False


class _LocalRun:
    """`sambench run` of a long suite on the local executor, in its own session (as a terminal
    would run it in its own process group)."""

    def __init__(self, tmp_path: Path, env: dict, extra: tuple[str, ...] = (), prefix: tuple[str, ...] = ()):
        (tmp_path / "sig.yaml").write_text(LONG)
        self.out = tmp_path / "out"
        self.rid = load_suite(tmp_path / "sig.yaml").run_ids[0]
        self.run_dir = self.out / "sig" / self.rid
        self.marker = str(self.out / "sig" / ".submitit")
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "bench", "run", str(tmp_path / "sig.yaml"),
                                      "--out", str(self.out), "--executor", "local", "--max-parallel", "1", *extra],
                                     env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)

    def wait_for_training(self, timeout_s: float = 240) -> None:
        deadline = time.time() + timeout_s
        while not (self.run_dir / "checkpoint.pt").exists():
            assert self.proc.poll() is None, self.proc.stdout.read()
            assert time.time() < deadline, "no checkpoint"
            time.sleep(0.1)

    def output(self, timeout_s: float = 90) -> str:
        return self.proc.communicate(timeout=timeout_s)[0]  # returns once nobody holds the pipe

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in _processes_mentioning(self.marker):
            with_suppress_kill(pid)

    def assert_stopped_and_resumable(self) -> None:
        assert _gone(self.marker), _processes_mentioning(self.marker)
        assert not rundir.lock_held(self.run_dir)
        assert not (self.run_dir / "result.json").exists()
        epoch = int(io.load_checkpoint(self.run_dir / "checkpoint.pt")["epoch"])
        assert 1 <= epoch < 400
        states = [st.state for _, _, sts in cli_status_groups(self.out / "sig") for st in sts]
        assert states == ["resume"]


def with_suppress_kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def cli_status_groups(folder: Path):
    from bench.orchestration import runner

    return runner.status_groups(folder, folder)


@pytest.mark.parametrize("how, code", [("sigterm", 143), ("ctrl-c", 130)])
def test_interrupt_stops_the_local_workers(tmp_path, sambench_env, how, code):
    run = _LocalRun(tmp_path, sambench_env)
    try:
        run.wait_for_training()
        if how == "sigterm":
            os.kill(run.proc.pid, signal.SIGTERM)          # `kill PID`
        else:
            os.killpg(run.proc.pid, signal.SIGINT)         # Ctrl-C: the terminal signals the whole group
        text = run.output()
        assert run.proc.returncode == code, text
        assert "interrupted: stopped 1 local worker(s)" in text, text
        assert "sig: 1 runs: 0 done, 0 diverged, 0 failed, 0 corrupt, 1 to resume" in text, text
        run.assert_stopped_and_resumable()
    finally:
        run.cleanup()


def test_timeout_stops_the_local_workers_and_frees_the_output(tmp_path, sambench_env):
    run = _LocalRun(tmp_path, sambench_env, prefix=("timeout", "20"))
    try:
        text = run.output(timeout_s=120)  # before the fix: blocked until the workers finished
        assert run.proc.returncode == 124, text
        assert _gone(run.marker), _processes_mentioning(run.marker)
        assert not rundir.lock_held(run.run_dir) and not (run.run_dir / "result.json").exists()
    finally:
        run.cleanup()


def test_keep_running_leaves_the_workers_and_says_so(tmp_path, sambench_env):
    run = _LocalRun(tmp_path, sambench_env, extra=("--keep-running",))
    try:
        run.wait_for_training()
        os.kill(run.proc.pid, signal.SIGTERM)
        text = run.output()  # the workers do not hold the command's output
        assert run.proc.returncode == 143, text
        assert "interrupted: left 1 local worker(s) running" in text, text
        time.sleep(1.0)
        assert rundir.lock_held(run.run_dir)  # still training
        workers = [p for p in _processes_mentioning(run.marker)
                   if b"submitit.core._submit" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(workers) == 1
        os.kill(workers[0], signal.SIGTERM)  # a local worker stops on SIGTERM (it used to ignore it)
        assert _gone(run.marker), _processes_mentioning(run.marker)
        assert not rundir.lock_held(run.run_dir) and not (run.run_dir / "result.json").exists()
    finally:
        run.cleanup()


# --- 10: a large suite says so before the long part -----------------------------------------------------

def test_large_suite_warns_before_expanding(tmp_path, capsys, write_file, monkeypatch):
    monkeypatch.setattr(suite_file, "LARGE_SUITE", 5)
    path = write_file("s.yaml", TINY + "grid: {rho: [0.1, 0.2, 0.3]}\nseeds: [0, 1]\n")
    assert cli.main(["run", str(path), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "warning: " in captured.err and "expands to 6 runs" in captured.err
    assert "6 runs: 0 done" in captured.out


# --- also: the smaller ones ---------------------------------------------------------------------------

def test_truncated_checkpoint_is_named_kept_and_the_run_restarted(tmp_path):
    cfg = {"dataset": "digits", "model": "resnet_ci", "epochs": 2, "mask": "norm_only", "rho": 0.5, "device": "cpu"}
    first = train.run(cfg, tmp_path / "r", progress=False, log=lambda m: None)
    (tmp_path / "r" / "result.json").unlink()
    ckpt = tmp_path / "r" / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(io.CheckpointError, match="checkpoint.pt is unreadable"):
        io.load_checkpoint(ckpt)
    logs: list[str] = []
    again = train.run(cfg, tmp_path / "r", progress=False, log=logs.append)
    assert any(f"{ckpt} is unreadable" in line and "kept as checkpoint.pt.corrupt" in line for line in logs), logs
    assert (tmp_path / "r" / "checkpoint.pt.corrupt").read_bytes() == data[: len(data) // 2]
    assert again["status"] == "done" and again["test_acc"] == first["test_acc"]


@pytest.mark.parametrize("command", ["collect", "plot", "table"])
def test_analysis_commands_on_a_missing_folder_exit_2(tmp_path, capsys, command):
    assert cli.main([command, str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "no such results folder" in err and "Traceback" not in err and len(err.splitlines()) == 1
    (tmp_path / "file").write_text("x")
    assert cli.main([command, str(tmp_path / "file")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_analysis_outputs_in_the_way_exit_2(tmp_path, capsys):
    write_run(tmp_path / "res", "s", make_cfg(), test_acc=80.0)
    (tmp_path / "file").write_text("x")
    assert cli.main(["plot", str(tmp_path / "res"), "-o", str(tmp_path / "file")]) == 2
    assert cli.main(["collect", str(tmp_path / "res"), "-o", str(tmp_path / "file" / "x.csv")]) == 2
    assert cli.main(["collect", str(tmp_path / "res"), "-o", str(tmp_path)]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize("args, code, needle", [
    (["--steps", "0"], 2, "--steps: must be >= 1"),
    (["--configs", "bogus"], 2, "unknown variant 'bogus'"),
    (["--configs", "sam:nomask"], 2, "unknown mask 'nomask'"),
    (["--configs", "sam:layerwise:blocks=[7]"], 1, "no configuration could be timed"),
    (["--device", "cuda:abc"], 2, "--device: got 'cuda:abc'"),
])
def test_perf_input_is_checked(capsys, args, code, needle):
    argv = ["perf", "--model", "resnet_ci", "--dataset", "digits", "--batch-size", "8", "--steps", "1",
            "--warmup", "0", *args]
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err, err


def test_match_of_an_unknown_mask_is_blamed_on_sparsity(tmp_path, capsys, write_file):
    path = write_file("s.yaml", TINY + "grid: {mask: random, sparsity: 'match:nope'}\n")
    assert cli.main(["run", str(path), "--out", str(tmp_path / "o"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "grid.sparsity: unknown mask 'nope'" in err, err


def test_duplicate_yaml_keys_are_rejected(tmp_path, capsys, write_file):
    path = write_file("s.yaml", TINY + "grid: {rho: [0.1], rho: [0.2]}\n")
    assert cli.main(["run", str(path), "--out", str(tmp_path / "o"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "line 3" in err and "duplicate key 'rho'" in err, err
    path = write_file("t.yaml", "name: a\nname: b\n")
    assert cli.main(["run", str(path), "--dry-run"]) == 2
    assert "duplicate key 'name'" in capsys.readouterr().err
    assert cli.main(["run", str(path), "--dry-run", "--set", "base={lr: 1, lr: 2}"]) == 2
    assert "--set base: " in capsys.readouterr().err
    anchors = write_file("u.yaml", TINY.replace("defaults:", "defaults: &d") + "include:\n  - {<<: *d, rho: 0.1}\n")
    (run,) = load_suite(anchors).runs  # a merge key may override what it merges
    assert run["rho"] == 0.1 and run["model"] == "resnet_ci"


def test_thread_count_is_recorded_and_a_resume_with_another_warns(tmp_path, monkeypatch):
    cfg = {"dataset": "digits", "model": "resnet_ci", "epochs": 2, "mask": "norm_only", "rho": 0.5, "device": "cpu"}
    real_save = io.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        raise KeyboardInterrupt  # killed after epoch 1

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        monkeypatch.setattr(io, "save_checkpoint", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            train.run(cfg, tmp_path / "r", progress=False, log=lambda m: None)
        monkeypatch.setattr(io, "save_checkpoint", real_save)
        torch.set_num_threads(2)
        logs: list[str] = []
        result = train.run(cfg, tmp_path / "r", progress=False, log=logs.append)
    finally:
        torch.set_num_threads(threads)
    assert any("warning: resuming with 2 CPU thread(s); the epochs so far used 1" in ln for ln in logs), logs
    assert result["threads_used"] == [1, 2] and result["env"]["threads"] == 2
    assert [m["threads"] for m in io.read_jsonl(tmp_path / "r" / "metrics.jsonl")] == [1, 2]


@pytest.mark.parametrize("field, value, needle", [
    ("device", "cuda:abc", "device: got 'cuda:abc'"),
    ("epochs", "100000000000000000000", "epochs: must be an integer >= 1 and <= 100,000"),
    ("data_root", "/nonexistent", "dataset 'cifar100' (run "),
])
def test_caught_at_submission_not_in_the_worker(tmp_path, capsys, write_file, monkeypatch, field, value, needle):
    monkeypatch.delenv("SAMBENCH_DATA_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./data here
    path = write_file("s.yaml", TINY.replace("digits", "cifar100") if field == "data_root" else TINY)
    out = tmp_path / "o"
    assert cli.main(["run", str(path), "--out", str(out), "--executor", "debug", "--set", f"{field}={value}"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err, err
    assert not out.exists()


def test_results_record_the_full_variant_options(tmp_path):
    cfg = {"dataset": "digits", "model": "resnet_ci", "epochs": 1, "variant": "asam", "rho": 0.5, "device": "cpu",
           "variant_opts": {"adaptive": "layerwise", "eta": 0.01}}
    result = train.run(cfg, tmp_path / "r", progress=False, log=lambda m: None)
    full = {"adaptive": "layerwise", "p": 2, "eta": 0.01, "normalize_bias": False,
            "m": None, "sam_start_epoch": 0}  # the last two are shared by every perturbing variant
    assert result["config"]["variant_opts"] == {"adaptive": "layerwise"}
    assert result["variant_options"] == full
    assert json.loads((tmp_path / "r" / "config.json").read_text())["variant_options"] == full
    df = analysis.collect(tmp_path / "r")
    assert df.loc[0, "variant_label"] == "ASAM adaptive=layerwise" and df.loc[0, "variant_opts.eta"] == 0.01


def test_the_reaper_takes_the_signal_from_the_step_when_the_job_has_only_an_exit_status():
    """sacct of a job whose task was SIGKILLed: the job (its batch script) says 9:0, the step 0:9."""
    from bench.orchestration.reaper import _jobs_of, failure_of

    lines = ("1331|FAILED|9:0|vm\n1331.batch|FAILED|9:0|vm\n1331.extern|COMPLETED|0:0|vm\n"
             "1331.0|CANCELLED by 0|0:9|vm\n7_1|OUT_OF_MEMORY|0:125|n2\n7_1.batch|OUT_OF_MEMORY|0:125|n2\n"
             "8|FAILED|1:0|n3\n8.batch|FAILED|1:0|n3\n")
    jobs = _jobs_of(lines)
    assert jobs == {"1331": ("FAILED", "9:9", "vm"), "7_1": ("OUT_OF_MEMORY", "0:125", "n2"), "8": ("FAILED", "1:0", "n3")}
    killed = failure_of("r1", "1331", *jobs["1331"], "sub")
    assert (killed["signal"], killed["kind"], killed["host"]) == ("SIGKILL", "job-ended", "vm")
    assert "ended FAILED (signal SIGKILL) on vm" in killed["error"]
    plain = failure_of("r2", "8", *jobs["8"], "sub")
    assert plain["signal"] is None and plain["exit_code"] == 1 and "exit status 1" in plain["error"]
    assert killed["pid"] is None and killed["reports"][0]["pid"] is None  # the job's process is gone
    nowhere = failure_of("r3", "9", "NODE_FAIL", "0:0", "", "sub")  # sacct without a node list
    assert nowhere["host"] is None and "on an unknown node" in nowhere["error"]  # not this (login) host
