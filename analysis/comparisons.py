"""Seed-paired differences between the configurations a selection rule chose (analysis.selection).

Both sides of every comparison are chosen by the same rule: the row's method at its chosen ρ, the
reference (dense SAM by default) at *its* chosen ρ, never one side tuned on test and the other not.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from analysis import selection
from analysis.labels import context_columns, is_missing, plain, row_keys, variant_sort_key
from analysis.selection import rank_candidates
from analysis.stats import CI_METHOD, CONFIDENCE, by_seed, paired

EMPTY = {"diff_mean": np.nan, "diff_std": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan, "n": 0,
         "seeds": [], "mean": np.nan, "ref_mean": np.nan, "reference": None, "ref_rho": np.nan,
         "is_reference": False}


class CompareError(ValueError):
    """A --compare operand that names no configuration, or names several."""


def _matches(row: pd.Series, reference: dict) -> bool:
    for k, want in reference.items():
        have, want = plain(row.get(k)), plain(want)
        if isinstance(have, (int, float)) and isinstance(want, (int, float)) and not isinstance(have, bool):
            if not math.isclose(have, want, rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif have != want and str(have) != str(want):
            return False
    return True


def _references(sel, reference: dict, ctx_cols: list[str]) -> dict[str, Any]:
    """{context key: index of its reference row in sel.agg}: among the rule's chosen rows, unless the
    reference fixes a tuned field itself (then among every configuration); several matches: the
    rule's ranking."""
    pool = sel.agg if set(reference) & set(sel.tuned) else sel.chosen
    pool = pool.assign(_ctx=row_keys(pool, ctx_cols))
    out = {}
    for ctx, grp in pool.groupby("_ctx", sort=False):
        cand = grp[[_matches(r, reference) for _, r in grp.iterrows()]]
        if len(cand):
            out[ctx] = rank_candidates(cand, sel.rule.score, False)[0]
    return out


def _difference(row: pd.Series, ref: pd.Series, metric: str, confidence: float) -> dict:
    mine, theirs = by_seed(row.get(f"{metric}_by_seed")), by_seed(ref.get(f"{metric}_by_seed"))
    res = paired(mine, theirs, confidence)
    common = res["seeds"]
    return {"diff_mean": res["mean"], "diff_std": res["std"], "ci_low": res["low"], "ci_high": res["high"],
            "p_value": res["p_value"], "n": res["n"], "seeds": common,
            "mean": float(np.mean([mine[s] for s in common])) if common else np.nan,
            "ref_mean": float(np.mean([theirs[s] for s in common])) if common else np.nan,
            "reference": f"{ref['variant_label']} {ref['method']} rho={plain(ref.get('rho'))}",
            "ref_rho": ref.get("rho"), "is_reference": bool(row.name == ref.name)}


def paired_difference(df, reference: dict | str | None = None, metric: str | None = None, *, select=None,
                      rows: str = "chosen", tune=None, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per method: the seed-paired difference ``method - reference`` of ``metric``, both at the
    configuration ``select`` chose (analysis.selection; default ``val`` with a validation split,
    else ``test``, the oracle), within the method's *context* (same model, dataset, variant and its
    options, base optimizer and every other setting field; only mask, sparsity, mask_opts, rho_norm,
    freeze_bn_second and the tuned fields differ).

    ``reference``: config values the reference must have (default ``{"mask": "all"}``: dense SAM) or a
    mask name; one that fixes a tuned field (``{"mask": "all", "rho": 0.05}``) is taken as given.
    ``metric``: default the rule's reported metric (test_acc). ``rows="all"``: every configuration
    (every ρ) against the chosen reference, not only the chosen ones. Differences use the seeds done in
    both; 95% Student-t interval and two-sided p-value (``ci_low``, ``ci_high``, ``p_value``).

    Columns: labels, key columns, ``rho``, ``n`` (paired seeds), ``seeds``, ``diff_mean``, ``diff_std``,
    ``mean`` / ``ref_mean`` (over the paired seeds), ``reference``, ``ref_rho``, ``is_reference``,
    ``chosen`` (the rule chose this row), ``selected_by`` (the rule's tag).
    """
    sel = selection.select(df, select, tune)
    metric = metric or sel.rule.report
    reference = {"mask": "all"} if reference is None else {"mask": reference} if isinstance(reference, str) \
        else dict(reference)
    unknown = [k for k in reference if sel.raw is not None and len(sel.raw) and k not in sel.raw.columns]
    if unknown:
        raise KeyError(f"paired_difference: reference names unknown column(s) {unknown}")
    if rows not in ("chosen", "all"):
        raise ValueError(f"rows must be 'chosen' or 'all', got {rows!r}")
    ctx_cols = context_columns(sel.raw if sel.raw is not None else sel.agg)
    table = sel.chosen if rows == "chosen" else sel.agg
    if not len(table):
        return table.assign(**{k: [] for k in ("diff_mean", "diff_std", "n", "reference")})
    refs = _references(sel, reference, ctx_cols)
    picked = set(sel.chosen.index)
    out = []
    for ctx, (_, r) in zip(row_keys(table, ctx_cols), table.iterrows()):
        stats = dict(EMPTY) if ctx not in refs else _difference(r, sel.agg.loc[refs[ctx]], metric, confidence)
        out.append({**stats, "chosen": r.name in picked, "selected_by": sel.rule.tag})
    front = [c for c in ("setting", "variant_label", "method", "rho") if c in table.columns]
    keys = list(table.attrs.get("config_columns", []))
    rest = [c for c in table.columns if c in keys and c not in front] + ["baseline", "mask_label"]
    result = pd.concat([table[front + [c for c in rest if c in table.columns]],
                        pd.DataFrame(out, index=table.index)], axis=1).reset_index(drop=True)
    result.attrs.update(config_columns=keys, reference=dict(reference), ci_method=CI_METHOD, rule=sel.rule,
                        metric=metric)
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


def _pick(agg: pd.DataFrame, chosen: pd.DataFrame, method: str, rho: float | None, metric: str):
    """(row, how it was picked): at the given ρ, else the rule's chosen configuration."""
    if rho is None:
        hit = chosen[chosen["method"] == method]
        return (hit.iloc[0], "chosen") if len(hit) else (None, None)
    hit = agg[agg["method"] == method]
    if len(hit) and not bool(hit["baseline"].iloc[0]):
        hit = hit[[not is_missing(r) and math.isclose(float(r), rho, rel_tol=1e-9) for r in hit["rho"]]]
    hit = hit[hit[f"{metric}_mean"].notna()]
    return (hit.iloc[0], "given") if len(hit) else (None, None)


def _describe(r: pd.Series, how: str, rule) -> str:
    if bool(r["baseline"]):
        return str(r["method"])
    by = f" by {rule.name}" + (": ORACLE" if rule.oracle else "") if how == "chosen" else ""
    return f"{r['method']} (ρ={plain(r['rho'])}{by})"


def _line(head: str, res: dict, metric: str, confidence: float) -> str:
    if res["n"] < 2:
        return (f"{head}: {res['mean']:+.3f} {metric} on {res['n']} common seed, no interval (needs 2)"
                if res["n"] else f"{head}: no common seeds")
    return (f"{head}: {res['mean']:+.3f} {metric}, {confidence:.0%} CI [{res['low']:+.3f}, {res['high']:+.3f}] "
            f"({CI_METHOD}, n={res['n']} seeds {', '.join(map(str, res['seeds']))}; p={res['p_value']:.3g})")


def compare(df, a: str, b: str, metric: str | None = None, confidence: float = CONFIDENCE, *, select=None,
            tune=None) -> str:
    """``sambench table --compare A B``: the seed-paired difference A - B with its CI, per setting.

    A and B are ``METHOD`` or ``METHOD@RHO`` (method as in the tables: ``all``, ``norm_only``,
    ``random@0.99``, ``SGD``); without a ρ, the configuration ``select`` chose for that method
    (default ``val`` with a validation split, else ``test``, shown as ORACLE), compared within each
    setting and SAM variant where both were run. CompareError if one names nothing.
    """
    sel = selection.select(df, select, tune)
    metric = metric or sel.rule.report
    agg, chosen = sel.agg, sel.chosen
    if not len(agg):
        raise CompareError("no finished runs")
    if f"{metric}_by_seed" not in agg.columns:
        raise CompareError(f"no metric {metric!r} in these results")
    methods = set(agg["method"])
    (ma, ra), (mb, rb) = _parse_operand(a, methods), _parse_operand(b, methods)
    lines, seen = [], set()
    for setting, rows in agg.groupby("setting", sort=True):
        base = rows["baseline"].astype(bool)
        for v in sorted(set(rows.loc[~base, "variant_label"]), key=variant_sort_key) or [None]:
            own = rows[base | (rows["variant_label"] == v)]
            mine = chosen[(chosen["setting"] == setting) & (chosen["baseline"].astype(bool)
                                                            | (chosen["variant_label"] == v))]
            (row_a, how_a), (row_b, how_b) = _pick(own, mine, ma, ra, metric), _pick(own, mine, mb, rb, metric)
            if row_a is None or row_b is None or (row_a["_key"], row_b["_key"]) in seen:
                continue
            seen.add((row_a["_key"], row_b["_key"]))
            res = paired(by_seed(row_a[f"{metric}_by_seed"]), by_seed(row_b[f"{metric}_by_seed"]), confidence)
            where = setting if v is None or (row_a["baseline"] and row_b["baseline"]) else f"{setting}, {v}"
            head = f"{where}: {_describe(row_a, how_a, sel.rule)} − {_describe(row_b, how_b, sel.rule)}"
            lines.append(_line(head, res, metric, confidence))
    if not lines:
        raise CompareError(f"{a!r} and {b!r} were never run in the same setting and variant")
    return "\n".join(lines)
