"""Markdown / LaTeX tables of mean ± std over seeds."""
from __future__ import annotations

import pandas as pd

from analysis.labels import is_missing, method_sort_key, plain, variant_sort_key
from analysis.stats import aggregate, best_rho

_DASH = {"markdown": "–", "latex": "--"}


def _as_agg(data, metric: str) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame) and f"{metric}_mean" in data.columns and "n" in data.columns:
        return data
    return aggregate(data)


def _fmt_rho(r) -> str:
    r = plain(r)
    return f"{r:g}" if isinstance(r, float) else str(r)


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
        note.append(("$\\rho$=" if fmt == "latex" else "ρ=") + _fmt_rho(row["rho"]))
    note_text = f"({', '.join(note)})"
    return f"{value} {{\\scriptsize {note_text}}}" if fmt == "latex" else f"{value} {note_text}"


def _tex(s: str) -> str:
    for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("$", "\\$"), ("#", "\\#"),
                 ("_", "\\_"), ("{", "\\{"), ("}", "\\}"), ("~", "\\textasciitilde{}"),
                 ("^", "\\textasciicircum{}"), ("ρ", "$\\rho$"), ("—", "---"), ("–", "--")):
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


def _best_values(rows: pd.DataFrame, metric: str, digits: int) -> set:
    vals = [round(v, digits) for v in rows[f"{metric}_mean"] if not is_missing(v)]
    if len(vals) < 2:  # nothing to compare against: no bold
        return set()
    return {min(vals) if metric.endswith("loss") else max(vals)}


def _row_order(df: pd.DataFrame) -> list:
    return sorted(range(len(df)), key=lambda i: (
        variant_sort_key(str(df["variant_label"].iat[i])),
        method_sort_key(df["mask"].iat[i], df["sparsity"].iat[i] if "sparsity" in df else None,
                        str(df["method"].iat[i]), bool(df["baseline"].iat[i]))))


def table(df_or_folder, fmt: str = "markdown", *, layout: str = "best", metric: str = "test_acc",
          digits: int = 2, show_rho: bool = True) -> str:
    """A table of ``metric`` (default test accuracy, %) as mean ± std over seeds.

    ``df_or_folder``: a results folder, a ``collect`` frame or an ``aggregate`` frame.
    ``fmt``: ``"markdown"`` (bold = ``**x**``) or ``"latex"`` (booktabs; bold = ``\\textbf{}``).
    Only finished (``status == "done"``) runs count.

    ``layout="best"`` (default, like the SAM-ON paper's main table): one row per
    (variant, method) — the SGD/AdamW baseline first, then per SAM variant dense SAM (``all``),
    ``norm_only``, and the other masks with their sparsities — and one column per setting
    (``model / dataset``, plus whatever else varies, e.g. epochs). Each cell is that method at its
    best rho for that column: ``86.00 ± 2.00 (n=3, ρ=0.1)``. The best mean of each column is bold
    (all tied ones, compared at the shown precision). Missing combinations are ``–``.

    ``layout="rho"``: one row per (setting, variant, method), one column per rho value (the
    baseline's value in a ``no SAM`` column); bold marks the best mean per column within each
    setting. std is the sample std (ddof=1) and is omitted for a single seed.
    """
    if fmt not in ("markdown", "latex"):
        raise ValueError(f"fmt must be 'markdown' or 'latex', got {fmt!r}")
    agg = _as_agg(df_or_folder, metric)
    if not len(agg):
        return "(no finished runs)\n"
    if layout == "best":
        return _table_best(agg, fmt, metric, digits, show_rho)
    if layout == "rho":
        return _table_rho(agg, fmt, metric, digits)
    raise ValueError(f"layout must be 'best' or 'rho', got {layout!r}")


def _table_best(agg, fmt, metric, digits, show_rho) -> str:
    best = best_rho(agg, metric)
    settings = sorted(best["setting"].unique())
    ordered = best.iloc[_row_order(best)]
    row_keys = list(dict.fromkeys(zip(ordered["variant_label"], ordered["method"], ordered["baseline"])))
    winners = {s: _best_values(best[best["setting"] == s], metric, digits) for s in settings}
    rows, groups = [], []
    for variant, method, base in row_keys:
        cells = [variant, _DASH[fmt] if base else method]
        for s in settings:
            hit = best[(best["setting"] == s) & (best["variant_label"] == variant) & (best["method"] == method)]
            if not len(hit):
                cells.append(_DASH[fmt])
                continue
            r = hit.iloc[0]
            m = r[f"{metric}_mean"]
            bold = not is_missing(m) and round(m, digits) in winners[s]
            cells.append(_cell(r, metric, digits, fmt, bold, show_rho))
        rows.append(cells)
        groups.append(variant)
    header = ["variant", "method"] + settings
    return _render(header, rows, 2, fmt, groups)


def _table_rho(agg, fmt, metric, digits) -> str:
    nb = agg[~agg["baseline"].astype(bool)]
    rhos = sorted({float(r) for r in pd.to_numeric(nb["rho"], errors="coerce") if not is_missing(r)})
    has_base = bool(agg["baseline"].astype(bool).any())
    columns = (["no SAM"] if has_base else []) + [("ρ=" + f"{r:g}") for r in rhos]
    rows, groups = [], []
    for s in sorted(agg["setting"].unique()):
        sub = agg[agg["setting"] == s]
        colval = {}
        for _, r in sub.iterrows():
            col = "no SAM" if bool(r["baseline"]) else "ρ=" + f"{float(r['rho']):g}"
            colval.setdefault(col, []).append(r[f"{metric}_mean"])
        winners = {c: _best_values(pd.DataFrame({f"{metric}_mean": v}), metric, digits)
                   for c, v in colval.items()}
        ordered = sub.iloc[_row_order(sub)]
        for (variant, method, base), grp in ordered.groupby(
                ["variant_label", "method", "baseline"], sort=False):
            cells = [s, variant, _DASH[fmt] if base else method]
            for c in columns:
                hit = [r for _, r in grp.iterrows()
                       if (c == "no SAM") == bool(base)
                       and (c == "no SAM" or "ρ=" + f"{float(r['rho']):g}" == c)]
                if not hit:
                    cells.append(_DASH[fmt])
                    continue
                r = hit[0]
                m = r[f"{metric}_mean"]
                bold = not is_missing(m) and round(m, digits) in winners.get(c, set())
                cells.append(_cell(r, metric, digits, fmt, bold, show_rho=False))
            rows.append(cells)
            groups.append(s)
    header = ["model / dataset", "variant", "method"] + columns
    return _render(header, rows, 3, fmt, groups)


__all__ = ["table"]
