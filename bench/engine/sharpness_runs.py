"""Sharpness of run folders: after training (the run's ``sharpness`` block) and ``sambench sharpness``.

The measures and their settings are :mod:`bench.measure.sharpness`; this module finds a run's model
(checkpoint.pt) and data, measures under the run lock, resumes from a partial file and stores
the block in result.json.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bench import io, rundir
from bench.measure.sharpness import (
    PARTIAL,
    SettingsError,  # noqa: F401 -- raised by evaluate_dirs through resolve_settings
    identity,
    measure,
    measure_keys,
    pending,
    present,
    resolve_settings,
)


class RunDirError(ValueError):
    """A folder that is not a finished run sharpness can be measured on (invalid input)."""


# --- run folders --------------------------------------------------------------------------------

def check_run_dir(run_dir: str | Path) -> tuple[dict, dict]:
    """(resolved config, result) of a finished run folder; RunDirError (one line) if it is not one."""
    from bench import config

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run folder")
    try:
        result = io.read_json(run_dir / "result.json")
    except FileNotFoundError:
        raise RunDirError(f"{run_dir}: no result.json (the run has not finished)") from None
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{run_dir}/result.json: unreadable ({type(exc).__name__})") from None
    if not isinstance(result, dict) or result.get("status") != "done":
        status = result.get("status") if isinstance(result, dict) else type(result).__name__
        raise RunDirError(f"{run_dir}: run status is {status!r}; sharpness needs a finished run ('done')")
    try:
        doc = io.read_json(run_dir / "config.json")
        cfg = config.resolve(doc["config"])
    except FileNotFoundError:
        raise RunDirError(f"{run_dir}: no config.json") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunDirError(f"{run_dir}/config.json: not a run config ({type(exc).__name__}: {exc})") from None
    if not (run_dir / "checkpoint.pt").is_file():
        raise RunDirError(f"{run_dir}: no checkpoint.pt to take the model from")
    rid = config.run_id(cfg)
    if result.get("run_id") not in (None, rid):
        raise RunDirError(f"{run_dir}: result.json belongs to run {result.get('run_id')}, config.json to {rid}")
    return cfg, result


def load_model_and_data(cfg: dict, run_dir: Path, n_samples: int, device):
    """(model from checkpoint.pt in eval mode, first n training inputs, their training labels), built
    the way training builds them (bench.engine.build)."""
    from bench import config
    from bench.engine.build import load_data, make_model

    ckpt = io.load_checkpoint(run_dir / "checkpoint.pt")
    if ckpt.get("run_id") != config.run_id(cfg):
        raise RunDirError(f"{run_dir}/checkpoint.pt belongs to run {ckpt.get('run_id')}, "
                          f"not {config.run_id(cfg)}")
    spec = load_data(cfg, download=False)
    model = make_model(cfg, spec, device)
    model.load_state_dict(ckpt["model"])
    model.eval()
    n = min(int(n_samples), len(spec.train_y))
    return model, spec.train_x[:n].to(device), spec.train_y[:n].to(device), int(ckpt.get("epoch", 0))


def _read_partial(run_dir: Path, settings: dict) -> dict:
    try:
        part = io.read_json(run_dir / PARTIAL)
    except (OSError, ValueError):
        return {}
    if not isinstance(part, dict) or part.get("identity") != identity(settings):
        return {}
    return part


def compute_for_run(run_dir: str | Path, cfg: dict, settings: dict, device: str = "auto",
                    log: Callable[[str], None] = print) -> dict:
    """Measure a run folder's model and store result.json["sharpness"]; the caller holds its lock.

    Resumes from sharpness.partial.json when its settings match. Returns the stored block.
    """
    from bench import env
    from bench.models import pick_device

    run_dir = Path(run_dir)
    dev = pick_device(device)
    model, x, y, epoch = load_model_and_data(cfg, run_dir, settings["n_samples"], dev)
    part = _read_partial(run_dir, settings) or {"identity": identity(settings), "values": {},
                                                 "time_s": {}, "details": {}}
    if part["values"]:
        log(f"[sharpness] {run_dir}: resuming, {len(part['values'])} measure(s) already done")

    def save(key, value, seconds, extra) -> None:
        part["values"][key] = value
        part["time_s"][key] = seconds
        part["details"].update(extra)
        io.write_json(run_dir / PARTIAL, part)

    out = measure(model, x, y, settings, done=part["values"], on_measure=save, log=log)
    block = {**out["values"],
             "time_s": {**part["time_s"], **out["time_s"]},
             "details": {**part["details"], **out["details"]},
             "settings": {**settings, "n_used": len(y), "device": str(dev),
                          "labels": "training labels as trained" + (
                              f" (label_noise {cfg['label_noise']:g} {cfg['label_noise_type']})"
                              if cfg["label_noise"] else ""),
                          "checkpoint_epoch": epoch},
             "env": {k: v for k, v in env.environment(dev).items()
                     if k in ("torch", "device", "device_name", "threads", "git_commit")}}
    store(run_dir, block)
    (run_dir / PARTIAL).unlink(missing_ok=True)
    from bench import loggers

    loggers.log_sharpness(run_dir, cfg, block)  # also into the run's TensorBoard / W&B / MLflow runs
    return block


def store(run_dir: Path, block: dict | None, error: str | None = None) -> dict:
    """Rewrite result.json atomically with ``sharpness`` (or ``sharpness_error``) set; keep the rest."""
    result = io.read_json(run_dir / "result.json")
    if not isinstance(result, dict):
        raise RunDirError(f"{run_dir}/result.json: not a JSON object")
    if block is not None:
        result["sharpness"] = block
        result.pop("sharpness_error", None)
    if error is not None:
        result["sharpness_error"] = error
    rundir.write_result(run_dir, result)
    return result


def after_training(cfg: dict, run_dir: str | Path, result: dict, log: Callable[[str], None] = print) -> dict:
    """Called by bench.engine.train.run with the run lock held: measure if the config asks; never raises.

    A failure is recorded as result.json["sharpness_error"]; the training result stays as it was.
    """
    if not pending(cfg, result):
        return result
    run_dir = Path(run_dir)
    settings = resolve_settings(cfg["sharpness"])
    log(f"[sharpness] {run_dir.name}: measuring {len(measure_keys(settings))} measure(s) "
        f"on {settings['n_samples']} training samples")
    try:
        compute_for_run(run_dir, cfg, settings, cfg["device"], log)
    except Exception as exc:  # noqa: BLE001 -- the trained model and its result must not be lost
        log(f"[sharpness] {run_dir.name}: failed: {type(exc).__name__}: {exc}")
        return store(run_dir, None, error=f"{type(exc).__name__}: {exc}")
    return io.read_json(run_dir / "result.json")


def evaluate_dirs(run_dirs: list[str], overrides: dict | None = None, device: str | None = None,
                  force: bool = False, log: Callable[[str], None] = print) -> list[tuple[str, str]]:
    """``sambench sharpness``: check every folder first (RunDirError/SettingsError), then measure.

    Returns (run folder, "done" | "skipped" | "locked") per folder.
    """
    from bench.rundir import RunLocked, run_lock

    checked = []
    for d in run_dirs:
        cfg, result = check_run_dir(d)
        settings = resolve_settings(cfg["sharpness"], overrides)
        checked.append((Path(d), cfg, result, settings))
    outcomes = []
    for run_dir, cfg, result, settings in checked:
        if not force and present(result, settings):
            log(f"[sharpness] {run_dir}: already in result.json with these settings, skipped (--force redoes it)")
            outcomes.append((str(run_dir), "skipped"))
            continue
        try:
            with run_lock(run_dir):
                log(f"[sharpness] {run_dir}: {len(measure_keys(settings))} measure(s) on "
                    f"{settings['n_samples']} training samples")
                compute_for_run(run_dir, cfg, settings, device or cfg["device"], log)
        except RunLocked:
            log(f"[sharpness] {run_dir}: locked by another process (training?), left alone")
            outcomes.append((str(run_dir), "locked"))
            continue
        outcomes.append((str(run_dir), "done"))
    return outcomes
