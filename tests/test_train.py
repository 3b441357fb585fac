"""One training run: files, resume, divergence, command-line errors."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import masks
from bench import config, io
from bench.cli import app as cli
from bench.engine import train
from bench.models import create_model_for

TINY = {"dataset": "digits", "model": "resnet_ci", "epochs": 3, "batch_size": 128, "variant": "sam",
        "mask": "norm_only", "rho": 0.5, "device": "cpu"}


def run_cli(*args):
    return cli.main(list(args))


def test_run_writes_the_four_files_and_the_result_fields(tmp_path):
    result = train.run(TINY, tmp_path / "r", progress=False)
    files = sorted(p.name for p in (tmp_path / "r").iterdir() if not p.name.startswith("."))
    logger_files = [f for f in files if f.startswith("events.out.tfevents.") or f == "loggers.json"]
    assert sorted(set(files) - set(logger_files)) == ["checkpoint.pt", "config.json", "metrics.jsonl",
                                                       "result.json"]
    assert len(logger_files) == 2  # TensorBoard, on by default: one event file and the loggers' state
    stored = io.read_json(tmp_path / "r" / "result.json")
    assert stored == json.loads(json.dumps(result))
    for key in ("status", "test_acc", "test_loss", "train_acc", "train_loss", "epochs", "wall_time_s",
                "seconds_per_epoch", "n_params", "perturbed_fraction", "env"):
        assert key in stored, key
    assert stored["status"] == "done" and stored["epochs"] == 3
    assert stored["env"]["torch"] == torch.__version__ and stored["env"]["device"] == "cpu"
    assert "git_commit" in stored["env"]
    # perturbed fraction measured from the mask: the norm-layer elements of this model
    model = create_model_for("resnet_ci", "digits")
    params = dict(model.named_parameters())
    n_norm = sum(params[n].numel() for n in masks.norm_param_names(model))
    assert stored["n_perturbed"] == n_norm
    assert stored["perturbed_fraction"] == pytest.approx(n_norm / sum(p.numel() for p in model.parameters()))
    assert len(stored["norm_gamma"]) == sum(params[n].numel() for n in masks.norm_param_names(model)
                                            if n.endswith("weight"))
    lines = io.read_jsonl(tmp_path / "r" / "metrics.jsonl")
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    assert lines[-1]["test_acc"] == stored["test_acc"]
    cfg = io.read_json(tmp_path / "r" / "config.json")
    assert cfg["run_id"] == stored["run_id"] == config.run_id(config.resolve(TINY))


def test_same_config_same_numbers_and_rerun_returns_stored(tmp_path):
    a = train.run(TINY, tmp_path / "a", progress=False)
    b = train.run(TINY, tmp_path / "b", progress=False)
    assert a["test_acc"] == b["test_acc"] and a["train_loss"] == b["train_loss"]
    again = train.run(TINY, tmp_path / "a", progress=False)
    assert again["wall_time_s"] == a["wall_time_s"]  # finished: not trained again


class Crash(Exception):
    pass


@pytest.mark.parametrize("mask_cfg", [{"mask": "norm_only"}, {"mask": "all", "variant": "asam"},
                                      {"variant": "none", "mask": "none"}])
def test_resume_after_crash_gives_the_same_numbers(tmp_path, monkeypatch, mask_cfg):
    cfg = {**TINY, **mask_cfg, "epochs": 4}
    whole = train.run(cfg, tmp_path / "whole", progress=False)

    real_save = io.save_checkpoint
    calls = []

    def save_then_die(path, state):
        real_save(path, state)
        calls.append(state["epoch"])
        if state["epoch"] == 2:
            raise Crash("killed after epoch 2")

    monkeypatch.setattr(io, "save_checkpoint", save_then_die)
    with pytest.raises(Crash):
        train.run(cfg, tmp_path / "cut", progress=False)
    monkeypatch.setattr(io, "save_checkpoint", real_save)
    # a crash leaves a failed result; the rerun retries it from the checkpoint
    assert io.read_json(tmp_path / "cut" / "result.json")["status"] == "failed"
    logs = []
    resumed = train.run(cfg, tmp_path / "cut", progress=False, log=logs.append)
    assert any("resuming after epoch 2" in line for line in logs)
    for key in ("test_acc", "test_loss", "train_acc", "train_loss", "epochs"):
        assert resumed[key] == whole[key], key
    assert [m["epoch"] for m in io.read_jsonl(tmp_path / "cut" / "metrics.jsonl")] == [1, 2, 3, 4]
    a = io.load_checkpoint(tmp_path / "whole" / "checkpoint.pt")["model"]
    b = io.load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_checkpoint_of_another_config_is_refused(tmp_path):
    from bench.rundir import ForeignRunDir

    first = train.run({**TINY, "epochs": 1}, tmp_path / "r", progress=False)
    other = config.resolve({**TINY, "epochs": 1, "rho": 0.1})
    (tmp_path / "r" / "result.json").unlink()
    with pytest.raises(ForeignRunDir, match=f"holds run {first['run_id']}"):  # config.json names it
        train.run(other, tmp_path / "r", progress=False)
    (tmp_path / "r" / "config.json").unlink()
    with pytest.raises(ForeignRunDir, match=f"holds run {first['run_id']}"):  # so does the checkpoint
        train.run(other, tmp_path / "r", progress=False)
    io.write_json(tmp_path / "r" / "config.json", {"run_id": config.run_id(other), "config": other})
    with pytest.raises(train.CheckpointMismatch):  # a folder whose files disagree: not resumed
        train.run(other, tmp_path / "r", progress=False)


def test_divergence_is_a_status_not_a_traceback(tmp_path):
    cfg = {**TINY, "epochs": 2, "base": {"name": "sgd", "lr": 1e12, "momentum": 0.9}}
    result = train.run(cfg, tmp_path / "r", progress=False)
    assert result["status"] == "diverged"
    stored = io.read_json(tmp_path / "r" / "result.json")
    assert stored["status"] == "diverged" and stored["test_acc"] is None


def test_adamw_and_constant_schedule(tmp_path):
    cfg = {**TINY, "epochs": 1, "schedule": "constant",
           "base": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05}}
    result = train.run(cfg, tmp_path / "r", progress=False)
    assert result["status"] == "done"
    assert io.read_jsonl(tmp_path / "r" / "metrics.jsonl")[0]["lr"] == pytest.approx(1e-3)


def test_lr_schedule():
    assert train.lr_factor(0, 100, 0, "cosine") == 1.0
    assert train.lr_factor(50, 100, 0, "cosine") == pytest.approx(0.5)
    assert train.lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert train.lr_factor(10, 100, 10, "cosine") == 1.0
    assert train.lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert train.lr_factor(77, 100, 0, "constant") == 1.0


@pytest.mark.parametrize("args, needle", [
    (["--mask", "nope"], "--mask"),
    (["--model", "resnet99"], "--model"),
    (["--dataset", "imagenet5"], "--dataset"),
    (["--variant", "sgdx"], "--variant"),
    (["--rho", "-0.5"], "--rho"),
    (["--epochs", "0"], "--epochs"),
    (["--sparsity", "1.0", "--mask", "random"], "--sparsity"),
    (["--data-root", "/nonexistent/fmnist", "--dataset", "fashion_mnist"], "--data-root"),
    (["--rho-norm", "max"], "--rho-norm"),
    (["--adaptive", "blockwise", "--variant", "asam"], "adaptive"),
])
def test_bad_train_input_exits_2_naming_the_option(tmp_path, capsys, args, needle):
    code = run_cli("train", "--out", str(tmp_path / "r"), *args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err
    assert "allowed" in err or "must" in err or "no such" in err
    assert not (tmp_path / "r").exists()


def test_unknown_mask_lists_the_allowed_names(capsys):
    assert run_cli("train", "--mask", "nope") == 2
    err = capsys.readouterr().err
    for name in ("all", "norm_only", "no_norm"):
        assert name in err


def test_list_commands(capsys):
    for what, expect in (("masks", "norm_only"), ("variants", "asam"), ("models", "wrn28_10"),
                         ("datasets", "fashion_mnist")):
        assert run_cli("list", what) == 0
        assert expect in capsys.readouterr().out


def test_issue_command_reaches_90_percent(tmp_path):
    """The acceptance command of the core issue, through the real console entry point."""
    out = tmp_path / "r"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "train", "--dataset", "digits", "--model", "resnet20", "--variant", "sam",
         "--mask", "norm_only", "--rho", "0.5", "--epochs", "10", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("epoch ") >= 10  # progress, one line per epoch off a terminal
    result = io.read_json(out / "result.json")
    assert result["status"] == "done" and result["test_acc"] >= 90.0
