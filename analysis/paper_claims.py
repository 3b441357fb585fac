"""The SAM-ON paper's claims as seed-paired tests on a results folder (``sambench claims DIR``).

Mueller, Vlaar, Rolnick, Hein, "Normalization Layers Are All That Sharpness-Aware Minimization
Needs" (NeurIPS 2023). Per setting (model / dataset / ...) and SAM variant found in the results,
every method at the configuration the selection rule chose (analysis.selection; default ``val``
with a validation split, else ``test``, the oracle):

1. SAM-ON beats dense SAM: ``norm_only − all`` of the reported accuracy, claimed > 0.
2. A random mask of SAM-ON's size does not beat dense SAM: ``random − all``, claimed < 0.
3. A Fisher mask (SSAM-F) of SAM-ON's size does not beat dense SAM: ``fisher − all``, claimed < 0.
4. SAM-ON's minima are not flatter than dense SAM's, per sharpness measure (higher = sharper):
   ``norm_only − all``, claimed > 0.

"Of SAM-ON's size": sparsity ``match:norm_only``, or a perturbed fraction within 5% of SAM-ON's.
Each test pairs the seeds both sides finished (n), takes the mean paired difference (effect), its
Student-t 95% interval and a **two-sided** p-value (so that the data can speak against a claim as
well as for it), and Holm's correction over every test shown (family-wise α = 0.05). Verdict:
*supported* when the Holm-adjusted test rejects in the claimed direction, *contradicted* when it
rejects in the opposite one, *inconclusive* otherwise (n < 2 included). Claims 2–4 say "does not":
no test can show that a difference is absent, so they are supported only by a significant
difference in the claimed direction (worse than dense SAM; sharper), and a non-significant one is
inconclusive, not support. Claims without the runs they need are listed as *not run*, with the
suite grid lines (YAML) that would run them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import selection
from analysis.labels import is_missing, plain, setting_columns, variant_sort_key
from analysis.stats import CONFIDENCE, by_seed, holm, paired, sharpness_columns

ALPHA = 0.05
SIZE_TOLERANCE = 0.05    # relative difference of perturbed fractions that still counts as "SAM-ON's size"
PAPER = ("Mueller, Vlaar, Rolnick, Hein: Normalization Layers Are All That Sharpness-Aware Minimization Needs, "
         "NeurIPS 2023")
DEFAULT_RHOS = {"all": [0.05, 0.1, 0.2], "norm_only": [0.5, 1.0, 2.0]}   # SAM's grids (docs/protocol.md)


@dataclass(frozen=True)
class Claim:
    key: str
    statement: str
    a: str            # the side tested (its role: norm_only, random, fisher)
    b: str            # the side it is compared with
    sign: int         # claimed direction of a − b
    sharpness: bool = False


CLAIMS = (
    Claim("1", "SAM-ON beats dense SAM", "norm_only", "all", +1),
    Claim("2", "a random mask of SAM-ON's size does not beat dense SAM", "random", "all", -1),
    Claim("3", "a Fisher mask (SSAM-F) of SAM-ON's size does not beat dense SAM", "fisher", "all", -1),
    Claim("4", "SAM-ON's minima are not flatter than dense SAM's", "norm_only", "all", +1, sharpness=True),
)
ROLE_NAMES = {"norm_only": "SAM-ON (mask norm_only)", "all": "dense SAM (mask all)",
              "random": "a random mask of SAM-ON's size", "fisher": "a Fisher mask of SAM-ON's size"}


# --- finding the sides ---------------------------------------------------------------------------

def _sam(rows: pd.DataFrame) -> pd.DataFrame:
    """The SAM rows (a baseline is variant none or mask none, whatever its other fields say)."""
    return rows[~rows["baseline"].astype(bool)]


def _first(rows: pd.DataFrame, mask: str):
    hit = _sam(rows)[_sam(rows)["mask"].astype(str) == mask]
    exact = hit[hit["method"] == mask]
    return exact.iloc[0] if len(exact) else (hit.iloc[0] if len(hit) else None)


def _same_size(rows: pd.DataFrame, mask: str, sam_on) -> pd.DataFrame:
    hit = _sam(rows)[_sam(rows)["mask"].astype(str) == mask]
    matched = hit["sparsity"].astype(str) == "match:norm_only" if "sparsity" in hit else pd.Series(False, hit.index)
    if sam_on is not None and not is_missing(sam_on.get("perturbed_fraction_mean")):
        ref = float(sam_on["perturbed_fraction_mean"])
        close = [not is_missing(f) and abs(float(f) - ref) <= SIZE_TOLERANCE * ref for f in hit["perturbed_fraction_mean"]]
        matched = matched | pd.Series(close, index=hit.index)
    return hit[matched]


def sides(rows: pd.DataFrame) -> dict:
    """{role: row or None} among one setting × variant's rows: norm_only, all, random, fisher."""
    sam_on = _first(rows, "norm_only")
    out = {"norm_only": sam_on, "all": _first(rows, "all")}
    for mask in ("random", "fisher"):
        hit = _same_size(rows, mask, sam_on)
        exact = hit[hit["sparsity"].astype(str) == "match:norm_only"] if len(hit) else hit
        out[mask] = exact.iloc[0] if len(exact) else (hit.iloc[0] if len(hit) else None)
    return out


def _panels(agg: pd.DataFrame) -> list[tuple[str, str | None]]:
    """(setting, variant) pairs with SAM runs; a setting with baselines only: (setting, None)."""
    nb = agg[~agg["baseline"].astype(bool)]
    pairs = sorted({(s, v) for s, v in zip(nb["setting"], nb["variant_label"])},
                   key=lambda sv: (sv[0], variant_sort_key(sv[1])))
    return pairs + sorted((s, None) for s in set(agg["setting"]) - set(nb["setting"]))


# --- one test ------------------------------------------------------------------------------------

def _describe(row) -> str:
    if row is None:
        return "–"
    tuned = row.get("tuned") if isinstance(row.get("tuned"), str) and row.get("tuned") else ""
    return f"{row['method']}" + (f" ({tuned})" if tuned else "")


def _test(claim: Claim, a, b, metric: str, confidence: float) -> dict:
    res = paired(by_seed(a.get(f"{metric}_by_seed")), by_seed(b.get(f"{metric}_by_seed")), confidence)
    return {"claim": claim.key, "statement": claim.statement, "A": _describe(a), "B": _describe(b),
            "metric": metric, "claimed": "A − B > 0" if claim.sign > 0 else "A − B < 0", "sign": claim.sign,
            "n": res["n"], "seeds": res["seeds"], "effect": res["mean"], "ci_low": res["low"],
            "ci_high": res["high"], "p_value": res["p_value"]}


def verdict(sign: int, effect: float, p_holm: float, alpha: float = ALPHA) -> str:
    """supported / contradicted (the adjusted test rejects in / against the claimed direction) /
    inconclusive."""
    if is_missing(p_holm) or not p_holm <= alpha or is_missing(effect) or effect == 0:
        return "inconclusive"
    return "supported" if np.sign(effect) == sign else "contradicted"


# --- what is not run, and the grid lines that would run it -----------------------------------------

def yaml_value(v) -> str:
    """A value as it would be written in a suite's flow-style YAML."""
    v = plain(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return f"{v:g}"
    if isinstance(v, list):
        return "[" + ", ".join(yaml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {yaml_value(x)}" for k, x in v.items()) + "}"
    s = str(v)
    special = any(ch in s for ch in ":{}[],#&*!|>'\"%@`") or s.lower() in ("true", "false", "null", "yes", "no", "")
    return f'"{s}"' if special else s


def _rhos(rows: pd.DataFrame, mask: str) -> list[float]:
    hit = _sam(rows)[_sam(rows)["mask"].astype(str) == mask]
    return sorted({float(r) for r in hit["rho"] if not is_missing(r)})


def _scaled(values: list[float], factors) -> list[float]:
    return sorted({float(f"{v * f:.3g}") for v in values for f in factors})


def suggested_rhos(role: str, rows: pd.DataFrame) -> list[float]:
    """A ρ grid for a missing side, from what the other sides were run at: SAM-ON's best ρ is 5–10×
    dense SAM's (the paper's sweeps), the sparse masks share SAM-ON's grid."""
    own, dense = _rhos(rows, "norm_only"), _rhos(rows, "all")
    if role == "all":
        return _scaled(own, (0.1, 0.2)) if own else DEFAULT_RHOS["all"]
    if role == "norm_only" or not own:
        return _scaled(dense, (5, 10)) if dense else DEFAULT_RHOS["norm_only"]
    return own


def _context_fields(sel, rep) -> dict:
    """model, dataset and every other setting field that varies between these results' settings."""
    frame = sel.raw if sel.raw is not None else sel.agg
    cols = [c for c in setting_columns(frame) if c not in ("model", "dataset")]
    varying = [c for c in cols if c in sel.agg and sel.agg[c].map(lambda x: yaml_value(x)).nunique() > 1]
    out = {"model": rep.get("model"), "dataset": rep.get("dataset")}
    for c in varying:
        if not is_missing(rep.get(c)):
            out[c] = rep.get(c)
    return out


def _variant_fields(sel, rows: pd.DataFrame) -> dict:
    """variant and the options that differ from its defaults (``variant_shown``, read from the runs)."""
    sam = rows[~rows["baseline"].astype(bool)]
    if not len(sam):
        return {"variant": "sam"}
    rep = sam.iloc[0]
    if sel.raw is not None and "variant_shown" in sel.raw:
        runs = sel.raw[(sel.raw["setting"] == rep["setting"]) & (sel.raw["variant_label"] == rep["variant_label"])]
        rep = runs.iloc[0] if len(runs) else rep
    shown = [k for k in str(rep.get("variant_shown") or "").split(",") if k]
    opts = {k: rep.get(f"variant_opts.{k}") for k in shown if not is_missing(rep.get(f"variant_opts.{k}"))}
    return {"variant": rep.get("variant"), **({"variant_opts": opts} if opts else {})}


def grid_line(sel, rows: pd.DataFrame, role: str) -> str:
    """The suite grid line (YAML) that runs a missing side in this setting × variant."""
    rep = rows.iloc[0]
    fields = {**_context_fields(sel, rep), **_variant_fields(sel, rows), "mask": role}
    if role in ("random", "fisher"):
        fields["sparsity"] = "match:norm_only"
    fields["rho"] = suggested_rhos(role, rows)
    return "- " + yaml_value(fields)


def _seeds(rows: pd.DataFrame) -> list:
    seeds = sorted({plain(s) for lst in rows.get("seeds", []) for s in (lst or [])}, key=str)
    return seeds or [0, 1, 2]


def _missing(sel, claim: Claim, setting: str, variant, rows: pd.DataFrame, role: str) -> dict:
    """A not-run entry: why, and the grid line (none when the runs exist but the rule chose nothing)."""
    unchosen = [u for u in sel.chosen.attrs.get("unselected", [])
                if u["setting"] == setting and u["variant_label"] == variant
                and (u["method"] == role or u["method"].startswith(role + "@"))]
    present = sides(rows)[role] is not None
    if present and unchosen:
        return {"claims": [claim.key], "setting": setting, "variant": variant, "role": role, "lines": [],
                "why": f"{ROLE_NAMES[role]} has no configuration under --select {sel.rule.name}: "
                       f"{unchosen[0]['reason']}"}
    where = "in the suite that ran this setting" + f" (seeds: {yaml_value(_seeds(rows))})"
    return {"claims": [claim.key], "setting": setting, "variant": variant, "role": role,
            "why": f"no runs of {ROLE_NAMES[role]}; add {where}", "lines": [grid_line(sel, rows, role)]}


def _no_sharpness(setting: str, variant, a, b) -> dict:
    return {"claims": ["4"], "setting": setting, "variant": variant, "role": "sharpness", "lines": [
        "defaults: {sharpness: {}}   # then `sambench run` again: finished runs are measured, not retrained"],
            "why": "no sharpness measure of both SAM-ON and dense SAM (or measure the finished runs: "
                   f"sambench sharpness RUN_DIR..., run ids {', '.join(list(a['run_ids']) + list(b['run_ids']))})"}


# --- all claims ----------------------------------------------------------------------------------

def _measures(sel) -> list[str]:
    if sel.raw is not None:
        return sharpness_columns(sel.raw)
    return sorted(c[:-len("_mean")] for c in sel.agg.columns if c.startswith("sharpness.") and c.endswith("_mean"))


def _panel_claims(sel, setting: str, variant, measures, confidence) -> tuple[list[dict], list[dict]]:
    """(tests, not-run entries) of one setting × variant."""
    in_panel = (sel.agg["setting"] == setting) & ((sel.agg["variant_label"] == variant) if variant else False)
    rows = sel.agg[in_panel | ((sel.agg["setting"] == setting) & sel.agg["baseline"].astype(bool))]
    chosen = sel.chosen[(sel.chosen["setting"] == setting) & (sel.chosen["variant_label"] == variant)]
    found = sides(chosen) if len(chosen) else dict.fromkeys(("norm_only", "all", "random", "fisher"))
    ctx = {"setting": setting, "variant": variant or "SAM"}
    tests, missing = [], []
    for claim in CLAIMS:
        a, b = found[claim.a], found[claim.b]
        if a is None or b is None:
            missing += [_missing(sel, claim, setting, variant, rows, role)
                        for role, side in ((claim.a, a), (claim.b, b)) if side is None]
            continue
        metrics = [sel.rule.report]
        if claim.sharpness:
            metrics = [c for c in measures if not is_missing(a.get(f"{c}_mean")) and not is_missing(b.get(f"{c}_mean"))]
            if not metrics:
                missing.append(_no_sharpness(setting, variant, a, b))
        tests += [{**ctx, **_test(claim, a, b, m, confidence)} for m in metrics]
    return tests, missing


def _merge(entries: list[dict]) -> list[dict]:
    """One not-run entry per (setting, variant, missing side), listing every claim it blocks."""
    out: dict[tuple, dict] = {}
    for e in entries:
        key = (e["setting"], e["variant"], e["role"])
        if key in out:
            out[key]["claims"] = sorted(set(out[key]["claims"]) | set(e["claims"]))
        else:
            out[key] = dict(e)
    return list(out.values())


COLUMNS = ["claim", "statement", "setting", "variant", "A", "B", "metric", "claimed", "sign", "n", "seeds", "effect",
           "ci_low", "ci_high", "p_value", "p_holm", "verdict", "selected_by"]


def claims(data, select=None, tune=None, alpha: float = ALPHA, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """One row per test: claim, statement, setting, variant, A and B (the methods at their chosen
    configuration), metric, claimed direction, n (paired seeds), seeds, effect (mean of A − B),
    ci_low/ci_high, p_value (two-sided paired t), p_holm (Holm over every row), verdict, selected_by.
    ``attrs``: ``not_run`` (claim keys, setting, variant, why, grid lines), ``rule``, ``alpha``."""
    sel = selection.select(data, select, tune)
    tests, missing = [], []
    if len(sel.agg):
        measures = _measures(sel)
        for setting, variant in _panels(sel.agg):
            t, m = _panel_claims(sel, setting, variant, measures, confidence)
            tests += t
            missing += m
    frame = pd.DataFrame(tests, columns=[c for c in COLUMNS if c not in ("p_holm", "verdict", "selected_by")])
    frame["p_holm"] = holm(frame["p_value"]) if len(frame) else []
    frame["verdict"] = [verdict(s, e, p, alpha) for s, e, p in zip(frame["sign"], frame["effect"], frame["p_holm"])]
    frame["selected_by"] = sel.rule.tag
    frame.attrs.update(not_run=_merge(missing), rule=sel.rule, alpha=alpha, confidence=confidence)
    return frame


# --- text ----------------------------------------------------------------------------------------

def _num(v, fmt: str = "+.2f") -> str:
    return "–" if is_missing(v) else format(float(v), fmt)


def _p(v) -> str:
    return "–" if is_missing(v) else f"{float(v):.3g}"


def method_note(frame: pd.DataFrame) -> str:
    rule, alpha = frame.attrs["rule"], frame.attrs["alpha"]
    n_tests = int(frame["p_value"].notna().sum())
    return (f"Claims of the SAM-ON paper ({PAPER}), tested on these results.\n\n"
            f"Selection: {rule.describe()}.\n\n"
            f"Test: the seed-paired difference A − B (n = seeds both finished), its "
            f"{frame.attrs['confidence']:.0%} Student-t interval and a two-sided p-value; Holm's correction "
            f"over the {n_tests} tests shown (family-wise α = {alpha:g}). Verdict: supported = the adjusted test "
            f"rejects in the claimed direction, contradicted = it rejects in the opposite one, inconclusive "
            f"otherwise. A \"does not\" claim is supported only by a significant difference in its direction; "
            f"a non-significant difference is not evidence of no difference.\n")


def claims_text(frame: pd.DataFrame) -> str:
    """The claims as markdown: the method, one table row per test, then what was not run and how to run it."""
    lines = [method_note(frame)]
    oracle = " (ORACLE: chosen on test)" if frame.attrs["rule"].oracle else ""
    if len(frame):
        lines.append(f"| # | claim | setting | variant | A − B{oracle} | metric | claimed | effect | 95% CI | n | p | "
                     "p (Holm) | verdict |".replace("95%", f"{frame.attrs['confidence']:.0%}"))
        lines.append("|" + "|".join([":---"] * 7 + ["---:"] * 5 + [":---"]) + "|")
        for _, r in frame.iterrows():
            ci = "–" if is_missing(r["ci_low"]) else f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}]"
            cells = [r["claim"], r["statement"], r["setting"], r["variant"], f"{r['A']} − {r['B']}", r["metric"],
                     r["claimed"], _num(r["effect"], "+.3g" if r["metric"].startswith("sharpness.") else "+.2f"),
                     ci, str(r["n"]), _p(r["p_value"]), _p(r["p_holm"]), f"**{r['verdict']}**"]
            lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    else:
        lines.append("No claim could be tested on these results.")
    not_run = frame.attrs["not_run"]
    if not_run:
        lines.append("\nNot run:\n")
        for e in not_run:
            claims_of = ", ".join(f"({k})" for k in e["claims"])
            lines.append(f"- {claims_of} {e['setting']}, {e['variant'] or 'SAM'}: {e['why']}")
            lines += [f"      {ln}" for ln in e["lines"]]
    return "\n".join(lines) + "\n"
