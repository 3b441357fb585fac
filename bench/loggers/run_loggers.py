"""The loggers of one run, together: opened after a resume, each epoch logged once, finished at the end."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from bench import io, rundir
from bench.loggers.base import (
    Logger,
    _warn,
    epoch_scalars,
    final_scalars,
    hyperparameters,
    process_rank,
    sharpness_scalars,
)
from bench.loggers.mlflow_logger import MlflowLogger
from bench.loggers.settings import BACKENDS, LoggingError, normalize
from bench.loggers.tensorboard_logger import TensorBoardLogger
from bench.loggers.wandb_logger import WandbLogger

STATE_FILE = "loggers.json"


# --- the logging block ------------------------------------------------------------------------


# --- helpers ----------------------------------------------------------------------------------


# --- the backends -----------------------------------------------------------------------------


def create_logger(backend: str, opts: dict) -> Logger:
    if backend == "tensorboard":
        return TensorBoardLogger()
    if backend == "wandb":
        return WandbLogger(opts)
    if backend == "mlflow":
        return MlflowLogger(opts)
    raise LoggingError("logging", f"unknown logger {backend!r}", list(BACKENDS))


# --- the group the training loop talks to -------------------------------------------------------

class Loggers:
    """Every enabled logger of one run; a logger that fails mid-run is reported once and dropped
    (the training goes on). Empty (a no-op) on ranks other than 0."""

    def __init__(self, loggers: list[Logger], run_dir: Path | None, state: dict,
                 warn: Callable[[str], None] = _warn):
        self.loggers, self.run_dir, self.state, self.warn = loggers, run_dir, state, warn
        self.status = "done"

    @property
    def names(self) -> list[str]:
        return [lg.name for lg in self.loggers]

    def _each(self, what: str, call: Callable[[Logger], None]) -> None:
        for lg in list(self.loggers):
            try:
                call(lg)
            except Exception as exc:  # a logger never stops the training
                self.warn(f"{lg.name} logging stopped ({what}): {type(exc).__name__}: {exc}")
                self.loggers.remove(lg)

    def _save_state(self, sync: bool = True) -> None:
        if self.run_dir is not None:
            io.write_json(self.run_dir / STATE_FILE, self.state, sync=sync)

    def log_epoch(self, record: dict) -> None:
        """Log one metrics.jsonl line (step = its ``epoch``), once per epoch."""
        epoch = int(record["epoch"])
        if not self.loggers or epoch <= int(self.state.get("logged_epoch", 0)):
            return
        scalars = epoch_scalars(record)
        self._each("epoch", lambda lg: lg.log_epoch(epoch, scalars))
        self.state["logged_epoch"] = epoch
        self._save_state()

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        """Log one training step's scalars (every ``log_every`` steps; step = steps since the run
        began), each step once: a resumed run skips the steps its loggers already hold."""
        if not self.loggers or step <= int(self.state.get("logged_step", 0)):
            return
        self._each("step", lambda lg: lg.log_step(step, scalars))
        self.state["logged_step"] = step
        self._save_state(sync=False)  # often; a lost update only logs a step again after a crash

    def log_final(self, result: dict, config: dict) -> None:
        """The config (and every variant option) as hyperparameters with the final metrics of
        result.json (its sharpness measures included)."""
        if not self.loggers:
            return
        self.status = str(result.get("status", "done"))
        hparams, final = hyperparameters(config, result), final_scalars(result)
        step = int(result.get("epochs") or 0)
        self._each("final", lambda lg: lg.log_final(hparams, final, step))

    def close(self, status: str | None = None) -> None:
        status = status or self.status
        self._each("finish", lambda lg: lg.finish(status))
        self.loggers = []

    def __enter__(self) -> Loggers:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("failed" if exc_type is not None else None)


def log_sharpness(run_dir: str | Path, config: dict, block: dict, warn: Callable[[str], None] = _warn) -> None:
    """Add a finished run's sharpness measures (``sharpness/<measure>``, at its last epoch) to the
    logger runs it trained in (reopened as a resume does). Never raises: a logger problem is a warning."""
    scalars = sharpness_scalars(block)
    if not scalars or process_rank() != 0:
        return
    run_dir = Path(run_dir)
    try:
        if not any(opts is not None for opts in normalize(config.get("logging")).values()):
            return
        doc = io.read_json(run_dir / "config.json")
        history = io.read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
        with open_loggers(config["logging"], run_dir, doc["run_id"], doc.get("suite"), config, history=history,
                          warn=warn) as group:
            step = int(history[-1]["epoch"]) if history else 0
            group._each("sharpness", lambda lg: lg.log_summary(scalars, step))
    except Exception as exc:  # noqa: BLE001 -- the measures are in result.json already
        warn(f"sharpness not logged to the run's loggers: {type(exc).__name__}: {exc}")


def read_state(run_dir: Path, warn: Callable[[str], None] = _warn) -> dict:
    """``loggers.json`` ({} if absent). An unreadable one is kept as ``loggers.json.corrupt`` and
    the run's history is logged again."""
    path = run_dir / STATE_FILE
    try:
        state = io.read_json(path)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        state = None
    if isinstance(state, dict):
        return state
    kept = rundir.move_aside(path)
    warn(f"{path} was unreadable: kept as {kept.name}; the loggers log this run's history again")
    return {}


def restart_state(state: dict, history: list[dict]) -> dict | None:
    """The state to start from when training went back before epochs the loggers already hold
    (an unreadable checkpoint.pt was set aside), else None: TensorBoard then drops the later
    events, W&B and MLflow begin new runs."""
    done = int(history[-1]["epoch"]) if history else 0
    if int(state.get("logged_epoch", 0)) <= done:
        return None
    return {"logged_epoch": done, "restarts": int(state.get("restarts", 0)) + 1}


def open_loggers(block: Any, run_dir: str | Path, run_id: str, suite: str | None, config: dict,
                 history: list[dict] = (), rank: int | None = None,
                 warn: Callable[[str], None] = _warn, steps_per_epoch: int | None = None) -> Loggers:
    """Start (or resume) the run's loggers and catch up on ``history`` (metrics.jsonl lines so far).

    Only rank 0 logs. Raises LoggingError for a bad block or a missing package. With
    ``steps_per_epoch`` W&B counts its steps in training steps (an epoch's line at its last step),
    so per-step scalars and epochs share one axis there.
    """
    if process_rank(rank) != 0:
        return Loggers([], None, {}, warn)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    enabled = {b: opts for b, opts in normalize(block).items() if opts is not None}
    state = read_state(run_dir, warn)
    restart = restart_state(state, history)
    ctx = {"run_dir": run_dir, "run_id": run_id, "suite": suite, "config": config,
           "resumed": bool(history) or restart is not None, "steps_per_epoch": steps_per_epoch}
    state = restart or state
    group = Loggers([], run_dir, state, warn)
    try:
        for backend, opts in enabled.items():
            lg = create_logger(backend, opts)
            lg.start(ctx, state)
            group.loggers.append(lg)
    except BaseException:
        group.close("failed")
        raise
    if group.loggers:
        group._save_state()
    for record in history:
        group.log_epoch(record)
    return group
