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
CONFIDENCE = 0.95
CI_METHOD = "paired t"  # Student's t interval of the seed-paired differences, n - 1 degrees of freedom
CI_NOTE = ("seed-paired difference, 95% CI from Student's t with n−1 degrees of freedom "
           "(n = seeds run by both)")


class CompareError(ValueError):
    """A --compare operand that names no configuration, or names several."""


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


def aggregate(df, by: Iterable[str] | None = None, metrics: Iterable[str] | None = None) -> pd.DataFrame:
    """Mean / std (ddof=1, NaN for one seed) / count over seeds, one row per configuration.

    ``df``: a frame from ``collect`` (or a results folder). A configuration is every config
    field except ``seed`` and the runtime fields (device, data_root, ...); ``by`` replaces that
    with your own list of columns. Only ``status == "done"`` runs count; the same config + seed
    found twice counts once.

    Columns: the key columns, the label columns (``setting``, ``variant_label``, ``method``,
    ``mask_label``, ``baseline``), ``n`` (done runs), ``seeds``, ``run_ids``, ``n_excluded``
    (runs of this configuration that are not done), and ``<metric>_mean``, ``<metric>_std``,
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
        if "seed" in done.columns:
            for m in metrics:
                out = out.join(g[["seed", m]].apply(_values_by_seed, include_groups=False)
                               .rename(f"{m}_by_seed"))
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
    out.attrs["published"] = list(raw.attrs.get("published", []))
    if excluded:
        log.info("aggregate: %d run(s) not done were excluded: %s", out.attrs["n_excluded"], excluded)
    return out


def _values_by_seed(grp: pd.DataFrame) -> dict:
    seeds, values = grp.iloc[:, 0].tolist(), grp.iloc[:, 1].tolist()
    return {plain(s): float(v) for s, v in zip(seeds, values) if not is_missing(v)}


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
        out = {"diff_mean": np.nan, "diff_std": np.nan, "ci_low": np.nan, "ci_high": np.nan,
               "p_value": np.nan, "n": 0, "seeds": [], "mean": np.nan,
               "ref_mean": np.nan, "reference": None, "ref_rho": np.nan, "is_reference": False}
        if ref_idx is not None:
            ref = agg.loc[ref_idx]
            mine, theirs = per_seed.get(r["_key"], {}), per_seed.get(ref["_key"], {})
            common = sorted(set(mine) & set(theirs), key=lambda s: (str(type(s)), s))
            a = np.array([mine[s] for s in common])
            b = np.array([theirs[s] for s in common])
            ci = t_interval(a - b)
            out.update(
                n=len(common), seeds=common, diff_mean=ci["mean"], diff_std=ci["std"],
                ci_low=ci["low"], ci_high=ci["high"], p_value=ci["p_value"],
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
    result.attrs["ci_method"] = CI_METHOD
    return result


# --- sambench table --compare A B ----------------------------------------------------------------

def _parse_operand(spec: str, methods: set[str]) -> tuple[str, float | None]:
    """"norm_only@1.0" -> ("norm_only", 1.0); "random@0.99" (a method) -> ("random@0.99", None)."""
    spec = spec.strip()
    if spec in methods:
        return spec, None
    if "@" in spec:
        head, tail = spec.rsplit("@", 1)
        try:
            rho = float(tail)
        except ValueError:
            rho = None
        if rho is not None and head in methods:
            return head, rho
    raise CompareError(f"{spec!r} names no method; methods: {', '.join(sorted(methods))} "
                       "(METHOD or METHOD@RHO)")


def _pick(rows: pd.DataFrame, method: str, rho: float | None, metric: str) -> pd.Series | None:
    hit = rows[rows["method"] == method]
    if rho is not None and len(hit) and not bool(hit["baseline"].iloc[0]):
        hit = hit[[not is_missing(r) and math.isclose(float(r), rho, rel_tol=1e-9) for r in hit["rho"]]]
    hit = hit[hit[f"{metric}_mean"].notna()]
    if not len(hit):
        return None
    lower = metric.endswith("loss")
    return hit.loc[hit[f"{metric}_mean"].idxmin() if lower else hit[f"{metric}_mean"].idxmax()]


def _describe(r: pd.Series) -> str:
    if bool(r["baseline"]):
        return str(r["method"])
    return f"{r['method']} (ρ={plain(r['rho'])})"


def compare(df, a: str, b: str, metric: str = "test_acc", confidence: float = CONFIDENCE) -> str:
    """``sambench table --compare A B``: the seed-paired difference A - B with its CI, per setting.

    A and B are ``METHOD`` or ``METHOD@RHO`` (method as in the tables: ``all``, ``norm_only``,
    ``random@0.99``, ``SGD``; without a rho, the method's best rho by mean ``metric``), compared
    within each setting and SAM variant where both were run. CompareError if one names nothing.
    """
    agg = aggregate(df)
    if not len(agg):
        raise CompareError("no finished runs")
    col = f"{metric}_by_seed"
    if col not in agg.columns:
        raise CompareError(f"no metric {metric!r} in these results")
    methods = set(agg["method"])
    (ma, ra), (mb, rb) = _parse_operand(a, methods), _parse_operand(b, methods)
    lines = []
    for setting, rows in agg.groupby("setting", sort=True):
        base = rows["baseline"].astype(bool)
        variants = sorted(set(rows.loc[~base, "variant_label"]), key=variant_sort_key) or [None]
        seen = set()
        for v in variants:  # a SAM variant's rows, with the baselines of this setting
            own = rows[base | (rows["variant_label"] == v)]
            row_a, row_b = _pick(own, ma, ra, metric), _pick(own, mb, rb, metric)
            if row_a is None or row_b is None or (row_a["_key"], row_b["_key"]) in seen:
                continue
            seen.add((row_a["_key"], row_b["_key"]))
            res = paired(by_seed(row_a[col]), by_seed(row_b[col]), confidence)
            where = setting if v is None or (row_a["baseline"] and row_b["baseline"]) else f"{setting}, {v}"
            head = f"{where}: {_describe(row_a)} − {_describe(row_b)}"
            if res["n"] < 2:
                lines.append(f"{head}: {res['mean']:+.3f} {metric} on {res['n']} common seed, no interval "
                             "(needs 2)" if res["n"] else f"{head}: no common seeds")
                continue
            lines.append(f"{head}: {res['mean']:+.3f} {metric}, {confidence:.0%} CI "
                         f"[{res['low']:+.3f}, {res['high']:+.3f}] ({CI_METHOD}, n={res['n']} seeds "
                         f"{', '.join(map(str, res['seeds']))}; p={res['p_value']:.3g})")
    if not lines:
        raise CompareError(f"{a!r} and {b!r} were never run in the same setting and variant")
    return "\n".join(lines)
