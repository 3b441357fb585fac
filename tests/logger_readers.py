"""Read logger files back with the loggers' own readers (for the tests).

TensorBoard: its EventAccumulator (purges events past a restart's purge_step, as TensorBoard
shows them). MLflow: MlflowClient on the store. W&B: an offline run's ``run-<id>.wandb`` file is a
log of W&B's own ``Record`` protobufs (wandb.proto) in the LevelDB log framing (a 7-byte file
header, then 32 KiB blocks of chunks with a 7-byte header: crc32c, length, type); wandb 0.31 ships
no Python reader for it, so the framing is unpacked here and every record parsed by wandb's schema.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

WANDB_BLOCK = 32768
WANDB_MAGIC = b":W&B"


def tensorboard_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard shows the folder's scalars."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def tensorboard_hparams(log_dir) -> tuple[dict, list[str]]:
    """(hyperparameters of the session, metric tags of the experiment) from the hparams plugin."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    hparams = {}
    for key, value in start.hparams.items():
        kind = value.WhichOneof("kind")
        hparams[key] = getattr(value, kind)
    return hparams, [m.name.tag for m in experiment.metric_infos]


def _wandb_chunks(data: bytes):
    assert data[:4] == WANDB_MAGIC, "not a W&B transaction log"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = WANDB_BLOCK - pos % WANDB_BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:          # full
            yield chunk
        elif kind == 2:        # first
            pending = chunk
        elif kind == 3:        # middle
            pending += chunk
        elif kind == 4:        # last
            yield pending + chunk


def wandb_offline_run(run_file) -> dict:
    """One offline run file -> {id, name, group, project, config, history: [(step, {k: v})], summary}."""
    from wandb.proto import wandb_internal_pb2

    out = {"history": [], "summary": {}, "config": {}}
    for raw in _wandb_chunks(Path(run_file).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            out.update(id=run.run_id, name=run.display_name, group=run.run_group, project=run.project)
            out["config"].update({u.key: json.loads(u.value_json) for u in run.config.update})
        elif kind == "config":
            out["config"].update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif kind == "history":
            items = {(u.key or "/".join(u.nested_key)): json.loads(u.value_json) for u in record.history.item}
            out["history"].append((record.history.step.num, items))
        elif kind == "summary":
            for u in record.summary.update:
                out["summary"][u.key or "/".join(u.nested_key)] = json.loads(u.value_json)
    return out


def wandb_offline_runs(run_dir) -> list[dict]:
    """Every offline W&B run under ``<run_dir>/wandb``, oldest first."""
    files = sorted(Path(run_dir, "wandb").glob("offline-run-*/run-*.wandb"))
    return [wandb_offline_run(f) for f in files]


def mlflow_client(tracking_uri: str):
    """MlflowClient on a store; a local file store is allowed (MLflow 3 asks for the switch)."""
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def mlflow_history(tracking_uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    hist = mlflow_client(tracking_uri).get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in hist)
