"""Loggers in real training runs: files read back with TensorBoard's, W&B's and MLflow's readers
equal metrics.jsonl; per-step scalars every log_every steps (their windows make up the epoch's
numbers; SAM's ||e|| = rho_t); sharpness measures and every variant option logged; a run killed and
resumed continues the same logger run without duplicates."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from logger_readers import (
    mlflow_client,
    mlflow_history,
    tensorboard_hparams,
    tensorboard_scalars,
    wandb_offline_runs,
)

from bench import io, loggers
from bench.engine import train

REPO = Path(__file__).resolve().parents[1]
TINY = {"dataset": "digits", "model": "resnet_ci", "epochs": 2, "batch_size": 256, "variant": "sam",
        "mask": "norm_only", "rho": 0.5, "device": "cpu"}
ALL_LOGGERS = {"tensorboard": True, "wandb": {"mode": "offline", "project": "sambench-test"}, "mlflow": True}


class Kill(Exception):
    pass


def kill_after_epoch(n):
    def log(msg):
        if f"epoch {n}/" in msg:
            raise Kill(msg)
    return log


def assert_equals_metrics(run_dir, scalars):
    metrics = io.read_jsonl(Path(run_dir) / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2]
    for key, tag in loggers.TAGS.items():
        if key not in metrics[0]:  # e.g. val_acc: only runs that hold out a validation split have it
            assert tag not in scalars, tag
            continue
        want = [(m["epoch"], pytest.approx(m[key], rel=1e-6, abs=1e-12)) for m in metrics]
        assert scalars[tag] == want, tag


SHARPNESS = {"n_samples": 64, "steps": 2, "power_iters": 2, "trace_probes": 0, "radii": {"linf_adaptive": [0.003]}}
# digits: 1437 training samples; batch 256 -> 6 steps (5 x 256 + 157); log_every 2 -> windows of 512, 512, 413
WINDOWS = [512, 512, 413]


def test_two_epochs_write_tensorboard_events_equal_to_metrics(tmp_path):
    cfg = {**TINY, "sharpness": SHARPNESS, "logging": {"tensorboard": True, "mlflow": True}}
    result = train.run(cfg, tmp_path / "r", progress=False)
    assert list((tmp_path / "r").glob("events.out.tfevents.*"))
    scalars = tensorboard_scalars(tmp_path / "r")
    assert_equals_metrics(tmp_path / "r", scalars)
    assert scalars["final/test_acc"] == [(2, pytest.approx(result["test_acc"], rel=1e-6))]
    hparams, metric_tags = tensorboard_hparams(tmp_path / "r")
    assert hparams["mask"] == "norm_only" and hparams["rho"] == pytest.approx(0.5)
    assert hparams["base.name"] == "sgd" and "final/test_acc" in metric_tags
    # every option of the variant, defaults included (the config holds only those that differ)
    assert hparams["variant_options.p"] == pytest.approx(2) and hparams["variant_options.sam_start_epoch"] == 0
    # the sharpness measured after training, at the last epoch, in TensorBoard and MLflow
    measured = {k: v for k, v in result["sharpness"].items() if isinstance(v, float)}
    assert set(measured) == {"hessian_max_eig", "hessian_max_eig_norm", "msharp_linf_adaptive_rho0.003"}
    state = io.read_json(tmp_path / "r" / loggers.STATE_FILE)
    for key, value in measured.items():
        assert scalars[f"sharpness/{key}"] == [(2, pytest.approx(value, rel=1e-6))]
        assert mlflow_history(state["mlflow_tracking_uri"], state["mlflow_run_id"], f"sharpness/{key}") == [
            (2, pytest.approx(value, rel=1e-6))]


def test_gsam_logs_its_radius_following_the_learning_rate(tmp_path):
    cfg = {**TINY, "epochs": 1, "variant": "gsam", "variant_opts": {"rho_min": 0.1}, "rho": 0.5, "log_every": 1,
           "warmup_epochs": 0}
    train.run(cfg, tmp_path / "r", progress=False)
    steps = tensorboard_scalars(tmp_path / "r" / "steps")
    lr = dict(steps["step/lr"])
    assert sorted(lr) == [1, 2, 3, 4, 5, 6]
    for step, rho_t in steps["sam/rho_t"]:  # rho_t = rho_min + (rho - rho_min) lr_t / lr_max, lr_max = 0.1
        assert rho_t == pytest.approx(0.1 + 0.4 * lr[step] / 0.1, rel=1e-6)
    assert steps["sam/rho_t"][0][1] == pytest.approx(0.5) and steps["sam/rho_t"][-1][1] < 0.2  # cosine to 0
    # GSAM's e = rho_t g/||g|| on the norm layers: ||e|| = rho_t
    for (_, e), (_, rho_t) in zip(steps["sam/e_norm"], steps["sam/rho_t"]):
        assert e == pytest.approx(rho_t, rel=1e-4)


def test_logging_off_writes_no_logger_files(tmp_path):
    train.run({**TINY, "epochs": 1, "logging": {"tensorboard": False}}, tmp_path / "r", progress=False)
    names = sorted(p.name for p in (tmp_path / "r").iterdir() if not p.name.startswith("."))
    assert names == ["checkpoint.pt", "config.json", "metrics.jsonl", "result.json"]


def assert_steps_make_up_the_epochs(run_dir, steps: dict) -> None:
    """step/loss and step/acc every 2 steps: their windows (512, 512, 413 samples) average to the
    epoch's train loss and accuracy; SAM-ON's ||e|| is rho (p = 2, norm over the perturbed entries)."""
    metrics = io.read_jsonl(Path(run_dir) / "metrics.jsonl")
    assert [s for s, _ in steps["step/loss"]] == [2, 4, 6, 8, 10, 12]
    for epoch, m in enumerate(metrics):
        loss = [v for _, v in steps["step/loss"][3 * epoch:3 * epoch + 3]]
        acc = [v for _, v in steps["step/acc"][3 * epoch:3 * epoch + 3]]
        assert sum(v * n for v, n in zip(loss, WINDOWS)) / 1437 == pytest.approx(m["train_loss"], rel=1e-5)
        assert sum(v * n for v, n in zip(acc, WINDOWS)) / 1437 == pytest.approx(m["train_acc"], rel=1e-5)
    assert [v for _, v in steps["sam/e_norm"]] == pytest.approx([0.5] * 6, rel=1e-5)
    assert [v for _, v in steps["sam/rho_t"]] == pytest.approx([0.5] * 6)
    assert all(v > 0 for _, v in steps["sam/ascent_grad_norm"])


def test_killed_and_resumed_run_continues_every_logger_run_without_duplicates(tmp_path):
    cfg = {**TINY, "logging": ALL_LOGGERS, "log_every": 2}
    run_dir = tmp_path / "suite-x" / "r"
    with pytest.raises(Kill):
        train.run(cfg, run_dir, suite="suite-x", progress=False, log=kill_after_epoch(1))
    result = train.run(cfg, run_dir, suite="suite-x", progress=False)
    assert result["status"] == "done"
    # TensorBoard: epochs in the run folder, steps in its steps/ (6 steps an epoch, logged every 2)
    assert_equals_metrics(run_dir, tensorboard_scalars(run_dir))
    assert_steps_make_up_the_epochs(run_dir, tensorboard_scalars(run_dir / "steps"))
    # W&B: two offline runs (before and after the kill) of one W&B run id, each step once; its step is
    # the training step, an epoch's line at the epoch's last step (6, 12)
    runs = wandb_offline_runs(run_dir)
    assert len(runs) == 2 and runs[0]["id"] == runs[1]["id"] == loggers.wandb_run_id(result["run_id"], "suite-x")
    assert {r["group"] for r in runs} == {"suite-x"} and {r["name"] for r in runs} == {result["run_id"]}
    history = [(step, items) for r in runs for step, items in r["history"]]
    assert [step for step, _ in history] == [2, 4, 6, 8, 10, 12]
    epochs = [(step, items) for step, items in history if "epoch" in items]
    assert [(step, items["epoch"]) for step, items in epochs] == [(6, 1), (12, 2)]
    metrics = io.read_jsonl(run_dir / "metrics.jsonl")
    assert [items["test/acc"] for _, items in epochs] == pytest.approx([m["test_acc"] for m in metrics])
    assert_steps_make_up_the_epochs(run_dir, {k: [(s, it[k]) for s, it in history] for k in
                                              ("step/loss", "step/acc", "sam/e_norm", "sam/rho_t", "sam/ascent_grad_norm")})
    assert runs[1]["summary"]["final/test_acc"] == pytest.approx(result["test_acc"])
    # MLflow: one run in the suite's file store, each epoch once
    state = io.read_json(run_dir / loggers.STATE_FILE)
    assert state["mlflow_tracking_uri"] == (tmp_path / "suite-x" / "mlruns").as_uri()
    assert mlflow_history(state["mlflow_tracking_uri"], state["mlflow_run_id"], "train/loss") == [
        (m["epoch"], pytest.approx(m["train_loss"])) for m in metrics]
    assert_steps_make_up_the_epochs(run_dir, {k: mlflow_history(state["mlflow_tracking_uri"], state["mlflow_run_id"], k)
                                              for k in ("step/loss", "step/acc", "sam/e_norm", "sam/rho_t",
                                                        "sam/ascent_grad_norm")})
    client = mlflow_client(state["mlflow_tracking_uri"])
    run = client.get_run(state["mlflow_run_id"])
    assert run.info.status == "FINISHED" and len(client.search_runs([run.info.experiment_id])) == 1


def test_a_run_that_starts_over_logs_each_epoch_once_and_in_a_new_mlflow_run(tmp_path):
    """An unreadable checkpoint.pt is set aside and the run trains from epoch 1 again."""
    cfg = {**TINY, "logging": {"tensorboard": True, "mlflow": True}}
    run_dir = tmp_path / "r"
    with pytest.raises(Kill):
        train.run(cfg, run_dir, progress=False, log=kill_after_epoch(2))  # both epochs logged
    before = io.read_json(run_dir / loggers.STATE_FILE)
    assert before["logged_epoch"] == 2
    (run_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert train.run(cfg, run_dir, progress=False)["status"] == "done"
    assert (run_dir / "checkpoint.pt.corrupt").exists()
    assert_equals_metrics(run_dir, tensorboard_scalars(run_dir))  # each epoch once: the new values
    state = io.read_json(run_dir / loggers.STATE_FILE)
    assert state["restarts"] == 1 and state["mlflow_run_id"] != before["mlflow_run_id"]
    metrics = io.read_jsonl(run_dir / "metrics.jsonl")
    assert mlflow_history(state["mlflow_tracking_uri"], state["mlflow_run_id"], "train/loss") == [
        (m["epoch"], pytest.approx(m["train_loss"])) for m in metrics]


def test_an_unreadable_loggers_state_is_kept_aside_and_the_history_logged_again(tmp_path, capsys):
    run_dir = tmp_path / "r"
    with pytest.raises(Kill):
        train.run(TINY, run_dir, progress=False, log=kill_after_epoch(1))
    (run_dir / loggers.STATE_FILE).write_text('{"logged_ep')
    assert train.run(TINY, run_dir, progress=False)["status"] == "done"
    assert (run_dir / f"{loggers.STATE_FILE}.corrupt").read_text() == '{"logged_ep'
    assert_equals_metrics(run_dir, tensorboard_scalars(run_dir))
    assert io.read_json(run_dir / loggers.STATE_FILE)["logged_epoch"] == 2
    assert "loggers.json was unreadable" in capsys.readouterr().err


def test_suite_logging_block_reaches_every_run_and_stays_out_of_the_run_id(tmp_path):
    suite = {"name": "logged", "defaults": {**{k: v for k, v in TINY.items() if k != "device"}, "epochs": 1},
             "grid": {"rho": [0.1, 0.5]}, "seeds": [0],
             "logging": {"tensorboard": True, "mlflow": {"experiment": "logged-exp"}}}
    path = tmp_path / "logged.yaml"
    path.write_text(yaml.safe_dump(suite))
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({k: v for k, v in suite.items() if k != "logging"}))
    out = tmp_path / "results"
    listed = {}
    for p in (path, plain):
        proc = subprocess.run([sys.executable, "-m", "bench", "run", str(p), "--out", str(out), "--dry-run"],
                              capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr
        listed[p.name] = sorted(w for w in proc.stdout.split() if re.fullmatch("[0-9a-f]{12}", w))
    assert listed["logged.yaml"] == listed["plain.yaml"] and len(listed["logged.yaml"]) == 2
    proc = subprocess.run([sys.executable, "-m", "bench", "run", str(path), "--out", str(out), "--executor", "debug"],
                          capture_output=True, text=True, cwd=REPO, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dirs = [d for d in (out / "logged").iterdir() if (d / "result.json").exists()]
    assert len(run_dirs) == 2
    client = mlflow_client((out / "logged" / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("logged-exp")
    assert len(client.search_runs([experiment.experiment_id])) == 2
    for d in run_dirs:
        assert "test/acc" in tensorboard_scalars(d)


def test_missing_optional_package_is_exit_2_naming_the_extra(tmp_path):
    code = ("import sys; sys.modules['wandb'] = None\n"
            "from bench import cli\n"
            f"sys.exit(cli.main(['train', '--log', 'wandb', '--epochs', '1', '--out', {str(tmp_path / 'r')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
                          check=False)
    assert proc.returncode == 2, proc.stderr
    assert "logging.wandb" in proc.stderr and "pip install -e .[wandb]" in proc.stderr
    assert not (tmp_path / "r").exists()
