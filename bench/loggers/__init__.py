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
from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable

from bench import io, rundir
from bench.errors import InvalidInput, show

STATE_FILE = "loggers.json"
DEFAULTS: dict[str, Any] = {"tensorboard": True, "wandb": False, "mlflow": False}
BACKENDS = tuple(DEFAULTS)
# options of a backend given as a mapping (a mapping turns the backend on)
OPTIONS: dict[str, dict[str, Any]] = {
    "tensorboard": {},
    "wandb": {"project": "sambench", "entity": None, "mode": None, "tags": []},
    "mlflow": {"tracking_uri": None, "experiment": None},
}
WANDB_MODES = ["online", "offline", "disabled"]
# module to import -> the pip extra that installs it
EXTRAS = {"tensorboard": ("tensorboard", "sambench"), "wandb": ("wandb", "wandb"),
          "mlflow": ("mlflow", "mlflow")}
# metrics.jsonl keys -> logger tags; other numeric keys are logged under their own name
TAGS = {"train_loss": "train/loss", "train_acc": "train/acc", "test_loss": "test/loss",
        "test_acc": "test/acc", "lr": "lr", "perturbed_fraction": "perturbed_fraction",
        "epoch_time_s": "time/epoch_s"}
# result.json keys logged once at the end as final/<key>
FINAL_KEYS = ("test_acc", "test_loss", "train_acc", "train_loss", "best_test_acc", "perturbed_fraction",
              "seconds_per_epoch", "wall_time_s")


class LoggingError(InvalidInput):
    """A bad ``logging`` block or a logger whose package is not installed (exit 2).

    ``field`` is the dotted path inside the run config, ``allowed`` what would be accepted.
    """

    def __init__(self, field: str, message: str, allowed: Any = None):
        super().__init__(message, field=field, allowed=allowed)


# --- the logging block ------------------------------------------------------------------------

def missing_package(backend: str) -> str | None:
    """A message naming the extra to install when ``backend``'s package is absent, else None."""
    module, extra = EXTRAS[backend]
    if importlib.util.find_spec(module) is not None:
        return None
    how = "pip install -e ." if extra == "sambench" else f"pip install -e .[{extra}]"
    return f"needs the {module} package, which is not installed ({how}, or pip install 'sambench[{extra}]')"


def normalize(block: Any, field: str = "logging") -> dict[str, Any]:
    """Check a ``logging`` block; return ``{backend: None (off) | {option: value} (on)}``.

    Each backend is ``true``/``false`` or a mapping of its options (a mapping means on).
    Raises LoggingError naming the field; a backend that is on but whose package is missing is
    an error too (naming the pip extra), so it is caught before anything is written.
    """
    if block is None:
        block = {}
    if not isinstance(block, dict):
        raise LoggingError(field, f"must be a mapping, got {show(block)}", list(BACKENDS))
    out: dict[str, Any] = {}
    for key in block:
        if key not in DEFAULTS:
            raise LoggingError(f"{field}.{key}", "unknown logger", list(BACKENDS))
    for backend, default in DEFAULTS.items():
        value = block.get(backend, default)
        where = f"{field}.{backend}"
        if isinstance(value, bool):
            opts = dict(OPTIONS[backend]) if value else None
        elif isinstance(value, dict) and OPTIONS[backend]:
            opts = dict(OPTIONS[backend])
            for k, v in value.items():
                if k not in OPTIONS[backend]:
                    raise LoggingError(f"{where}.{k}", "unknown option", sorted(OPTIONS[backend]))
                opts[k] = v
            _check_options(backend, opts, where)
        else:
            allowed = [True, False] + (["a mapping of options"] if OPTIONS[backend] else [])
            raise LoggingError(where, f"must be true or false{' or a mapping' if OPTIONS[backend] else ''}, "
                                      f"got {show(value)}", allowed)
        if opts is not None:
            problem = missing_package(backend)
            if problem:
                raise LoggingError(where, problem)
        out[backend] = opts
    return out


def _check_options(backend: str, opts: dict, where: str) -> None:
    for k, v in opts.items():
        if k == "mode":
            if v is not None and v not in WANDB_MODES:
                raise LoggingError(f"{where}.mode", f"got {show(v)}", WANDB_MODES)
        elif k == "tags":
            if not (isinstance(v, list) and all(isinstance(t, str) for t in v)):
                raise LoggingError(f"{where}.tags", f"must be a list of strings, got {show(v)}")
        elif v is not None and not isinstance(v, str):
            raise LoggingError(f"{where}.{k}", f"must be a string, got {show(v)}")
        elif k == "project" and v is None:
            raise LoggingError(f"{where}.project", "must be a string, got None")


def from_flag(text: str) -> dict[str, bool]:
    """``--log tensorboard,wandb`` -> a logging block with exactly those on (``none``: all off)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["none"]:
        return {b: False for b in BACKENDS}
    for n in names:
        if n not in BACKENDS:
            raise LoggingError("--log", f"unknown logger {n!r}", list(BACKENDS) + ["none"])
    return {b: b in names for b in BACKENDS}


# --- helpers ----------------------------------------------------------------------------------

def flat_config(cfg: dict, prefix: str = "") -> dict[str, Any]:
    """{"base": {"lr": 0.1}} -> {"base.lr": 0.1}; the logging block itself is left out."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if not prefix and k == "logging":
            continue
        if isinstance(v, dict):
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def epoch_scalars(record: dict) -> dict[str, float]:
    """The finite numeric values of a metrics.jsonl line, under their logger tags."""
    out = {}
    for k, v in record.items():
        if k == "epoch" or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            out[TAGS.get(k, k)] = float(v)
    return out


def final_scalars(result: dict) -> dict[str, float]:
    return {f"final/{k}": float(result[k]) for k in FINAL_KEYS
            if isinstance(result.get(k), (int, float)) and math.isfinite(result[k])}


def wandb_run_id(run_id: str, suite: str | None, restarts: int = 0) -> str:
    """The W&B run id: the run id, plus a short hash of the suite (one config may be in two
    suites), plus ``-r<n>`` after the n-th restart from an earlier epoch (W&B steps only grow)."""
    wid = run_id if not suite else f"{run_id}-{hashlib.sha1(suite.encode()).hexdigest()[:6]}"
    return f"{wid}-r{restarts}" if restarts else wid


def process_rank(rank: int | None = None) -> int:
    """The given rank, else torch.distributed's (when initialized), else $RANK, else 0."""
    if rank is not None:
        return int(rank)
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    return int(os.environ.get("RANK", "0") or 0)


def _warn(msg: str) -> None:
    from bench.console import warn

    warn(msg)


# --- the backends -----------------------------------------------------------------------------

class Logger:
    """One backend. ``start`` opens (or reopens) the logger run; steps are epochs (1-based)."""

    name = "logger"

    def start(self, ctx: dict, state: dict) -> None:
        raise NotImplementedError

    def log_epoch(self, epoch: int, scalars: dict[str, float]) -> None:
        raise NotImplementedError

    def log_final(self, hparams: dict[str, Any], final: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def finish(self, status: str) -> None:
        raise NotImplementedError


class TensorBoardLogger(Logger):
    """Event files in the run folder (``tensorboard --logdir <suite folder>`` shows every run)."""

    name = "tensorboard"

    def start(self, ctx, state):
        from torch.utils.tensorboard import SummaryWriter

        last = int(state.get("logged_epoch", 0))
        # a resumed run: anything a kill left past the last logged epoch is dropped by the reader
        # (with no state file, every earlier event: the history is logged again)
        resumed = last or ctx["resumed"]
        self.writer = SummaryWriter(log_dir=str(ctx["run_dir"]), purge_step=last + 1 if resumed else None)

    def log_epoch(self, epoch, scalars):
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step=epoch)
        self.writer.flush()

    def log_final(self, hparams, final, step):
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        values = {k: (str(v) if isinstance(v, bool) or not isinstance(v, (int, float, str)) else v)
                  for k, v in hparams.items()}
        for summary in hparams_summary(values, final):
            self.writer.file_writer.add_summary(summary)
        for tag, value in final.items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def finish(self, status):
        self.writer.close()


class WandbLogger(Logger):
    """A W&B run: name = run id, group = suite, id derived from the run id (resumed after a requeue)."""

    name = "wandb"

    def __init__(self, opts: dict):
        self.opts = opts

    def start(self, ctx, state):
        import wandb

        run_id = state.setdefault("wandb_id", wandb_run_id(ctx["run_id"], ctx["suite"], state.get("restarts", 0)))
        settings = wandb.Settings(silent=True, console="off")
        self.run = wandb.init(
            project=self.opts["project"], entity=self.opts["entity"], mode=self.opts["mode"],
            tags=list(self.opts["tags"]) or None, id=run_id, name=ctx["run_id"], group=ctx["suite"],
            resume="allow", dir=str(ctx["run_dir"]), settings=settings,
            config={k: v for k, v in ctx["config"].items() if k != "logging"})

    def log_epoch(self, epoch, scalars):
        self.run.log({**scalars, "epoch": epoch}, step=epoch)

    def log_final(self, hparams, final, step):
        for key, value in final.items():
            self.run.summary[key] = value

    def finish(self, status):
        import wandb

        self.run.finish(exit_code=0 if status in ("done", "diverged") else 1)
        wandb.teardown()  # wait for W&B's service to write out the run's files


class MlflowLogger(Logger):
    """An MLflow run (name = run id) in the experiment named by the suite; a local file store by
    default (``<suite folder>/mlruns``, or ``<run folder>/mlruns`` for a lone run)."""

    name = "mlflow"

    def __init__(self, opts: dict):
        self.opts = opts

    def start(self, ctx, state):
        uri = self.opts["tracking_uri"] or state.get("mlflow_tracking_uri") or self.default_uri(ctx)
        if uri.startswith("file:") or "://" not in uri:
            # MLflow 3 keeps its file store in maintenance mode behind this switch; a local store
            # needs no server and takes parallel workers writing their own runs
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        state["mlflow_tracking_uri"] = uri
        run = self._existing_run(state.get("mlflow_run_id"))
        if run is None:
            experiment = self._experiment_id(self.opts["experiment"] or ctx["suite"] or "sambench")
            run = self.client.create_run(experiment, run_name=ctx["run_id"],
                                         tags={"sambench.run_id": ctx["run_id"], "sambench.suite": ctx["suite"] or ""})
            self._log_params(run.info.run_id, ctx["config"])
            state["mlflow_run_id"] = run.info.run_id
        else:
            self.client.update_run(run.info.run_id, status="RUNNING")
        self.run_id = run.info.run_id
        self.logged = self._last_step()

    @staticmethod
    def default_uri(ctx) -> str:
        folder = Path(ctx["run_dir"]).resolve()
        if ctx["suite"]:
            folder = folder.parent
        return (folder / "mlruns").as_uri()

    def _existing_run(self, mlflow_run_id):
        if not mlflow_run_id:
            return None
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(mlflow_run_id)
        except MlflowException:
            return None

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except MlflowException:  # another worker created it first
            return self.client.get_experiment_by_name(name).experiment_id

    def _log_params(self, run_id: str, config: dict) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)[:6000]) for k, v in sorted(flat_config(config).items())]
        for i in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[i:i + 100])

    def _last_step(self) -> int:
        """The last epoch this MLflow run already holds (a kill may fall between log and state)."""
        history = self.client.get_metric_history(self.run_id, "epoch")
        return max((m.step for m in history), default=0)

    def _log(self, values: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def log_epoch(self, epoch, scalars):
        if epoch <= self.logged:
            return
        self._log({**scalars, "epoch": float(epoch)}, epoch)
        self.logged = epoch

    def log_final(self, hparams, final, step):
        self._log(final, step)

    def finish(self, status):
        self.client.set_terminated(self.run_id, status="FINISHED" if status in ("done", "diverged") else "FAILED")


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

    def _save_state(self) -> None:
        if self.run_dir is not None:
            io.write_json(self.run_dir / STATE_FILE, self.state)

    def log_epoch(self, record: dict) -> None:
        """Log one metrics.jsonl line (step = its ``epoch``), once per epoch."""
        epoch = int(record["epoch"])
        if not self.loggers or epoch <= int(self.state.get("logged_epoch", 0)):
            return
        scalars = epoch_scalars(record)
        self._each("epoch", lambda lg: lg.log_epoch(epoch, scalars))
        self.state["logged_epoch"] = epoch
        self._save_state()

    def log_final(self, result: dict, config: dict) -> None:
        """The config as hyperparameters with the final metrics of result.json."""
        if not self.loggers:
            return
        self.status = str(result.get("status", "done"))
        hparams, final = flat_config(config), final_scalars(result)
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
                 warn: Callable[[str], None] = _warn) -> Loggers:
    """Start (or resume) the run's loggers and catch up on ``history`` (metrics.jsonl lines so far).

    Only rank 0 logs. Raises LoggingError for a bad block or a missing package.
    """
    if process_rank(rank) != 0:
        return Loggers([], None, {}, warn)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    enabled = {b: opts for b, opts in normalize(block).items() if opts is not None}
    state = read_state(run_dir, warn)
    restart = restart_state(state, history)
    ctx = {"run_dir": run_dir, "run_id": run_id, "suite": suite, "config": config,
           "resumed": bool(history) or restart is not None}
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
