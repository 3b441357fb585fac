"""Markdown / LaTeX tables of mean ± std over seeds, each method at the configuration a selection
rule chose (analysis.selection), the rule named above the table and, for the oracle, in its header."""
from __future__ import annotations

import pandas as pd

from analysis import selection
from analysis.labels import is_missing, method_sort_key, plain, variant_sort_key
from analysis.reference import entry_for, published_text, sources
from analysis.stats import CI_NOTE, CONFIDENCE, by_seed, paired

_DASH = {"markdown": "–", "latex": "--"}
CHOSEN_MARK = {"markdown": " †", "latex": "$^\\dagger$"}


def _fmt_rho(r) -> str:
    r = plain(r)
    return f"{r:g}" if isinstance(r, float) else str(r)


def caption(rule, fmt: str, layout: str = "best") -> str:
    """The line above a table: which rule chose its rows ("ORACLE" for the test rule)."""
    what = ("Rows: each method at the configuration chosen by " if layout == "best"
            else "Every configuration; † marks the one chosen by ")
    text = what + rule.describe() + "."
    return ("% " if fmt == "latex" else "") + text + "\n\n"


def _cell(row, metric, digits, fmt, bold, show_rho) -> str:
    mean, std, n = row[f"{metric}_mean"], row[f"{metric}_std"], int(row["n"])
    if is_missing(mean):
        return _DASH[fmt]
    pm = " $\\pm$ " if fmt == "latex" else " ± "
    value = f"{mean:.{digits}f}" + (f"{pm}{std:.{digits}f}" if not is_missing(std) else "")
    if bold:
        value = f"\\textbf{{{value}}}" if fmt == "latex" else f"**{value}**"
    note = [f"n={n}"]
    if show_rho and not bool(row["baseline"]):
        tuned = row.get("tuned")
        text = tuned if isinstance(tuned, str) and tuned else "ρ=" + _fmt_rho(row["rho"])
        note.append(text.replace("_", "\\_").replace("ρ", "$\\rho$") if fmt == "latex" else text)
    note_text = f"({', '.join(note)})"
    return f"{value} {{\\scriptsize {note_text}}}" if fmt == "latex" else f"{value} {note_text}"


def _tex(s: str) -> str:
    for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("$", "\\$"), ("#", "\\#"),
                 ("_", "\\_"), ("{", "\\{"), ("}", "\\}"), ("~", "\\textasciitilde{}"),
                 ("^", "\\textasciicircum{}"), ("ρ", "$\\rho$"), ("Δ", "$\\Delta$"), ("—", "---"),
                 ("–", "--")):
        s = s.replace(a, b)
    return s


def _render(header: list[str], rows: list[list[str]], n_label: int, fmt: str,
            groups: list[int] | None = None) -> str:
    """rows: already formatted cells; label cells (first n_label) are escaped here."""
    if fmt == "markdown":
        esc = lambda s: s.replace("|", "\\|")
        lines = ["| " + " | ".join(esc(h) for h in header) + " |",
                 "|" + "|".join([":---"] * n_label + ["---:"] * (len(header) - n_label)) + "|"]
        for r in rows:
            lines.append("| " + " | ".join([esc(c) for c in r[:n_label]] + r[n_label:]) + " |")
        return "\n".join(lines) + "\n"
    spec = "l" * n_label + "c" * (len(header) - n_label)
    lines = [f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
             " & ".join(_tex(h) for h in header) + " \\\\", "\\midrule"]
    for i, r in enumerate(rows):
        if groups and i > 0 and groups[i] != groups[i - 1]:
            lines.append("\\midrule")
        lines.append(" & ".join([_tex(c) for c in r[:n_label]] + r[n_label:]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def _winners(rows: pd.DataFrame, metric: str, confidence: float) -> set:
    """Index of the row to bold: the best mean, only if it is significantly better than every other
    row with a value (seed-paired t interval of the difference excluding 0); else nothing."""
    col = f"{metric}_mean"
    valid = rows[rows[col].notna()]
    if len(valid) < 2:
        return set()
    lower = metric.endswith("loss")
    top = valid[col].idxmin() if lower else valid[col].idxmax()
    mine = by_seed(valid.at[top, f"{metric}_by_seed"]) if f"{metric}_by_seed" in valid else {}
    for idx in valid.index:
        if idx == top:
            continue
        res = paired(mine, by_seed(valid.at[idx, f"{metric}_by_seed"]), confidence)
        if res["n"] < 2 or not (res["high"] < 0 if lower else res["low"] > 0):
            return set()
    return {top}


def _dense_of(rows: pd.DataFrame, r: pd.Series):
    """Dense SAM (mask all) of r's variant in this setting (for a baseline: of the first variant)."""
    dense = rows[(rows["mask"] == "all") & ~rows["baseline"].astype(bool)]
    if not bool(r["baseline"]):
        dense = dense[dense["variant_label"] == r["variant_label"]]
    if not len(dense):
        return None
    dense = dense.iloc[sorted(range(len(dense)), key=lambda i: variant_sort_key(dense["variant_label"].iat[i]))]
    return dense.iloc[0]


def _delta_cell(r: pd.Series, ref, metric: str, digits: int, confidence: float, fmt: str) -> str:
    if ref is None:
        return _DASH[fmt]
    if ref.name == r.name:
        return "reference"
    res = paired(by_seed(r.get(f"{metric}_by_seed")), by_seed(ref.get(f"{metric}_by_seed")), confidence)
    if res["n"] == 0:
        return _DASH[fmt]
    text = f"{res['mean']:+.{digits}f}"
    if res["n"] < 2:
        return text + " (n=1)"
    return text + f" [{res['low']:+.{digits}f}, {res['high']:+.{digits}f}]"


def _notes(fmt: str, has_delta: bool, used: list[dict], unused: list[dict], digits: int,
           confidence: float, rule=None, unselected: list[dict] = ()) -> str:
    lines = []
    if has_delta:
        at = "at its ρ chosen by the same rule" if rule is not None else "at the same ρ column"
        lines.append(f"Δ vs all: the row minus dense SAM (mask all) of the same variant {at} "
                     f"(baselines: minus the first SAM variant); {CI_NOTE.replace('95%', f'{confidence:.0%}')}.")
    lines.append(f"Bold: the best mean of a column, shown only where it is significantly better than every "
                 f"other row of that column (seed-paired t, {confidence:.0%}); none otherwise.")
    if rule is not None and rule.oracle:
        lines.append("ORACLE: the test set chose these rows, so every number is optimistic, most for the methods "
                     "tuned over the most values; hold out a validation split (val_split) and use --select val.")
    for u in unselected:
        lines.append(f"Not shown under {rule.name}: {u['method']} ({u['setting']}, {u['variant_label']}): "
                     f"{u['reason']}.")
    srcs = sources(used + unused)
    for i, src in enumerate(srcs, 1):
        lines.append(f"[{i}] published: {src}")
    for e in unused:
        what = e.get("label") or ", ".join(f"{k}={plain(v)}" for k, v in e["match"].items()
                                           if k not in ("dataset", "model", "label_noise"))
        lines.append(f"Published but not run here: {what}: {published_text(e, digits)} "
                     f"[{srcs.index(e['source']) + 1}]")
    prefix = "% " if fmt == "latex" else ""
    return "\n" + "\n".join(prefix + ln for ln in lines) + "\n"


def _published_cell(r: pd.Series, entries: list[dict], metric: str, digits: int, fmt: str,
                    used: list[dict], order: list[str]) -> str:
    entry = entry_for(r, entries, metric)
    if entry is None:
        return _DASH[fmt]
    if entry not in used:
        used.append(entry)
    if entry["source"] not in order:
        order.append(entry["source"])
    return f"{published_text(entry, digits, fmt)} [{order.index(entry['source']) + 1}]"


def _row_order(df: pd.DataFrame) -> list:
    return sorted(range(len(df)), key=lambda i: (
        variant_sort_key(str(df["variant_label"].iat[i])),
        method_sort_key(df["mask"].iat[i], df["sparsity"].iat[i] if "sparsity" in df else None,
                        str(df["method"].iat[i]), bool(df["baseline"].iat[i]))))


def table(df_or_folder, fmt: str = "markdown", *, layout: str = "best", metric: str | None = None,
          digits: int = 2, show_rho: bool = True, published: list[dict] | None = None,
          paired_diff: bool = True, confidence: float = CONFIDENCE, select=None, tune=None) -> str:
    """A table of ``metric`` (default: what the selection rule reports, test accuracy %) as mean ± std
    over seeds, the rule named in a line above it, notes below.

    ``df_or_folder``: a results folder, a ``collect`` frame or an ``aggregate`` frame.
    ``fmt``: ``"markdown"`` (bold = ``**x**``) or ``"latex"`` (booktabs; bold = ``\\textbf{}``; the
    caption and notes as ``%`` comment lines). Only finished (``status == "done"``) runs count.
    ``select``: the selection rule (analysis.selection: ``val``, ``val-early``, ``test``, ``last``,
    ``fixed:rho=...``; default ``val`` when the runs hold out a validation split, else ``test``, the
    oracle, then marked "(oracle)" in every setting's header and in the notes); ``tune``: the fields
    it chooses (default rho).

    ``layout="best"`` (default, like the SAM-ON paper's main table): one row per
    (variant, method) — the SGD/AdamW baseline first, then per SAM variant dense SAM (``all``),
    ``norm_only``, and the other masks with their sparsities — and one column per setting
    (``model / dataset``, plus whatever else varies, e.g. epochs). Each cell is that method at the
    configuration the rule chose for that column: ``86.00 ± 2.00 (n=3, ρ=0.1)``. Beside each
    setting column: ``Δ vs all`` (``paired_diff``), the seed-paired difference to dense SAM of the
    same variant at *its* chosen ρ with its ``confidence`` interval (Student's t, n - 1 df):
    ``+1.00 [+0.21, +1.79]``; and ``published`` where the results folder holds published numbers (a
    suite's ``reference:`` block, or ``published=[...]`` entries) for that configuration, with a
    numbered source.

    ``layout="rho"``: one row per (setting, variant, method), one column per rho value (the
    baseline's value in a ``no SAM`` column), † on the configuration the rule chose, and
    ``published`` when there is any.

    Bold: the best mean of a column (within a setting), and only when it is significantly better
    than every other row of that column (seed-paired t interval excluding 0); a column without
    such a row has no bold. Missing combinations are ``–``; std is the sample std (ddof=1),
    omitted for a single seed.
    """
    if fmt not in ("markdown", "latex"):
        raise ValueError(f"fmt must be 'markdown' or 'latex', got {fmt!r}")
    if layout not in ("best", "rho"):
        raise ValueError(f"layout must be 'best' or 'rho', got {layout!r}")
    sel = selection.select(df_or_folder, select, tune)
    metric = metric or sel.rule.report
    if not len(sel.agg):
        return "(no finished runs)\n"
    entries = list(published if published is not None else sel.agg.attrs.get("published", []))
    if layout == "best":
        body = _table_best(sel, fmt, metric, digits, show_rho, entries, paired_diff, confidence)
    else:
        body = _table_rho(sel, fmt, metric, digits, entries, confidence)
    return caption(sel.rule, fmt, layout) + body


def _best_header(settings, has_delta, has_pub, confidence, rule) -> list[str]:
    header = ["variant", "method"]
    for s in settings:
        header += [s + (" (oracle)" if rule.oracle else "")]
        header += ([f"Δ vs all ({confidence:.0%} CI)"] if has_delta[s] else []) + (["published"] if has_pub[s] else [])
    return header


def _table_best(sel, fmt, metric, digits, show_rho, entries, paired_diff, confidence) -> str:
    best = sel.chosen
    if not len(best):
        return "(no method has a configuration under this rule)\n" + _notes(
            fmt, False, [], [], digits, confidence, sel.rule, best.attrs.get("unselected", []))
    settings = sorted(best["setting"].unique())
    ordered = best.iloc[_row_order(best)]
    row_keys = list(dict.fromkeys(zip(ordered["variant_label"], ordered["method"], ordered["baseline"])))
    by_setting = {s: best[best["setting"] == s] for s in settings}
    winners = {s: _winners(sub, metric, confidence) for s, sub in by_setting.items()}
    has_delta = {s: paired_diff and any(_dense_of(sub, r) is not None for _, r in sub.iterrows())
                 for s, sub in by_setting.items()}
    has_pub = {s: any(entry_for(r, entries, metric) is not None for _, r in sub.iterrows())
               for s, sub in by_setting.items()}
    used, order, rows, groups = [], [], [], []
    for variant, method, base in row_keys:
        cells = [variant, _DASH[fmt] if base else method]
        for s, sub in by_setting.items():
            hit = sub[(sub["variant_label"] == variant) & (sub["method"] == method)]
            if not len(hit):
                cells += [_DASH[fmt]] * (1 + int(has_delta[s]) + int(has_pub[s]))
                continue
            r = hit.iloc[0]
            cells.append(_cell(r, metric, digits, fmt, r.name in winners[s], show_rho))
            if has_delta[s]:
                cells.append(_delta_cell(r, _dense_of(sub, r), metric, digits, confidence, fmt))
            if has_pub[s]:
                cells.append(_published_cell(r, entries, metric, digits, fmt, used, order))
        rows.append(cells)
        groups.append(variant)
    unused = [e for e in entries if e.get("metric", "test_acc") == metric and e not in used]
    return _render(_best_header(settings, has_delta, has_pub, confidence, sel.rule), rows, 2, fmt, groups) + \
        _notes(fmt, any(has_delta.values()), used, unused if used else [], digits, confidence, sel.rule,
               best.attrs.get("unselected", []))


def _table_rho(sel, fmt, metric, digits, entries, confidence) -> str:
    agg, chosen = sel.agg, set(sel.chosen.index)
    nb = agg[~agg["baseline"].astype(bool)]
    rhos = sorted({float(r) for r in pd.to_numeric(nb["rho"], errors="coerce") if not is_missing(r)})
    has_base = bool(agg["baseline"].astype(bool).any())
    columns = (["no SAM"] if has_base else []) + [("ρ=" + f"{r:g}") for r in rhos]
    has_pub = any(entry_for(r, entries, metric) is not None for _, r in agg.iterrows())
    used, order = [], []
    rows, groups = [], []
    for s in sorted(agg["setting"].unique()):
        sub = agg[agg["setting"] == s]
        col_of = {i: "no SAM" if bool(r["baseline"]) else "ρ=" + f"{float(r['rho']):g}" for i, r in sub.iterrows()}
        winners = set()
        for c in set(col_of.values()):
            winners |= _winners(sub.loc[[i for i, cc in col_of.items() if cc == c]], metric, confidence)
        ordered = sub.iloc[_row_order(sub)]
        for (variant, method, base), grp in ordered.groupby(
                ["variant_label", "method", "baseline"], sort=False):
            cells = [s, variant, _DASH[fmt] if base else method]
            for c in columns:
                hit = [i for i in grp.index if col_of[i] == c]
                if not hit:
                    cells.append(_DASH[fmt])
                    continue
                mark = CHOSEN_MARK[fmt] if hit[0] in chosen and not base and len(grp) > 1 else ""
                cells.append(_cell(grp.loc[hit[0]], metric, digits, fmt, hit[0] in winners, show_rho=False) + mark)
            if has_pub:
                cells.append(_published_cell(grp.iloc[0], entries, metric, digits, fmt, used, order))
            rows.append(cells)
            groups.append(s)
    header = ["model / dataset", "variant", "method"] + columns + (["published"] if has_pub else [])
    return _render(header, rows, 3, fmt, groups) + _notes(fmt, False, used, [], digits, confidence)


__all__ = ["table", "caption"]
