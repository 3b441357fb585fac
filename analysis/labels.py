"""Column roles, human-readable labels, ordering and the fixed colour/marker palette.

Nothing here reads files; everything works on the frame returned by ``collect``.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from typing import Any

# --- column roles ----------------------------------------------------------------------

RUNTIME_FIELDS = ("device", "data_root", "download", "eval_batch_size", "log_every", "compile", "compile_step",
                  "save_gamma", "sharpness_config")
RUNTIME_PREFIXES = ("logging.",)  # runtime option maps, flattened (logging.tensorboard, logging.wandb.mode)
# result.json["sharpness"] measures become "sharpness.<key>" columns, their wall times
# "sharpness_time.<key>" (see bench/sharpness.py for the keys)
SHARPNESS_PREFIX, SHARPNESS_TIME_PREFIX = "sharpness.", "sharpness_time."


def is_runtime(col: str) -> bool:
    """A runtime config column: where or how a run ran, not what it is (never a configuration key)."""
    return col in RUNTIME_FIELDS or col.startswith(RUNTIME_PREFIXES)

META_COLUMNS = ("run_id", "suite", "status", "path")
VALIDATION_COLUMNS = ("val_acc", "val_loss", "best_val_acc", "best_val_epoch", "test_acc_at_best_val",
                      "test_loss_at_best_val", "val_size")   # runs with a validation split (val_split)
RESULT_COLUMNS = (
    "test_acc", "test_loss", "train_acc", "train_loss", "best_test_acc", "epochs_done", "wall_time_s",
    "seconds_per_epoch", "n_params", "n_perturbed", "perturbed_fraction", "error", "norm_gamma",
    "epochs_logged", "last_test_acc", *VALIDATION_COLUMNS,
)
LABEL_COLUMNS = ("baseline", "variant_label", "method", "mask_label", "setting")
LABEL_INPUTS = ("variant_shown",)   # read from the files for labels; not a config field
NUMERIC_RESULT_COLUMNS = (
    "test_acc", "test_loss", "train_acc", "train_loss", "best_test_acc", "epochs_done", "wall_time_s",
    "seconds_per_epoch", "n_params", "n_perturbed", "perturbed_fraction", "epochs_logged", "last_test_acc",
    *VALIDATION_COLUMNS,
)
# config fields that describe *how* a run perturbs (the method) rather than the setting
METHOD_FIELDS = ("mask", "sparsity", "rho_norm", "freeze_bn_second")
METHOD_PREFIXES = ("mask_opts.",)
VARIANT_PREFIXES = ("variant_opts.",)

METHOD_DEFAULTS = {"rho_norm": "subset", "freeze_bn_second": False}
# config fields added after results existed: runs written before them get these values
CONFIG_DEFAULTS = {"label_noise": 0.0, "label_noise_type": "symmetric", "val_split": 0.0, "val_noisy": False}
BASE_NAMES = {"sgd": "SGD", "adamw": "AdamW", "lion": "Lion"}


def _is_config_column(col: str) -> bool:
    return not (
        col in META_COLUMNS or col in RESULT_COLUMNS or col in LABEL_COLUMNS or col in LABEL_INPUTS
        or col.startswith(("env.", "result.", "_", SHARPNESS_PREFIX, SHARPNESS_TIME_PREFIX))
    )


def config_columns(df) -> list[str]:
    """All flattened config columns (experiment and runtime fields) of a collected frame."""
    listed = df.attrs.get("config_columns")
    if listed and all(c in df.columns for c in listed):
        return list(listed)
    return [c for c in df.columns if _is_config_column(c)]


def key_columns(df) -> list[str]:
    """Columns that identify a configuration: config fields except seed and runtime fields."""
    return [c for c in config_columns(df) if c != "seed" and not is_runtime(c)]


def _is_method_col(c: str) -> bool:
    return c in METHOD_FIELDS or c.startswith(METHOD_PREFIXES)


def tuned_fields(df) -> tuple[str, ...]:
    """The fields a selection rule chooses (analysis.selection): ``df.attrs["tuned"]``, else rho."""
    return tuple(df.attrs.get("tuned") or ("rho",))


def context_columns(df) -> list[str]:
    """Key columns without the method (mask, sparsity, mask_opts, rho_norm, freeze_bn_second) and the
    tuned fields (rho, unless ``attrs["tuned"]`` says more).

    Two configurations in the same context differ only in how/how much they perturb; this is
    what ``paired_difference`` compares within (same model, dataset, variant + options, base, ...).
    """
    tuned = tuned_fields(df)
    return [c for c in key_columns(df) if not _is_method_col(c) and c not in tuned]


def setting_columns(df) -> list[str]:
    """Context columns without the SAM variant: what panels/table columns are made of."""
    return [c for c in context_columns(df) if c != "variant" and not c.startswith(VARIANT_PREFIXES)]


# --- value helpers ---------------------------------------------------------------------

def np_isnan(v: Any) -> bool:
    try:
        return bool(math.isnan(v))
    except (TypeError, ValueError):
        return False


def is_missing(v: Any) -> bool:
    """None, NaN or pd.NA."""
    if v is None:
        return True
    kind = type(v)
    if kind is str or kind is int or kind is bool:
        return False
    if isinstance(v, float):
        return math.isnan(v)
    return type(v).__name__ in ("NAType", "NaTType") or (hasattr(v, "dtype") and bool(np_isnan(v)))


def plain(v: Any) -> Any:
    """A JSON-friendly, canonical version of a cell value (NaN -> None, 2.0 -> 2, tuple -> list)."""
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        try:
            v = v.item()
        except (TypeError, ValueError):
            pass
    if is_missing(v):
        return None
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        return int(v)
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


_SCALARS = (str, int, float, bool, type(None))


class _Canon:
    """``canon(v) == json.dumps(plain(v), default=str)``, the identity of a cell value; computed
    once per distinct scalar (a column of 10,000 runs holds a handful of values)."""

    def __init__(self) -> None:
        self.memo: dict[tuple, str] = {}

    def __call__(self, v: Any) -> str:
        kind = type(v)
        if kind not in _SCALARS:  # containers, numpy scalars: True == 1 inside a tuple
            return json.dumps(plain(v), default=str)
        key = (kind, v)
        found = self.memo.get(key)
        if found is None:
            found = self.memo[key] = json.dumps(plain(v), default=str)
        return found


def row_keys(df, cols: list[str]) -> list[str]:
    """One canonical string per row for the given columns (hashable group key, NaN-safe):
    ``json.dumps([plain(v) for v in row], default=str)``."""
    if not cols:
        return ["[]"] * len(df)
    canon = _Canon()
    columns = [_column_keys(df[c].tolist(), canon) for c in cols]
    return ["[" + ", ".join(vals) + "]" for vals in zip(*columns)]


def _column_keys(values: list, canon: _Canon) -> list[str]:
    """``[canon(v) for v in values]``; a column of one scalar type (the usual case) is factorized
    first, so each distinct value is canonicalized once (values equal within one type share a key,
    as in ``_Canon``'s memo)."""
    kinds = set(map(type, values))
    if len(kinds) != 1 or next(iter(kinds)) not in _SCALARS or not values:
        return [canon(v) for v in values]
    import numpy as np
    import pandas as pd

    codes, uniques = pd.factorize(np.array(values, dtype=object), use_na_sentinel=False)
    return np.array([canon(u) for u in uniques], dtype=object)[codes].tolist()


def fmt_value(v: Any) -> str:
    v = plain(v)
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, bool):
        return str(v)
    return str(v)


# --- labels ----------------------------------------------------------------------------

def _get(row: dict, key: str, default: Any = None) -> Any:
    v = row.get(key, default)
    return default if is_missing(v) else v


def is_baseline(row: dict) -> bool:
    return _get(row, "variant") == "none" or _get(row, "mask") == "none"


def _same(a: Any, b: Any) -> bool:
    a, b = plain(a), plain(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b)
    return str(a) == str(b) if not isinstance(a, bool) else a == b


def variant_label(row: dict) -> str:
    """"SGD" for baselines; else the variant and its options that differ from the defaults:
    "SAM", "SAM p=inf", "ASAM adaptive=layerwise eta=0.1".

    Which options differ is read from the files (``variant_shown``, see loading.collect), never
    from a list of variants here; without it every ``variant_opts.*`` value is shown.
    """
    if is_baseline(row):
        name = str(_get(row, "base.name", "sgd"))
        return BASE_NAMES.get(name, name.upper())
    variant = str(_get(row, "variant", "sam"))
    opts = {k[len("variant_opts."):]: v for k, v in row.items()
            if k.startswith("variant_opts.") and not is_missing(v)}
    shown = _get(row, "variant_shown")
    keys = [k for k in str(shown).split(",") if k] if shown is not None else sorted(opts)
    return " ".join([variant.upper()] + [f"{k}={fmt_value(opts[k])}" for k in keys if k in opts])


def _method_extras(row: dict, varying_mask_opts: Iterable[str]) -> list[str]:
    extras = []
    for k, default in METHOD_DEFAULTS.items():
        v = _get(row, k)
        if v is not None and not _same(v, default):
            extras.append(f"{k}={fmt_value(v)}")
    for k in varying_mask_opts:
        v = _get(row, k)
        if v is not None:
            extras.append(f"{k[len('mask_opts.'):]}={fmt_value(v)}")
    return extras


def _varying(records: list[dict], cols: list[str], ignore_missing: bool = False) -> list[str]:
    """Columns with more than one distinct value (missing counts as a value unless ignored)."""
    out = []
    canon = _Canon()
    for c in cols:
        values = [r.get(c) for r in records]
        # distinct scalars first (by type and value; NaN by its canonical form), then their identities
        scalars = {(type(v), v) if v == v else ("nan",) for v in values if type(v) in _SCALARS}
        seen = {canon(float("nan")) if key == ("nan",) else canon(key[1]) for key in scalars}
        seen.update(canon(v) for v in values if type(v) not in _SCALARS)
        if ignore_missing:
            seen.discard("null")
        if len(seen) > 1:
            out.append(c)
    return out


_SHORT = {"weight_decay": "wd", "momentum": "mom", "label_smoothing": "ls", "batch_size": "bs",
          "warmup_epochs": "warmup", "label_noise": "label noise", "label_noise_type": "noise",
          "val_split": "val split", "val_noisy": "noisy val"}


def _setting_extras(row: dict, varying: list[str]) -> list[str]:
    """Short "k=v" tokens for the varying setting fields; base.* as one "AdamW lr=0.001" token."""
    out = []
    base_cols = [c for c in varying if c.startswith("base.")]
    if base_cols:
        name = str(_get(row, "base.name", "sgd"))
        parts = [BASE_NAMES.get(name, name)]
        for c in base_cols:
            v = _get(row, c)
            k = c[len("base."):]
            if k != "name" and v is not None:
                parts.append(f"{_SHORT.get(k, k)}={fmt_value(v)}")
        out.append(" ".join(parts))
    for c in varying:
        if c.startswith("base."):
            continue
        v = _get(row, c)
        if v is not None:
            out.append(f"{_SHORT.get(c, c)}={fmt_value(v)}")
    return out


def _label_records(df) -> list[dict]:
    """The config fields (and variant_shown) of every row: what the label rules read."""
    return df[[c for c in df.columns if c not in RESULT_COLUMNS and c not in META_COLUMNS
               and not c.startswith(("env.", "result."))]].to_dict("records")


def _setting_varying(df, records: list[dict]) -> list[str]:
    """The setting fields a setting's name shows: those that vary. Fields only present in some settings
    (SGD's momentum vs AdamW's betas) are left out unless that would merge two different settings."""
    set_cols = [c for c in setting_columns(df) if c not in ("model", "dataset")]
    varying = _varying(records, set_cols, ignore_missing=True)
    if "base.name" in _varying(records, set_cols) and "base.name" not in varying:
        varying.insert(0, "base.name")
    names: dict[str, set] = {}
    for r, k in zip(records, row_keys(df, set_cols + ["model", "dataset"])):
        names.setdefault(", ".join(_setting_extras(r, varying)) + _get(r, "model", "?")
                         + "/" + _get(r, "dataset", "?"), set()).add(k)
    if any(len(v) > 1 for v in names.values()):
        varying = _varying(records, set_cols)
    return varying


def _row_labels(r: dict, varying_opts: dict, set_varying: list[str]) -> tuple:
    """(baseline, variant_label, method, mask_label, setting) of one row."""
    base, vl = is_baseline(r), variant_label(r)
    if base:
        method = mask_label = vl
    else:
        mask = str(_get(r, "mask", "?"))
        extras = _method_extras(r, varying_opts.get(mask, []))
        tail = f" ({', '.join(extras)})" if extras else ""
        sp = _get(r, "sparsity")
        method = mask + (f"@{fmt_value(sp)}" if sp is not None else "") + tail
        mask_label = mask + tail
    setting = f"{_get(r, 'model', '?')} / {_get(r, 'dataset', '?')}"
    extra = _setting_extras(r, set_varying)
    return base, vl, method, mask_label, setting + (", " + ", ".join(extra) if extra else "")


def add_labels(df, force: bool = False):
    """Add ``baseline``, ``variant_label``, ``method``, ``mask_label`` and ``setting`` columns.

    * ``method``: mask name, plus ``@<sparsity>`` where sparsity is set, plus non-default
      ``rho_norm``/``freeze_bn_second`` and any ``mask_opts`` that vary between runs of that mask,
      e.g. ``random@0.99``, ``fisher@0.9 (num_samples=64)``; the variant label for baselines.
    * ``mask_label``: the same without the sparsity (one line per mask in plots).
    * ``setting``: ``model / dataset`` plus every other setting field that varies in the frame (the
      tuned fields of ``attrs["tuned"]`` excepted: a selection rule chooses them within a setting).
    Labels are data-dependent (what varies), so they are computed once, on the whole frame.
    """
    if not force and all(c in df.columns for c in LABEL_COLUMNS):
        return df
    df = df.copy()
    if len(df) == 0:
        for c in LABEL_COLUMNS:
            df[c] = []
        return df
    records = _label_records(df)
    mask_opt_cols = [c for c in df.columns if c.startswith("mask_opts.")]
    by_mask: dict[str, list[dict]] = {}
    for r in records:
        if not is_baseline(r):
            by_mask.setdefault(str(_get(r, "mask", "?")), []).append(r)
    varying_opts = {m: _varying(rs, mask_opt_cols) for m, rs in by_mask.items()}
    set_varying = _setting_varying(df, records)
    labels = list(zip(*(_row_labels(r, varying_opts, set_varying) for r in records)))
    for col, values in zip(LABEL_COLUMNS, labels):
        df[col] = list(values)
    return df


# --- ordering --------------------------------------------------------------------------

MASK_ORDER = ("none", "all", "norm_only", "no_norm", "layerwise", "random", "random_tensor",
              "magnitude", "fisher", "dynamic")


def _num_or_inf(v: Any) -> tuple:
    v = plain(v)
    if v is None:
        return (0, 0.0, "")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (1, float(v), "")
    return (2, 0.0, str(v))


def method_sort_key(mask: Any, sparsity: Any, method: str, baseline: bool) -> tuple:
    mask = "none" if baseline else str(mask)
    idx = MASK_ORDER.index(mask) if mask in MASK_ORDER else len(MASK_ORDER)
    return (0 if baseline else 1, idx, mask, _num_or_inf(sparsity), method)


def variant_sort_key(label: str) -> tuple:
    first = label.split(" ", 1)[0]
    order = {"SAM": 1, "ASAM": 2}
    return (order.get(first, 0 if first in BASE_NAMES.values() else 3), label)


# --- palette ---------------------------------------------------------------------------

MASK_COLORS = {
    "all": "#1f77b4",
    "norm_only": "#d62728",
    "no_norm": "#ff7f0e",
    "random": "#2ca02c",
    "random_tensor": "#bcbd22",
    "magnitude": "#e377c2",
    "fisher": "#9467bd",
    "dynamic": "#8c564b",
    "layerwise": "#17becf",
    "none": "#4d4d4d",
}
BASELINE_COLOR = "#4d4d4d"
MASK_MARKERS = {
    "all": "o", "norm_only": "*", "no_norm": "v", "random": "s", "random_tensor": "D",
    "magnitude": "^", "fisher": "P", "dynamic": "X", "layerwise": "h", "none": "o",
}
_EXTRA_MARKERS = ("<", ">", "p", "d", "H", "8")
# for mask names not listed above (user-registered): hues away from the fixed ones
_EXTRA_COLORS = ("#393b79", "#637939", "#bd9e39", "#7b4173", "#5254a3", "#8ca252", "#6b6ecf",
                 "#b5cf6b", "#e7ba52", "#a55194")


def _hash(name: str) -> int:
    return int(hashlib.md5(name.encode()).hexdigest()[:8], 16)


def mask_color(mask: str) -> str:
    """Fixed colour per mask name; unknown names get a deterministic colour from a hash."""
    if mask in MASK_COLORS:
        return MASK_COLORS[mask]
    return _EXTRA_COLORS[_hash(mask) % len(_EXTRA_COLORS)]


def mask_marker(mask: str) -> str:
    if mask in MASK_MARKERS:
        return MASK_MARKERS[mask]
    return _EXTRA_MARKERS[_hash(mask) % len(_EXTRA_MARKERS)]


def _shade(color: str, amount: float) -> str:
    """amount < 0 darkens, > 0 lightens (mix with black/white)."""
    c = color.lstrip("#")
    rgb = [int(c[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    target = 1.0 if amount > 0 else 0.0
    a = abs(amount)
    rgb = [x + (target - x) * a for x in rgb]
    return "#{:02x}{:02x}{:02x}".format(*(round(x * 255) for x in rgb))


def method_colors(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """{method: colour} for (method, mask) pairs: the mask's colour, shaded per sparsity.

    Methods of one mask are ordered as given; with k of them the shades run from dark to light.
    """
    by_mask: dict[str, list[str]] = {}
    for method, mask in items:
        lst = by_mask.setdefault(mask, [])
        if method not in lst:
            lst.append(method)
    out = {}
    for mask, methods in by_mask.items():
        base = BASELINE_COLOR if mask == "none" else mask_color(mask)
        k = len(methods)
        for i, m in enumerate(methods):
            amount = 0.0 if k == 1 else -0.35 + 0.8 * i / (k - 1)
            out[m] = _shade(base, amount)
    return out


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "x"


# --- telling a method's rhos apart in a scatter plot ----------------------------------------------

_LABEL_OFFSETS = ((4, 3), (4, -9), (-26, 3), (-26, -9))  # points: by the rho's rank within its method


def several_rhos(rows) -> dict:
    """{(variant_label, method): its rhos, sorted} for the methods drawn at more than one rho in ``rows``."""
    sam = rows[~rows["baseline"].astype(bool)]
    rhos = sam.groupby(["variant_label", "method"])["rho"].agg(lambda v: sorted(set(v)))
    return {key: list(v) for key, v in rhos.items() if len(v) > 1}


def rho_size(r, several: dict, size: float = 5.0) -> float:
    """Marker size growing with the rho's rank within its method (larger rho, larger point)."""
    rhos = several.get((r["variant_label"], r["method"])) if not bool(r["baseline"]) else None
    return size if not rhos else size - 1.0 + 2.5 * rhos.index(r["rho"]) / (len(rhos) - 1)


def rho_label(ax, x: float, y: float, r, color: str, several: dict) -> None:
    """``ρ=0.1`` beside a point whose method has points at several rhos, so they can be told apart."""
    rhos = several.get((r["variant_label"], r["method"])) if not bool(r["baseline"]) else None
    if not rhos or is_missing(x) or is_missing(y):
        return
    rho = plain(r["rho"])
    ax.annotate(f"ρ={rho:g}" if isinstance(rho, float) else f"ρ={rho}", (x, y),
                xytext=_LABEL_OFFSETS[rhos.index(r["rho"]) % len(_LABEL_OFFSETS)],
                textcoords="offset points", fontsize=6, color=color, zorder=4)
