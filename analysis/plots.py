"""Paper-size figures (PNG + PDF) from a results folder or a ``collect`` frame.

Every figure that shows one configuration per method shows the one a selection rule chose
(analysis.selection: ``val`` when the runs hold out a validation split, else ``test``, the oracle),
and says which in its titles. The shared machinery (style, panels, legends, saving) is
analysis.figures. Every function returns a ``PlotPaths`` (a list of written paths) whose ``skipped``
dict says which figures were not drawn and why.
"""
from __future__ import annotations

import logging
import os

import pandas as pd

from analysis import figures, science
from analysis.figures import (
    ACC_LABEL,
    FORMATS,
    STYLE,
    PlotPaths,
    Prepared,
    band,
    baseline_row,
    figure,
    fraction_axis,
    hollow,
    legend,
    nz,
    prepare,
    published_proxy,
    rho_ticks,
    skip,
    title,
)
from analysis.labels import (
    BASELINE_COLOR,
    mask_color,
    mask_marker,
    method_sort_key,
    plain,
    rho_label,
    rho_size,
    several_rhos,
    slug,
    variant_sort_key,
)
from analysis.reference import entry_for

log = logging.getLogger("analysis")
__all__ = ["PlotPaths", "FORMATS", "STYLE", "plot_all", "plot_accuracy_vs_sparsity", "plot_rho_sweeps",
           "plot_runtime_vs_accuracy", "plot_norm_gamma", "plot_gamma_violin", "plot_sharpness"]


def acc_label(d: Prepared) -> str:
    return ACC_LABEL if d.acc_col == "test_acc" else "test accuracy at the best-val epoch (%)"


# --- 1. accuracy vs fraction perturbed -----------------------------------------------------

def _dense(p: pd.DataFrame):
    """Dense SAM of a panel: method ``all`` (mask all with default options), else the first mask-all row."""
    dense = p[p["mask"] == "all"]
    exact = dense[dense["method"] == "all"]
    return exact.iloc[0] if len(exact) else (dense.iloc[0] if len(dense) else None)


def _reference_bands(ax, d: Prepared, p: pd.DataFrame, s: str, v: str):
    """The baseline's and dense SAM's bands (mean ± std over seeds); returns (baseline row, dense row)."""
    acc = f"{d.acc_col}_mean"
    b = baseline_row(d, s)
    if b is not None:
        band(ax, b[acc], b[f"{d.acc_col}_std"], BASELINE_COLOR, f"{b['variant_label']} baseline (mean ± std)")
    dr = _dense(p)
    if dr is not None:
        band(ax, dr[acc], dr[f"{d.acc_col}_std"], mask_color("all"),
             f"dense {v.split()[0]}: mask all, {d.rule.short} (mean ± std)", ls="-")
        ax.annotate(f"rho={plain(dr['rho'])}", xy=(1.0, dr[acc]), xycoords=("axes fraction", "data"),
                    xytext=(-2, 2), textcoords="offset points", ha="right", va="bottom", fontsize=8,
                    color=mask_color("all"))
    return b, dr


def _mask_lines(ax, d: Prepared, lines: pd.DataFrame) -> None:
    """One line per mask over its sparsities; norm_only a large annotated star."""
    acc = f"{d.acc_col}_mean"
    groups = sorted(lines.groupby("mask_label", sort=False),
                    key=lambda kv: method_sort_key(kv[1]["mask"].iloc[0], None, kv[0], False))
    for label, grp in groups:
        grp = grp.sort_values("perturbed_fraction_mean")
        mask = str(grp["mask"].iloc[0])
        special = mask == "norm_only"
        color = d.line_colors.get(label, mask_color(mask))
        ax.errorbar(grp["perturbed_fraction_mean"], grp[acc], yerr=nz(grp[f"{d.acc_col}_std"]),
                    color=color, marker=mask_marker(mask), ms=10 if special else 4.5,
                    mec="black" if special else color, mew=0.6, label=label, zorder=3)
        if special:
            for x, y in zip(grp["perturbed_fraction_mean"], grp[acc]):
                ax.annotate("norm layers only", (x, y), xytext=(6, -10), textcoords="offset points",
                            fontsize=8, color=mask_color(mask))


def _published_points(ax, d: Prepared, p: pd.DataFrame, b) -> bool:
    """Published numbers at our measured fraction of that method (the baseline's at the left edge)."""
    drew = False
    for _, r in p.iterrows():
        entry = entry_for(r, d.published)
        if entry is not None:
            mask = str(r["mask"])
            hollow(ax, r["perturbed_fraction_mean"], entry, d.line_colors.get(r["mask_label"], mask_color(mask)),
                   mask_marker(mask))
            drew = True
    entry = entry_for(b, d.published) if b is not None else None
    if entry is not None:  # the baseline perturbs nothing
        hollow(ax, ax.get_xlim()[0] * 1.4, entry, BASELINE_COLOR, "o")
        drew = True
    return drew


def _acc_vs_sparsity(d: Prepared, outdir, formats) -> PlotPaths:
    name = "accuracy_vs_sparsity"
    if not len(d.best):
        return skip(name, "no finished runs")
    nb = d.best[~d.best["baseline"].astype(bool)]
    variants = sorted(nb["variant_label"].unique(), key=variant_sort_key)
    out = PlotPaths()
    for v in variants:
        pts = nb[(nb["variant_label"] == v) & (nb["perturbed_fraction_mean"] > 0)]
        if not len(pts[pts["mask"] != "all"]):
            out.skipped[f"{name}[{v}]"] = "no partial-perturbation runs with a measured perturbed_fraction"
            continue
        settings = sorted(pts["setting"].unique())
        fig, axes = figure(len(settings))
        published_drawn = False
        for ax, s in zip(axes, settings):
            p = pts[pts["setting"] == s]
            b, dr = _reference_bands(ax, d, p, s, v)
            _mask_lines(ax, d, p.drop(index=[dr.name]) if dr is not None else p)
            fraction_axis(ax, p["perturbed_fraction_mean"])
            published_drawn = _published_points(ax, d, p, b) or published_drawn
            ax.set_ylabel(acc_label(d))
            title(ax, f"{v} — {s}; {d.rule.short}")
        legend(fig, axes, [published_proxy()] if published_drawn else ())
        stem = name if len(variants) == 1 else f"{name}_{slug(v)}"
        out.extend(figures.save(fig, outdir, stem, formats))
    if not out and name not in out.skipped:
        out.skipped[name] = "; ".join(out.skipped.values()) or "no SAM runs"
    return out


# --- 2. rho sweeps ---------------------------------------------------------------------------

def _rho_sweep(d: Prepared, outdir, formats) -> PlotPaths:
    name = "rho_sweep"
    if not len(d.agg):
        return skip(name, "no finished runs")
    nb = d.agg[~d.agg["baseline"].astype(bool)]
    nb = nb[pd.to_numeric(nb["rho"], errors="coerce") > 0]
    counts = nb.groupby(["setting", "variant_label", "method"])["rho"].nunique()
    swept = counts[counts >= 2]
    if not len(swept):
        return skip(name, "no method was run at two or more rho values")
    panels = sorted({(s, v) for s, v, _ in swept.index}, key=lambda sv: (sv[0], variant_sort_key(sv[1])))
    acc, chosen = f"{d.acc_col}_mean", set(d.best.index)
    fig, axes = figure(len(panels))
    published_drawn = False
    for ax, (s, v) in zip(axes, panels):
        p = nb[(nb["setting"] == s) & (nb["variant_label"] == v)]
        p = p[p["method"].isin(swept.loc[(s, v)].index)]  # a sweep needs two rhos: no lone points
        b = baseline_row(d, s)
        if b is not None:
            band(ax, b[acc], b[f"{d.acc_col}_std"], BASELINE_COLOR, f"{b['variant_label']} baseline (mean ± std)",
                 alpha=0.12)
        groups = sorted(p.groupby("method", sort=False), key=lambda kv: method_sort_key(
            kv[1]["mask"].iloc[0], kv[1]["sparsity"].iloc[0] if "sparsity" in kv[1] else None, kv[0], False))
        k = len(groups)
        for j, (method, grp) in enumerate(groups):
            grp = grp.assign(_r=pd.to_numeric(grp["rho"])).sort_values("_r")
            mask = str(grp["mask"].iloc[0])
            dodge = 10 ** ((j - (k - 1) / 2) * 0.012)  # small horizontal offset so bars do not overlap
            ax.errorbar(grp["_r"] * dodge, grp[acc], yerr=nz(grp[f"{d.acc_col}_std"]),
                        color=d.colors.get(method, mask_color(mask)), marker=mask_marker(mask),
                        ms=7 if mask == "norm_only" else 4.5, label=method, zorder=3)
            picked = grp[grp.index.isin(chosen)]
            ax.plot(picked["_r"] * dodge, picked[acc], ls="none", marker="o", ms=11, mfc="none", mec="black",
                    mew=0.9, zorder=4, label=f"chosen ({d.rule.short})")
        rhos = list(pd.to_numeric(p["rho"]).unique())
        for method, grp in groups:  # published numbers at their own rho
            entry = entry_for(grp.iloc[0], d.published)
            if entry is not None and entry["match"].get("rho") is not None:
                mask = str(grp["mask"].iloc[0])
                hollow(ax, float(entry["match"]["rho"]), entry, d.colors.get(method, mask_color(mask)),
                        mask_marker(mask))
                rhos.append(float(entry["match"]["rho"]))
                published_drawn = True
        rho_ticks(ax, rhos)
        ax.set_xlabel("rho (log scale)")
        ax.set_ylabel(acc_label(d))
        title(ax, f"{v} — {s}")
    legend(fig, axes, [published_proxy()] if published_drawn else ())
    return PlotPaths(figures.save(fig, outdir, name, formats))


# --- 3. runtime vs accuracy: accuracy against the relative step cost ------------------------

def _runtime(d: Prepared, outdir, formats) -> PlotPaths:
    from matplotlib.lines import Line2D

    name = "runtime_vs_accuracy"
    if not len(d.agg):
        return skip(name, "no finished runs")
    a = d.agg[d.agg["seconds_per_epoch_mean"].notna()]
    refs = {}
    for s in a["setting"].unique():
        b = a[(a["setting"] == s) & a["baseline"].astype(bool)]
        if len(b):
            refs[s] = b.sort_values(["n", f"{d.acc_col}_mean"], ascending=False).iloc[0]
    if not refs:
        return skip(name, "no baseline (variant none) run with seconds_per_epoch to compare against")
    settings = sorted(refs)
    sam_rows = a[a["setting"].isin(settings) & ~a["baseline"].astype(bool)]
    variants = sorted(sam_rows["variant_label"].unique(), key=variant_sort_key)
    vmarkers = dict(zip(variants, ("o", "s", "^", "D", "v", "P", "X", "h", "<", ">") * 3))
    fig, axes = figure(len(settings))
    masks_seen: dict[str, str] = {}
    for ax, s in zip(axes, settings):
        ref = refs[s]
        p = a[a["setting"] == s]
        several = several_rhos(p)
        base_spe = float(ref["seconds_per_epoch_mean"])
        for _, r in p.iterrows():
            base = bool(r["baseline"])
            mask = "none" if base else str(r["mask"])
            color = BASELINE_COLOR if base else d.line_colors.get(r["mask_label"], mask_color(mask))
            masks_seen.setdefault(r["variant_label"] if base else r["mask_label"], color)
            x = r["seconds_per_epoch_mean"] / base_spe
            xerr = r["seconds_per_epoch_std"] / base_spe
            ax.errorbar([x], [r[f"{d.acc_col}_mean"]], xerr=nz([xerr]), yerr=nz([r[f"{d.acc_col}_std"]]),
                        color=color, marker="o" if base else vmarkers[r["variant_label"]], ms=rho_size(r, several),
                        mec="black" if base else color, mew=0.6, ls="none", alpha=0.9,
                        zorder=3)
            rho_label(ax, x, r[f"{d.acc_col}_mean"], r, color, several)
        ax.axvline(1.0, color=BASELINE_COLOR, ls=":", lw=0.8, zorder=0)
        ax.set_xlabel(f"time per epoch relative to {ref['variant_label']} (×)")
        ax.set_ylabel(acc_label(d))
        title(ax, f"{s} ({ref['variant_label']}: {base_spe:.3g} s/epoch)")
    extra = [(Line2D([], [], color=c, marker="o", ls="none", ms=5), lab) for lab, c in masks_seen.items()]
    if len(variants) > 1:
        extra += [(Line2D([], [], color="#777777", marker=m, ls="none", ms=5, mfc="none"), v)
                  for v, m in vmarkers.items()]
    legend(fig, axes, extra)
    return PlotPaths(figures.save(fig, outdir, name, formats))


# --- public API --------------------------------------------------------------------------
# ``select``: the selection rule (analysis.selection: val, val-early, test, last, fixed:...; default val
# when the runs hold out a validation split, else test, the oracle); ``tune``: the fields it chooses.

def _run(fns, data, outdir, formats, select=None, tune=None) -> PlotPaths:
    import matplotlib

    out = PlotPaths()
    with matplotlib.rc_context(STYLE):
        d = prepare(data, select, tune)
        for fn in fns:
            out.extend_from(fn(d, outdir, tuple(formats)))
    return out


def plot_accuracy_vs_sparsity(data, outdir, formats=FORMATS, *, select=None, tune=None) -> PlotPaths:
    """Test accuracy vs fraction of parameters perturbed (log x), one line per mask.

    One panel per setting (model / dataset), one figure per SAM variant. Each point is a
    mask × sparsity at the ρ the rule chose (error bars: std over seeds); norm_only is a large
    annotated star. Grey band: the SGD baseline (mean ± std); blue band: dense SAM (mask all)
    at its chosen ρ. Panel titles name the rule ("ρ by val", "ρ by test: ORACLE").
    """
    return _run((_acc_vs_sparsity,), data, outdir, formats, select, tune)


def plot_rho_sweeps(data, outdir, formats=FORMATS, *, select=None, tune=None) -> PlotPaths:
    """Test accuracy vs rho (log x), one line per method, one panel per setting × variant; the ρ the
    rule chose is circled.

    Error bars: std over seeds; methods are dodged slightly along x so bars do not overlap;
    the grey band is the baseline (mean ± std). Skipped when no method was run at >= 2 rhos.
    """
    return _run((_rho_sweep,), data, outdir, formats, select, tune)


def plot_runtime_vs_accuracy(data, outdir, formats=FORMATS, *, select=None, tune=None) -> PlotPaths:
    """Test accuracy against the relative step cost: seconds per training epoch over the
    baseline's (same setting, so the same number of steps per epoch), error bars std over seeds.

    One point per configuration (every rho), coloured by mask, marker by SAM variant: the
    figure of a variants x masks suite (suites/variants_fmnist.yaml). Costs compare only between
    runs that did not share a device.
    """
    return _run((_runtime,), data, outdir, formats, select, tune)


def plot_norm_gamma(data, outdir, formats=FORMATS, *, select=None, tune=None) -> PlotPaths:
    """Ridge plot of final norm-layer weights γ: a density (Gaussian KDE) per method at its chosen
    ρ (seeds pooled), stacked, with its median; one panel per setting × variant.

    Only runs that saved ``norm_gamma`` count; skipped when none did.
    """
    return _run((science.gamma_ridge,), data, outdir, formats, select, tune)


def plot_gamma_violin(data, outdir, formats=FORMATS, *, select=None, tune=None) -> PlotPaths:
    """Violins of final norm-layer weights γ per method at its chosen ρ (quartiles inside)."""
    return _run((science.gamma_violin,), data, outdir, formats, select, tune)


def plot_sharpness(data, outdir, formats=FORMATS, *, select=None, tune=None) -> PlotPaths:
    """Test accuracy against each sharpness measure (one panel per measure, colour = mask,
    marker = variant, a point per configuration), and each measure against the fraction of
    parameters perturbed (the chosen ρ per method). Skipped when no run has ``sharpness``."""
    return _run((science.sharpness_vs_accuracy, science.sharpness_vs_sparsity), data, outdir, formats, select,
                tune)


def plot_all(folder_or_df, outdir: str | os.PathLike, formats=FORMATS, *, select=None, tune=None) -> PlotPaths:
    """Draw every figure into ``outdir``; returns the written paths (``.skipped``: what was not)."""
    out = _run((_acc_vs_sparsity, _rho_sweep, _runtime) + science.FIGURES, folder_or_df, outdir, formats,
               select, tune)
    for k, reason in out.skipped.items():
        log.warning("analysis.plot_all: %s not drawn: %s", k, reason)
    return out
