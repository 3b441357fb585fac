"""Read a results folder into one pandas DataFrame (one row per run). Files only, no torch."""
from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import index
from analysis.labels import (
    CONFIG_DEFAULTS,
    LABEL_INPUTS,
    META_COLUMNS,
    NUMERIC_RESULT_COLUMNS,
    RESULT_COLUMNS,
    SHARPNESS_PREFIX,
    SHARPNESS_TIME_PREFIX,
    add_labels,
    is_runtime,
)
from analysis.reference import load_references

log = logging.getLogger("analysis")

# result.json keys that are not copied as plain columns
_RESULT_SPECIAL = {"config", "env", "run_id", "status", "epochs", "variant_options", "submission"}


def _flatten(d: dict, prefix: str = "", out: dict | None = None) -> dict:
    """{"base": {"lr": 0.1}} -> {"base.lr": 0.1}; lists become tuples (hashable)."""
    out = {} if out is None else out
    for k, v in d.items():
        key = f"{prefix}{k}" if prefix else k
        kind = type(v)
        if kind is str or kind is int or kind is float or kind is bool or v is None:
            out[key] = v
        elif isinstance(v, dict):
            if v:
                _flatten(v, key + ".", out)
            # an empty option map contributes no column
        elif isinstance(v, list):
            out[key] = tuple(tuple(x) if isinstance(x, list) else x for x in v)
        else:
            out[key] = v
    return out


def _read_json(path: Path, skipped: list) -> Any:
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except (OSError, ValueError) as exc:
        skipped.append({"path": str(path), "reason": f"{type(exc).__name__}: {exc}"})
        return None
    if not isinstance(data, dict):
        skipped.append({"path": str(path), "reason": f"not a JSON object ({type(data).__name__})"})
        return None
    return data


def _read_metrics(path: Path, skipped: list) -> tuple[int, dict | None]:
    """(number of valid lines, last valid record)."""
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return 0, None
    except OSError as exc:
        skipped.append({"path": str(path), "reason": f"{type(exc).__name__}: {exc}"})
        return 0, None
    n, last = 0, None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as exc:
            skipped.append({"path": f"{path}:{i}", "reason": f"bad JSON line: {exc}"})
            continue
        if isinstance(rec, dict):
            n += 1
            last = rec
    return n, last


def _sharpness_columns(block: dict) -> dict:
    """result.json["sharpness"] -> "sharpness.<measure>" and "sharpness_time.<measure>" columns."""
    out = {}
    for k, v in block.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) or v is None:
            out[SHARPNESS_PREFIX + k] = v
    times = block.get("time_s")
    if isinstance(times, dict):
        for k, v in times.items():
            out[SHARPNESS_TIME_PREFIX + k] = v
    return out


def _find_run_dirs(root: Path) -> list[Path]:
    """Folders holding a config.json or a result.json. Symbolic links to folders are followed
    (as ``sambench status`` does), each real folder once, so a link loop ends."""
    if (root / "config.json").is_file():
        return [root]
    found: list[str] = []
    seen: set[str] = set()
    stack = [(str(root), os.path.realpath(root))]
    isfile, join = os.path.isfile, os.path.join
    while stack:
        top, real = stack.pop()
        if real in seen:
            continue
        seen.add(real)
        if isfile(join(top, "config.json")) or isfile(join(top, "result.json")):
            found.append(top)
            continue  # run folders do not nest
        try:
            with os.scandir(top) as it:
                entries = [e for e in it if not e.name.startswith(".") and e.is_dir()]
        except OSError:
            continue
        # a folder's real path: resolved only through a link (else its parent's real path + its name)
        stack += [(e.path, os.path.realpath(e.path) if e.is_symlink() else join(real, e.name)) for e in entries]
    return [Path(p) for p in sorted(found, key=lambda p: p.split(os.sep))]


def _variant_columns(config: dict, stored: Any) -> dict[str, Any]:
    """``variant_opts.<k>`` for every option of the run's variant, and ``variant_shown``: the
    options that differ from the variant's defaults (comma-separated), for its label.

    bench writes the canonical options (defaults dropped) in the config and every option in
    ``variant_options``; older files have only what the config said (all of it is shown).
    """
    given = config.get("variant_opts") if isinstance(config.get("variant_opts"), dict) else {}
    if not isinstance(stored, dict):
        return {"variant_shown": ",".join(sorted(given))}
    out = {f"variant_opts.{k}": (tuple(v) if isinstance(v, list) else v) for k, v in stored.items()}
    out["variant_shown"] = ",".join(sorted(given))
    return out


def _read_run(run_dir: Path, skipped: list) -> tuple[dict | None, dict | None, str, dict | None]:
    """(config.json, result.json or None, the result's state: ok/corrupt/absent, the run config)."""
    cfg_file, res_file = run_dir / "config.json", run_dir / "result.json"
    cfg_json = _read_json(cfg_file, skipped)
    result, state = None, "absent"
    if res_file.exists():
        result = _read_json(res_file, skipped)
        state = "ok" if result is not None else "corrupt"
    config = None
    if cfg_json is not None and isinstance(cfg_json.get("config"), dict):
        config = cfg_json["config"]
    elif result is not None and isinstance(result.get("config"), dict):
        config = result["config"]
    if config is None and cfg_json is not None:
        skipped.append({"path": str(cfg_file), "reason": "no 'config' mapping"})
    return cfg_json, result, state, config


def _status(result: dict | None, state: str, n_lines: int) -> str:
    if state == "ok":
        return str(result.get("status") or "unknown")
    if state == "corrupt":
        return "corrupt"
    return "running" if n_lines > 0 else "pending"


def _config_row(config: dict, cfg_json: dict | None, result: dict | None) -> dict[str, Any]:
    """The flattened config, defaults of fields added later, the sharpness options, the variant options."""
    config = dict(config)
    sharpness_config = config.pop("sharpness", None)  # a runtime block of options: one column
    row = _flatten(config)
    for k, v in CONFIG_DEFAULTS.items():
        row.setdefault(k, v)
    if sharpness_config is not None:
        row["sharpness_config"] = json.dumps(sharpness_config, sort_keys=True)
    stored = (cfg_json or {}).get("variant_options", (result or {}).get("variant_options"))
    row.update(_variant_columns(config, stored))
    return row


def _result_row(result: dict) -> dict[str, Any]:
    """result.json's fields as columns (unknown ones as ``result.<key>``), sharpness and env.* flattened."""
    row: dict[str, Any] = {}
    if "epochs" in result:
        row["epochs_done"] = result["epochs"]
    for k, v in result.items():
        if k in _RESULT_SPECIAL:
            continue
        if k == "norm_gamma":
            row[k] = v if isinstance(v, list) else None
        elif k == "sharpness" and isinstance(v, dict):
            row.update(_sharpness_columns(v))
        else:
            v = json.dumps(v, sort_keys=True) if isinstance(v, dict) else tuple(v) if isinstance(v, list) else v
            row[k if k in RESULT_COLUMNS else f"result.{k}"] = v
    if isinstance(result.get("env"), dict):
        _flatten(result["env"], "env.", row)
    return row


def _load_run(run_dir: Path, skipped: list) -> dict | None:
    cfg_json, result, state, config = _read_run(run_dir, skipped)
    if config is None:
        log.info("skipping run %s: no readable config", run_dir)
        return None
    n_lines, last = _read_metrics(run_dir / "metrics.jsonl", skipped)
    row: dict[str, Any] = {
        "run_id": (cfg_json or {}).get("run_id") or (result or {}).get("run_id") or run_dir.name,
        "suite": (cfg_json or {}).get("suite"),
        "path": str(run_dir),
        "status": _status(result, state, n_lines),
    }
    row.update(_config_row(config, cfg_json, result))
    row["epochs_logged"] = n_lines
    row["last_test_acc"] = last.get("test_acc") if last else None
    if result is not None:
        row.update(_result_row(result))
    return row


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """Numeric result columns as numbers (the main ones present even when no run has them), and
    ``val_noisy`` False where it changes nothing (no held-out part or no label noise), as in run ids."""
    numeric = list(NUMERIC_RESULT_COLUMNS) + [c for c in df.columns
                                              if c.startswith((SHARPNESS_PREFIX, SHARPNESS_TIME_PREFIX))]
    for c in numeric:
        if c in df.columns:
            df[c] = pd.to_numeric(df[c], errors="coerce")
        elif c in ("test_acc", "test_loss", "train_acc", "seconds_per_epoch", "perturbed_fraction"):
            df[c] = float("nan")
    if "norm_gamma" not in df.columns:
        df["norm_gamma"] = None
    if len(df) and {"val_noisy", "val_split", "label_noise"} <= set(df.columns):
        inert = [not bool(v) or not bool(n) for v, n in zip(df["val_split"], df["label_noise"])]
        df.loc[inert, "val_noisy"] = False
    return df


def _ordered(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Columns in order: meta, experiment config fields (file order), runtime fields, results, env.*."""
    config_cols = [c for c in df.columns if c not in META_COLUMNS and c not in RESULT_COLUMNS
                   and c not in LABEL_INPUTS
                   and not c.startswith(("env.", "result.", SHARPNESS_PREFIX, SHARPNESS_TIME_PREFIX))]
    env_cols = sorted(c for c in df.columns if c.startswith("env."))
    other = [c for c in df.columns if c not in config_cols and c not in env_cols and c not in META_COLUMNS]
    config_cols = [c for c in config_cols if not is_runtime(c)] + [c for c in config_cols if is_runtime(c)]
    return df[[c for c in META_COLUMNS if c in df.columns] + config_cols + other + env_cols], config_cols


def collect(folder: str | os.PathLike) -> pd.DataFrame:
    """One row per run found anywhere under ``folder`` (a results root, one suite, or one run).

    Runs are found by their ``config.json`` (or ``result.json``); symbolic links to folders are
    followed, each real folder once. Columns:

    * ``run_id``, ``suite``, ``status`` (``done``/``diverged``/``failed`` from result.json;
      ``running`` = metrics logged but no result.json; ``pending`` = config.json only;
      ``corrupt`` = result.json unreadable), ``path``;
    * every config field, flattened with dotted names (``base.lr``, ``variant_opts.p``,
      ``mask_opts.num_samples``), runtime fields included; ``variant_opts.*`` holds every option
      of the run's variant, defaults included, from the ``variant_options`` bench stores beside
      the config (older files: the options their config spelled out), and ``variant_shown`` the
      ones that differ from the defaults;
    * result fields (``test_acc``, ``test_loss``, ``train_acc``, ``train_loss``, ``best_test_acc``
      (the best epoch's test accuracy: an oracle's early stop), ``epochs_done`` (= result's
      ``epochs``), ``wall_time_s``, ``seconds_per_epoch``, ``n_params``, ``n_perturbed``,
      ``perturbed_fraction``, ``error``; with a validation split ``val_acc``, ``val_loss``,
      ``best_val_acc``, ``best_val_epoch``, ``test_acc_at_best_val``, ``test_loss_at_best_val``,
      ``val_size``), ``env.*``, ``norm_gamma`` (list or None), unknown result keys as ``result.<key>``;
    * ``epochs_logged`` / ``last_test_acc`` from metrics.jsonl (progress of unfinished runs);
    * label columns ``baseline``, ``variant_label``, ``method``, ``mask_label``, ``setting``.

    Which configuration a selection rule chose is :func:`analysis.selection.mark_selection`.
    Unreadable files (invalid JSON, half-written lines) are skipped with one warning and listed
    in ``df.attrs["skipped"]`` as ``{"path", "reason"}`` dicts; a run whose config cannot be read
    from config.json nor result.json is left out (and its file listed there).
    """
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"no such results folder: {root}")
    skipped: list[dict] = []
    run_dirs = _find_run_dirs(root)
    df = index.collect(root, run_dirs, skipped, _load_run, _finish)  # the results index, when it applies
    if df is None:
        rows = [r for r in (_load_run(d, skipped) for d in run_dirs) if r is not None]
        df = _finish(pd.DataFrame.from_records(rows))
    df.attrs["skipped"] = skipped
    df.attrs["root"] = str(root)
    df.attrs["published"] = load_references([root] + sorted({d.parent for d in run_dirs}), skipped)
    if skipped:
        listing = "; ".join(f"{s['path']} ({s['reason']})" for s in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warnings.warn(f"analysis.collect: skipped {len(skipped)} unreadable file(s): {listing}{more}",
                      stacklevel=2)
    return df


def _finish(df: pd.DataFrame) -> pd.DataFrame:
    """The whole-frame step of collect: numeric types, column order, labels."""
    if not len(df.columns):
        df = pd.DataFrame(columns=list(META_COLUMNS))
    df, config_cols = _ordered(_typed(df))
    df.attrs["config_columns"] = config_cols
    return add_labels(df, force=True)


def ensure_frame(data) -> pd.DataFrame:
    """A collected frame from a folder path or an existing frame (returned as is)."""
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, (str, os.PathLike)):
        return collect(data)
    raise TypeError(f"expected a results folder or a DataFrame from collect(), got {type(data).__name__}")


def write_csv(df: pd.DataFrame, path: str | os.PathLike, include_gamma: bool = False) -> str:
    """Write a frame (from collect/aggregate/paired_difference) to CSV; returns the path.

    List/tuple/dict cells are written as JSON; ``norm_gamma`` is dropped unless
    ``include_gamma``. Parent folders are created.
    """
    out = df.copy()
    if not include_gamma and "norm_gamma" in out.columns:
        out = out.drop(columns="norm_gamma")
    for c in out.columns:
        if out[c].dtype == object:
            vals = out[c].tolist()
            if any(isinstance(v, (list, tuple, dict)) for v in vals):
                out[c] = [json.dumps(list(v) if isinstance(v, tuple) else v, default=str)
                          if isinstance(v, (list, tuple, dict)) else v for v in vals]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(path, index=False)
    return str(path)
