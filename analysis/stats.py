"""Aggregation over seeds, Student's t intervals of seed-paired differences, Holm's correction.

Choosing a configuration per method is analysis.selection; paired differences between chosen
configurations are analysis.comparisons."""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from analysis.labels import (
    LABEL_COLUMNS,
    add_labels,
    is_missing,
    key_columns,
    method_sort_key,
    plain,
    row_keys,
    variant_sort_key,
)
from analysis.loading import ensure_frame

log = logging.getLogger("analysis")

METRICS = ("test_acc", "test_loss", "train_acc", "train_loss", "best_test_acc", "seconds_per_epoch",
           "perturbed_fraction", "val_acc", "val_loss", "best_val_acc", "test_acc_at_best_val")
CONFIDENCE = 0.95
CI_METHOD = "paired t"  # Student's t interval of the seed-paired differences, n - 1 degrees of freedom
CI_NOTE = ("seed-paired difference, 95% CI from Student's t with n−1 degrees of freedom "
           "(n = seeds run by both)")


def sharpness_columns(df) -> list[str]:
    """The "sharpness.<measure>" columns of a frame, Hessian measures first, then m-sharpness."""
    from analysis.labels import SHARPNESS_PREFIX

    cols = [c for c in df.columns if c.startswith(SHARPNESS_PREFIX)]
    return sorted(cols, key=sharpness_sort_key)


def sharpness_sort_key(col: str) -> tuple:
    key = col.split(".", 1)[-1]
    hessian = ("hessian_max_eig", "hessian_trace", "hessian_max_eig_norm", "hessian_trace_norm")
    if key in hessian:
        return (0, hessian.index(key), 0.0, key)
    parts = key.split("_")  # msharp_<norm>_<adaptivity>_rho<r>
    if len(parts) == 4 and parts[0] == "msharp" and parts[3].startswith("rho"):
        try:
            rho = float(parts[3][3:])
        except ValueError:
            rho = 0.0
        order = {"linf": 0, "l2": 1}.get(parts[1], 2), {"adaptive": 0, "standard": 1}.get(parts[2], 2)
        return (1, order[0] * 3 + order[1], rho, key)
    return (2, 0, 0.0, key)


def t_interval(diffs, confidence: float = CONFIDENCE) -> dict:
    """Mean, sample std, Student's t confidence interval and two-sided p-value (H0: mean 0).

    n < 2: std, interval and p-value are NaN. Zero spread: the interval is the mean itself and
    p is 0 (1 when the mean is 0 too).
    """
    from scipy import stats as sps

    d = np.asarray([float(x) for x in diffs], dtype=float)
    n = len(d)
    out = {"n": n, "mean": float(d.mean()) if n else np.nan, "std": np.nan, "low": np.nan,
           "high": np.nan, "p_value": np.nan}
    if n < 2:
        return out
    sd = float(d.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    if sd > 0:
        p = float(2 * sps.t.sf(abs(out["mean"]) / (sd / math.sqrt(n)), n - 1))
    else:
        p = 1.0 if out["mean"] == 0 else 0.0
    out.update(std=sd, low=out["mean"] - half, high=out["mean"] + half, p_value=p)
    return out


def paired(a: dict, b: dict, confidence: float = CONFIDENCE) -> dict:
    """``a - b`` over the seeds both have ({seed: value} each): :func:`t_interval` plus ``seeds``."""
    common = sorted(set(a) & set(b), key=lambda s: (str(type(s)), s))
    out = t_interval([a[s] - b[s] for s in common], confidence)
    out["seeds"] = common
    return out


def by_seed(cell) -> dict:
    """An aggregate row's ``<metric>_by_seed`` cell as {seed: value} (JSON round trips included)."""
    if isinstance(cell, dict):
        return {plain(k) if not isinstance(k, str) or not k.lstrip("-").isdigit() else int(k): float(v)
                for k, v in cell.items()}
    return {}


def done_runs(raw: pd.DataFrame, keys: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(done runs with a ``_key`` column, deduplicated per key+seed; the other runs; #duplicates)."""
    raw = raw.assign(_key=row_keys(raw, keys), _cfg=row_keys(raw, key_columns(raw)))
    is_done = raw["status"].astype(str) == "done"
    done, other = raw[is_done], raw[~is_done]
    n_dup = 0
    if "seed" in done.columns and len(done):
        # the same run (config + seed) found twice, e.g. a copied suite: count it once
        dup = done.duplicated(subset=["_cfg", "seed"], keep="first")
        n_dup = int(dup.sum())
        done = done[~dup]
    return done, other, n_dup


def _sort_frame(out: pd.DataFrame) -> pd.DataFrame:
    if not len(out) or not {"setting", "variant_label", "method"} <= set(out.columns):
        return out.reset_index(drop=True)
    order = sorted(range(len(out)), key=lambda i: (
        str(out["setting"].iat[i]),
        variant_sort_key(str(out["variant_label"].iat[i])),
        method_sort_key(out["mask"].iat[i] if "mask" in out else None,
                        out["sparsity"].iat[i] if "sparsity" in out else None,
                        str(out["method"].iat[i]), bool(out["baseline"].iat[i])),
        float(out["rho"].iat[i]) if "rho" in out and plain(out["rho"].iat[i]) is not None else 0.0,
    ))
    return out.iloc[order].reset_index(drop=True)


def aggregate(df, by: Iterable[str] | None = None, metrics: Iterable[str] | None = None) -> pd.DataFrame:
    """Mean / std (ddof=1, NaN for one seed) / count over seeds, one row per configuration.

    ``df``: a frame from ``collect`` (or a results folder). A configuration is every config
    field except ``seed`` and the runtime fields (device, data_root, ...); ``by`` replaces that
    with your own list of columns. Only ``status == "done"`` runs count; the same config + seed
    found twice counts once.

    Columns: the key columns, the label columns (``setting``, ``variant_label``, ``method``,
    ``mask_label``, ``baseline``), ``n`` (done runs), ``seeds``, ``run_ids``, ``n_excluded``
    (runs of this configuration that are not done), ``n_diverged`` (of them, diverged), and ``<metric>_mean``, ``<metric>_std``,
    ``<metric>_n`` and ``<metric>_by_seed`` ({seed: value}, for seed-paired tests) for
    test_acc, test_loss, train_acc, train_loss, best_test_acc, seconds_per_epoch,
    perturbed_fraction and every ``sharpness.<measure>`` column (the default ``metrics``).
    Configurations without any done run have no row.
    ``attrs["excluded"]`` = {status: count} of the runs left out, ``attrs["n_excluded"]`` their
    total, ``attrs["duplicates"]``, ``attrs["configs_without_done_runs"]``.
    """
    raw = add_labels(ensure_frame(df))
    keys = list(by) if by is not None else key_columns(raw)
    missing = [c for c in keys if c not in raw.columns]
    if missing:
        raise KeyError(f"aggregate: no such column(s): {missing}")
    labels = [c for c in LABEL_COLUMNS if c in raw.columns and c not in keys] if by is None else []
    if metrics is None:
        metrics = list(METRICS) + sharpness_columns(raw)
    metrics = [m for m in metrics if m in raw.columns]
    done, other, n_dup = done_runs(raw, keys)

    excluded = {str(k): int(v) for k, v in other["status"].astype(str).value_counts().items()}
    first = done.drop_duplicates("_key").set_index("_key")[keys + labels]
    if len(done):
        g = done.groupby("_key", sort=False)
        stats = g[metrics].agg(["mean", "std", "count"])
        stats.columns = [f"{m}_{'n' if s == 'count' else s}" for m, s in stats.columns]
        out = first.join(g.size().rename("n"))
        if "seed" in done.columns:
            out = out.join(g["seed"].agg(lambda s: sorted(plain(x) for x in s)).rename("seeds"))
        out = out.join(g["run_id"].agg(list).rename("run_ids"))
        out = out.join(stats)
        if "seed" in done.columns:
            for m in metrics:
                out = out.join(g[["seed", m]].apply(_values_by_seed, include_groups=False)
                               .rename(f"{m}_by_seed"))
    else:
        out = first.assign(n=pd.Series(dtype=int))
    out["n_excluded"] = other["_key"].value_counts().reindex(out.index).fillna(0).astype(int).to_numpy()
    diverged = other.loc[other["status"].astype(str) == "diverged", "_key"].value_counts()
    out["n_diverged"] = diverged.reindex(out.index).fillna(0).astype(int).to_numpy()
    out = out.reset_index()
    out = _sort_frame(out)
    out.attrs["config_columns"] = [c for c in keys]
    out.attrs["excluded"] = excluded
    out.attrs["n_excluded"] = int(sum(excluded.values()))
    out.attrs["duplicates"] = n_dup
    out.attrs["configs_without_done_runs"] = len(set(other["_key"]) - set(done["_key"]))
    out.attrs["published"] = list(raw.attrs.get("published", []))
    if excluded:
        log.info("aggregate: %d run(s) not done were excluded: %s", out.attrs["n_excluded"], excluded)
    return out


def _values_by_seed(grp: pd.DataFrame) -> dict:
    seeds, values = grp.iloc[:, 0].tolist(), grp.iloc[:, 1].tolist()
    return {plain(s): float(v) for s, v in zip(seeds, values) if not is_missing(v)}


def holm(p_values) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error rate), in the order given; NaN stays NaN
    and is not counted in the family. Sorted ascending p_(1) <= ... <= p_(m):
    adj_(i) = max_{j <= i} min(1, (m - j + 1) * p_(j))."""
    p = [float(x) for x in p_values]
    tested = sorted((v, i) for i, v in enumerate(p) if v == v)
    m, out, running = len(tested), [float("nan")] * len(p), 0.0
    for j, (v, i) in enumerate(tested):
        running = max(running, min(1.0, (m - j) * v))
        out[i] = running
    return out
