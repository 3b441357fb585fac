"""Loggers (bench.loggers): written files read back with TensorBoard's, W&B's and MLflow's own readers."""
import importlib.util

import pytest
from logger_readers import (
    mlflow_client,
    mlflow_history,
    tensorboard_hparams,
    tensorboard_scalars,
    wandb_offline_runs,
)

from bench import io, loggers

CONFIG = {"dataset": "digits", "model": "resnet_ci", "rho": 0.5, "base": {"name": "sgd", "lr": 0.1},
          "augment": True, "sparsity": None, "logging": {"tensorboard": True}}
HISTORY = [
    {"epoch": 1, "train_loss": 2.25, "train_acc": 20.5, "test_loss": 2.0, "test_acc": 30.25, "lr": 0.05,
     "epoch_time_s": 0.5, "perturbed_fraction": 0.0123},
    {"epoch": 2, "train_loss": 1.5, "train_acc": 50.0, "test_loss": 1.25, "test_acc": 60.5, "lr": 0.0,
     "epoch_time_s": 0.25, "perturbed_fraction": 0.0123},
    {"epoch": 3, "train_loss": 1.0, "train_acc": 70.0, "test_loss": 0.75, "test_acc": 80.0, "lr": 0.0,
     "epoch_time_s": 0.25, "perturbed_fraction": 0.0123},
]
RESULT = {"status": "done", "epochs": 3, "test_acc": 80.0, "test_loss": 0.75, "train_acc": 70.0,
          "train_loss": 1.0, "best_test_acc": 80.0, "perturbed_fraction": 0.0123, "seconds_per_epoch": 0.33,
          "wall_time_s": 1.5}
WANDB = {"tensorboard": False, "wandb": {"mode": "offline", "project": "sambench-test"}}


def open_group(block, run_dir, history=(), suite="suite-a", rank=0):
    return loggers.open_loggers(block, run_dir, "abc123def456", suite, CONFIG, history=history, rank=rank)


def log_all(block, run_dir, records, result=RESULT, **kw):
    with open_group(block, run_dir, **kw) as group:
        for rec in records:
            group.log_epoch(rec)
        if result is not None:
            group.log_final(result, CONFIG)


def expected(tag_key, records=HISTORY):
    return [(r["epoch"], pytest.approx(r[tag_key], rel=1e-6)) for r in records]


# --- the logging block -------------------------------------------------------------------------

def test_block_defaults_options_and_errors():
    assert loggers.normalize(None) == {"tensorboard": {}, "wandb": None, "mlflow": None}
    out = loggers.normalize({"wandb": {"mode": "offline"}, "mlflow": True, "tensorboard": False})
    assert out["tensorboard"] is None and out["wandb"]["mode"] == "offline"
    assert out["wandb"]["project"] == "sambench" and out["mlflow"] == {"tracking_uri": None, "experiment": None}
    for block, field in ((["wandb"], "logging"), ({"neptune": True}, "logging.neptune"),
                         ({"wandb": {"mode": "cloud"}}, "logging.wandb.mode"),
                         ({"wandb": {"projekt": "x"}}, "logging.wandb.projekt"),
                         ({"tensorboard": {"x": 1}}, "logging.tensorboard"),
                         ({"mlflow": "yes"}, "logging.mlflow"),
                         ({"mlflow": {"tracking_uri": 3}}, "logging.mlflow.tracking_uri")):
        with pytest.raises(loggers.LoggingError) as err:
            loggers.normalize(block)
        assert err.value.field == field, block
    assert loggers.from_flag("tensorboard,mlflow") == {"tensorboard": True, "wandb": False, "mlflow": True}
    assert loggers.from_flag("none") == {"tensorboard": False, "wandb": False, "mlflow": False}
    with pytest.raises(loggers.LoggingError, match="neptune"):
        loggers.from_flag("wandb,neptune")


def test_missing_package_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(loggers.LoggingError) as err:
        loggers.normalize({"wandb": True})
    assert err.value.field == "logging.wandb" and "pip install -e .[wandb]" in str(err.value)
    loggers.normalize({"wandb": False})  # off: the package is not needed


def test_scalars_tags_and_finals():
    rec = dict(HISTORY[0], test_acc=float("nan"), flag=True, note="x", sharpness=3)
    tags = loggers.epoch_scalars(rec)
    assert tags == {"train/loss": 2.25, "train/acc": 20.5, "test/loss": 2.0, "lr": 0.05, "time/epoch_s": 0.5,
                    "perturbed_fraction": 0.0123, "sharpness": 3.0}  # nan, bools, strings, epoch left out
    assert loggers.final_scalars({"test_acc": 1, "train_loss": None, "status": "done"}) == {"final/test_acc": 1.0}
    assert loggers.flat_config(CONFIG)["base.lr"] == 0.1 and "logging" not in loggers.flat_config(CONFIG)


# --- TensorBoard ---------------------------------------------------------------------------------

def test_tensorboard_scalars_and_hparams_read_back(tmp_path):
    log_all(None, tmp_path, HISTORY)
    got = tensorboard_scalars(tmp_path)
    assert got["train/loss"] == expected("train_loss") and got["test/acc"] == expected("test_acc")
    assert got["train/acc"] == expected("train_acc") and got["test/loss"] == expected("test_loss")
    assert got["lr"] == expected("lr") and got["perturbed_fraction"] == expected("perturbed_fraction")
    assert got["final/test_acc"] == [(3, 80.0)] and got["final/best_test_acc"] == [(3, 80.0)]
    hparams, metric_tags = tensorboard_hparams(tmp_path)
    assert hparams["base.lr"] == pytest.approx(0.1) and hparams["model"] == "resnet_ci"
    assert hparams["augment"] == "True" and "logging.tensorboard" not in hparams
    assert "final/test_acc" in metric_tags and "final/train_loss" in metric_tags
    assert io.read_json(tmp_path / loggers.STATE_FILE)["logged_epoch"] == 3


def test_tensorboard_resume_after_a_kill_has_no_duplicate_steps(tmp_path):
    # attempt 1 logs epochs 1-2, then dies before its state file says so for epoch 2
    group = open_group(None, tmp_path)
    group.log_epoch(HISTORY[0])
    state = dict(group.state)
    group.log_epoch(dict(HISTORY[1], train_loss=99.0))  # a stale epoch 2 that the checkpoint never saw
    group.loggers[0].writer.flush()
    io.write_json(tmp_path / loggers.STATE_FILE, state)
    # attempt 2 resumes from a checkpoint after epoch 2 (the history it holds) and trains epoch 3
    log_all(None, tmp_path, HISTORY[2:], history=HISTORY[:2])
    got = tensorboard_scalars(tmp_path)
    assert got["train/loss"] == expected("train_loss")  # 1, 2, 3 once each; the stale 99 purged
    # a lost state file: the history is logged again over everything before
    (tmp_path / loggers.STATE_FILE).unlink()
    log_all(None, tmp_path, [], result=None, history=HISTORY)
    assert tensorboard_scalars(tmp_path)["train/loss"] == expected("train_loss")


def test_only_rank_zero_logs(tmp_path):
    group = open_group(None, tmp_path, rank=1)
    assert group.names == []
    group.log_epoch(HISTORY[0])
    group.close()
    assert list(tmp_path.iterdir()) == []
    assert loggers.process_rank(None) == 0
    assert loggers.process_rank(3) == 3


def test_a_logger_failing_mid_run_warns_once_and_training_goes_on(tmp_path):
    warnings = []
    group = loggers.open_loggers(None, tmp_path, "r", None, CONFIG, warn=warnings.append)

    def broken(*a):
        raise OSError("disk full")

    group.loggers[0].log_epoch = broken
    group.log_epoch(HISTORY[0])
    group.log_epoch(HISTORY[1])
    group.close()
    assert warnings == ["tensorboard logging stopped (epoch): OSError: disk full"]


# --- W&B (offline) -------------------------------------------------------------------------------

def test_wandb_offline_run_read_back(tmp_path):
    log_all(WANDB, tmp_path, HISTORY)
    (run,) = wandb_offline_runs(tmp_path)
    assert run["id"] == loggers.wandb_run_id("abc123def456", "suite-a") and run["id"].startswith("abc123def456-")
    assert run["name"] == "abc123def456" and run["group"] == "suite-a" and run["project"] == "sambench-test"
    assert run["config"]["base"] == {"name": "sgd", "lr": 0.1} and "logging" not in run["config"]
    steps = [(step, items["train/loss"]) for step, items in run["history"]]
    assert steps == [(1, 2.25), (2, 1.5), (3, 1.0)]
    assert all(items["epoch"] == step for step, items in run["history"])
    assert run["summary"]["final/test_acc"] == 80.0


def test_wandb_resumed_run_keeps_its_id_without_duplicate_steps(tmp_path):
    with open_group(WANDB, tmp_path) as group:  # attempt 1: epoch 1, then requeued
        group.log_epoch(HISTORY[0])
    log_all(WANDB, tmp_path, HISTORY[1:], history=HISTORY[:1])
    first, second = wandb_offline_runs(tmp_path)
    assert first["id"] == second["id"]
    steps = [step for run in (first, second) for step, _ in run["history"]]
    assert steps == [1, 2, 3]
    # a catch-up: the checkpoint holds epoch 2 that no logger got (killed between the two)
    other = tmp_path / "other"
    with open_group(WANDB, other) as group:
        group.log_epoch(HISTORY[0])
    log_all(WANDB, other, HISTORY[2:], history=HISTORY[:2])
    steps = [step for run in wandb_offline_runs(other) for step, _ in run["history"]]
    assert steps == [1, 2, 3]


# --- MLflow (local file store) --------------------------------------------------------------------

def test_mlflow_file_store_read_back_and_resume(tmp_path):
    suite_dir = tmp_path / "suite-a"
    run_dir = suite_dir / "abc123def456"
    run_dir.mkdir(parents=True)
    block = {"tensorboard": False, "mlflow": True}
    with open_group(block, run_dir) as group:
        group.log_epoch(HISTORY[0])
        group.log_epoch(HISTORY[1])
    state = io.read_json(run_dir / loggers.STATE_FILE)
    assert state["mlflow_tracking_uri"] == (suite_dir / "mlruns").as_uri()  # one store per suite
    # a kill after MLflow logged epoch 2 but before the state file said so
    io.write_json(run_dir / loggers.STATE_FILE, dict(state, logged_epoch=1))
    log_all(block, run_dir, HISTORY[2:], history=HISTORY[:2])
    uri, run_id = state["mlflow_tracking_uri"], state["mlflow_run_id"]
    assert io.read_json(run_dir / loggers.STATE_FILE)["mlflow_run_id"] == run_id  # the same run
    assert mlflow_history(uri, run_id, "train/loss") == [(1, 2.25), (2, 1.5), (3, 1.0)]
    assert mlflow_history(uri, run_id, "test/acc") == [(1, 30.25), (2, 60.5), (3, 80.0)]
    client = mlflow_client(uri)
    run = client.get_run(run_id)
    assert run.info.run_name == "abc123def456" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "suite-a"
    assert run.data.params["base.lr"] == "0.1" and run.data.metrics["final/test_acc"] == 80.0
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_mlflow_tracking_uri_and_experiment_options(tmp_path):
    uri = (tmp_path / "store").as_uri()
    block = {"tensorboard": False, "mlflow": {"tracking_uri": uri, "experiment": "paper"}}
    with pytest.raises(RuntimeError):
        with open_group(block, tmp_path / "run", suite=None) as group:
            group.log_epoch(HISTORY[0])
            raise RuntimeError("the run crashed")
    client = mlflow_client(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("paper").experiment_id])
    assert run.info.status == "FAILED" and run.data.metrics["train/loss"] == 2.25
