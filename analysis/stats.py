"""Aggregation over seeds, best-rho selection and seed-paired differences."""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from analysis.labels import (
    LABEL_COLUMNS,
    add_labels,
    context_columns,
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
           "perturbed_fraction")


def _done_runs(raw: pd.DataFrame, keys: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, int]:
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


def aggregate(df, by: Iterable[str] | None = None, metrics: Iterable[str] = METRICS) -> pd.DataFrame:
    """Mean / std (ddof=1, NaN for one seed) / count over seeds, one row per configuration.

    ``df``: a frame from ``collect`` (or a results folder). A configuration is every config
    field except ``seed`` and the runtime fields (device, data_root, ...); ``by`` replaces that
    with your own list of columns. Only ``status == "done"`` runs count; the same config + seed
    found twice counts once.

    Columns: the key columns, the label columns (``setting``, ``variant_label``, ``method``,
    ``mask_label``, ``baseline``), ``n`` (done runs), ``seeds``, ``run_ids``, ``n_excluded``
    (runs of this configuration that are not done), and ``<metric>_mean``, ``<metric>_std``,
    ``<metric>_n`` for test_acc, test_loss, train_acc, train_loss, best_test_acc,
    seconds_per_epoch, perturbed_fraction. Configurations without any done run have no row.
    ``attrs["excluded"]`` = {status: count} of the runs left out, ``attrs["n_excluded"]`` their
    total, ``attrs["duplicates"]``, ``attrs["configs_without_done_runs"]``.
    """
    raw = add_labels(ensure_frame(df))
    keys = list(by) if by is not None else key_columns(raw)
    missing = [c for c in keys if c not in raw.columns]
    if missing:
        raise KeyError(f"aggregate: no such column(s): {missing}")
    labels = [c for c in LABEL_COLUMNS if c in raw.columns and c not in keys] if by is None else []
    metrics = [m for m in metrics if m in raw.columns]
    done, other, n_dup = _done_runs(raw, keys)

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
    else:
        out = first.assign(n=pd.Series(dtype=int))
    out["n_excluded"] = other["_key"].value_counts().reindex(out.index).fillna(0).astype(int).to_numpy()
    out = out.reset_index()
    out = _sort_frame(out)
    out.attrs["config_columns"] = [c for c in keys]
    out.attrs["excluded"] = excluded
    out.attrs["n_excluded"] = int(sum(excluded.values()))
    out.attrs["duplicates"] = n_dup
    out.attrs["configs_without_done_runs"] = len(set(other["_key"]) - set(done["_key"]))
    if excluded:
        log.info("aggregate: %d run(s) not done were excluded: %s", out.attrs["n_excluded"], excluded)
    return out


def best_rho(agg: pd.DataFrame, metric: str = "test_acc") -> pd.DataFrame:
    """Per (setting, variant, method): the row (configuration) with the best mean ``metric``.

    Higher is better unless the metric name ends in "loss". Baselines (no rho to tune) take
    the configuration with the most seeds, then the best mean.
    """
    if not len(agg):
        return agg
    col = f"{metric}_mean"
    lower = metric.endswith("loss")
    chosen = []
    for _, grp in agg.groupby(["setting", "variant_label", "method"], sort=False):
        vals = grp[col].to_numpy(dtype=float)
        score = np.where(np.isnan(vals), -np.inf, -vals if lower else vals)
        if bool(grp["baseline"].iloc[0]):
            order = sorted(range(len(grp)), key=lambda i: (grp["n"].iat[i], score[i]), reverse=True)
            chosen.append(grp.index[order[0]])
        else:
            chosen.append(grp.index[int(np.argmax(score))])
    return agg.loc[sorted(chosen)]


def _matches(row: pd.Series, reference: dict) -> bool:
    for k, want in reference.items():
        have = plain(row.get(k))
        want = plain(want)
        if isinstance(have, (int, float)) and isinstance(want, (int, float)) and not isinstance(have, bool):
            if not math.isclose(have, want, rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif have != want and str(have) != str(want):
            return False
    return True


def paired_difference(df, reference: dict | str | None = None, metric: str = "test_acc") -> pd.DataFrame:
    """Per configuration: mean/std/n of the per-seed difference ``config - reference``.

    The reference is looked for within the configuration's *context*: same model, dataset,
    variant and variant options, base optimizer and every other setting field (epochs, batch
    size, schedule, ...); only mask, sparsity, mask_opts, rho_norm, freeze_bn_second and rho may
    differ. ``reference``: a dict of config values the reference must have (default
    ``{"mask": "all"}``, i.e. dense SAM) or a mask name; when it does not fix ``rho`` and several
    configurations match, the one with the best mean ``metric`` (its best rho) is used.
    Differences use only seeds present (and done) in both; ``diff_std`` is the sample std
    (NaN for one pair).

    Columns: labels, key columns, ``rho``, ``n`` (paired seeds), ``seeds``, ``diff_mean``,
    ``diff_std``, ``mean`` / ``ref_mean`` (over the paired seeds), ``reference`` (label of the
    reference configuration, None where the context has none), ``ref_rho``, ``is_reference``.
    """
    raw = add_labels(ensure_frame(df))
    if reference is None:
        reference = {"mask": "all"}
    elif isinstance(reference, str):
        reference = {"mask": reference}
    unknown = [k for k in reference if k not in raw.columns]
    if unknown and len(raw):
        raise KeyError(f"paired_difference: reference names unknown column(s) {unknown}")
    agg = aggregate(raw)
    if not len(agg):
        return agg.assign(diff_mean=[], diff_std=[], n=[], reference=[])
    keys = key_columns(raw)
    ctx_cols = context_columns(raw)
    done, _, _ = _done_runs(raw, keys)
    per_seed: dict[str, dict[Any, float]] = {}
    for k, s, v in zip(done["_key"], done["seed"], done[metric]):
        if not is_missing(v):
            per_seed.setdefault(k, {})[plain(s)] = float(v)
    agg = agg.assign(_ctx=row_keys(agg, ctx_cols))
    col = f"{metric}_mean"
    lower = metric.endswith("loss")
    ref_of_ctx: dict[str, Any] = {}
    for ctx, grp in agg.groupby("_ctx", sort=False):
        cand = grp[[_matches(r, reference) for _, r in grp.iterrows()]]
        cand = cand[cand[col].notna()]
        if len(cand):
            ref_of_ctx[ctx] = cand[col].idxmin() if lower else cand[col].idxmax()

    rows = []
    for idx, r in agg.iterrows():
        ref_idx = ref_of_ctx.get(r["_ctx"])
        out = {"diff_mean": np.nan, "diff_std": np.nan, "n": 0, "seeds": [], "mean": np.nan,
               "ref_mean": np.nan, "reference": None, "ref_rho": np.nan, "is_reference": False}
        if ref_idx is not None:
            ref = agg.loc[ref_idx]
            mine, theirs = per_seed.get(r["_key"], {}), per_seed.get(ref["_key"], {})
            common = sorted(set(mine) & set(theirs), key=lambda s: (str(type(s)), s))
            a = np.array([mine[s] for s in common])
            b = np.array([theirs[s] for s in common])
            d = a - b
            out.update(
                n=len(common), seeds=common,
                diff_mean=float(d.mean()) if len(d) else np.nan,
                diff_std=float(d.std(ddof=1)) if len(d) > 1 else np.nan,
                mean=float(a.mean()) if len(a) else np.nan,
                ref_mean=float(b.mean()) if len(b) else np.nan,
                reference=f"{ref['variant_label']} {ref['method']} rho={plain(ref.get('rho'))}",
                ref_rho=ref.get("rho"), is_reference=bool(idx == ref_idx),
            )
        rows.append(out)
    stats = pd.DataFrame(rows, index=agg.index)
    front = [c for c in ("setting", "variant_label", "method", "rho") if c in agg.columns]
    rest = [c for c in agg.columns if c in keys and c not in front] + ["baseline", "mask_label"]
    result = pd.concat([agg[front + [c for c in rest if c in agg.columns]], stats], axis=1)
    result.attrs["config_columns"] = list(keys)
    result.attrs["reference"] = dict(reference)
    return result
