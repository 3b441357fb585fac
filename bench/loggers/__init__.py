"""Experiment loggers: TensorBoard (on by default), Weights & Biases and MLflow (optional extras).

A run's ``logging`` block (a runtime field: it never changes the run id)::

    logging:
      tensorboard: true                      # event files in the run folder
      wandb: {project: sambench, mode: offline}   # or true / false; needs `pip install -e .[wandb]`
      mlflow: {tracking_uri: null, experiment: null}  # or true / false; needs `.[mlflow]`

Use from the training loop (only rank 0 of a multi-process run logs; others get a no-op group)::

    with open_loggers(cfg["logging"], run_dir, run_id, suite, cfg, history=metrics, rank=0) as loggers:
        for ...:
            loggers.log_epoch(record)          # one metrics.jsonl line: scalars at step = epoch
        loggers.log_final(result, cfg)         # the config as hyperparameters + the final metrics
    # leaving the block finishes every logger ("failed" when an exception left it)

Resuming (after a requeue or a kill) continues the same logger run without duplicated steps.
``<run_dir>/loggers.json`` holds the last logged epoch and the W&B / MLflow run ids:
TensorBoard reopens the folder with ``purge_step = last logged + 1`` (events a kill left past
that point are discarded by TensorBoard's reader), W&B resumes the same id (``resume="allow"``)
and MLflow reopens the same run id; epochs in ``history`` that no logger has yet are caught up.
A run that trains again from an earlier epoch than its loggers hold (its checkpoint was
unreadable) logs over them in TensorBoard and in new W&B / MLflow runs.
"""
from bench.loggers.base import (
           FINAL_KEYS,
           TAGS,
           Logger,
           epoch_scalars,
           final_scalars,
           flat_config,
           hyperparameters,
           process_rank,
           sharpness_scalars,
)
from bench.loggers.run_loggers import (
           STATE_FILE,
           Loggers,
           create_logger,
           log_sharpness,
           open_loggers,
           read_state,
           restart_state,
)
from bench.loggers.settings import (
           BACKENDS,
           DEFAULTS,
           OPTIONS,
           LoggingError,
           from_flag,
           missing_package,
           normalize,
)
from bench.loggers.wandb_logger import wandb_run_id

__all__ = ["BACKENDS", "DEFAULTS", "FINAL_KEYS", "OPTIONS", "STATE_FILE", "TAGS", "Logger", "Loggers", "LoggingError",
           "create_logger", "log_sharpness", "epoch_scalars", "final_scalars", "flat_config", "from_flag", "missing_package",
           "normalize", "open_loggers", "process_rank", "hyperparameters", "sharpness_scalars", "read_state", "restart_state", "wandb_run_id"]
