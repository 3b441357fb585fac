"""Paper-size figures (PNG + PDF) from a results folder or a ``collect`` frame.

Uses matplotlib's object API (``matplotlib.figure.Figure``, rendered by Agg), never pyplot's
global state, so it works headless and does not touch an interactive session's backend.
Every function returns a ``PlotPaths`` (a list of written paths) whose ``skipped`` dict says
which figures were not drawn and why.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.labels import (
    BASELINE_COLOR,
    add_labels,
    is_missing,
    mask_color,
    mask_marker,
    method_colors,
    method_sort_key,
    plain,
    rho_label,
    rho_size,
    several_rhos,
    slug,
    variant_sort_key,
)
from analysis.loading import ensure_frame
from analysis.reference import entry_for
from analysis.stats import aggregate, best_rho

log = logging.getLogger("analysis")

FORMATS = ("png", "pdf")
PANEL_W, PANEL_H, MAX_COLS = 3.4, 2.5, 2
ACC_LABEL = "test accuracy (%)"
STYLE = {
    "font.size": 8, "axes.titlesize": 8.5, "axes.labelsize": 8, "xtick.labelsize": 8,
    "ytick.labelsize": 8, "legend.fontsize": 8, "legend.title_fontsize": 8, "figure.titlesize": 9,
    "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.5, "axes.spines.top": False,
    "axes.spines.right": False, "lines.linewidth": 1.2, "lines.markersize": 4.5,
    "errorbar.capsize": 2, "savefig.dpi": 200, "pdf.fonttype": 42, "ps.fonttype": 42,
    "figure.constrained_layout.h_pad": 0.04, "figure.constrained_layout.w_pad": 0.04,
}


class PlotPaths(list):
    """A list of written file paths; ``skipped`` maps a figure name to why it was not drawn."""

    def __init__(self, paths=(), skipped: dict | None = None):
        super().__init__(paths)
        self.skipped: dict[str, str] = dict(skipped or {})

    def extend_from(self, other: PlotPaths) -> None:
        self.extend(other)
        self.skipped.update(other.skipped)


@dataclass
class _Data:
    raw: pd.DataFrame
    agg: pd.DataFrame
    best: pd.DataFrame
    colors: dict = field(default_factory=dict)        # method -> colour (mask colour, shaded)
    line_colors: dict = field(default_factory=dict)   # mask_label -> colour
    published: list = field(default_factory=list)     # reference entries (analysis.reference)


def _prepare(data) -> _Data:
    if isinstance(data, _Data):
        return data
    frame = ensure_frame(data)
    published = list(frame.attrs.get("published", []))
    raw = add_labels(frame)
    raw.attrs["published"] = published
    agg = aggregate(raw)
    best = best_rho(agg) if len(agg) else agg
    items, line_items = [], []
    if len(agg):
        order = sorted(range(len(agg)), key=lambda i: method_sort_key(
            agg["mask"].iat[i], agg["sparsity"].iat[i] if "sparsity" in agg else None,
            agg["method"].iat[i], bool(agg["baseline"].iat[i])))
        for i in order:
            base = bool(agg["baseline"].iat[i])
            items.append((agg["method"].iat[i], "none" if base else str(agg["mask"].iat[i])))
            line_items.append((agg["mask_label"].iat[i], "none" if base else str(agg["mask"].iat[i])))
    return _Data(raw, agg, best, method_colors(items), method_colors(line_items), published)


def _skip(name: str, reason: str) -> PlotPaths:
    log.info("plot %s skipped: %s", name, reason)
    return PlotPaths([], {name: reason})


def _figure(n: int, ncols_max: int = MAX_COLS, extra_h: float = 0.0):
    from matplotlib.figure import Figure

    ncols = max(1, min(n, ncols_max))
    nrows = -(-n // ncols)
    fig = Figure(figsize=(PANEL_W * ncols, PANEL_H * nrows + extra_h), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        fig.delaxes(ax)
    return fig, axes[:n]


def _legend(fig, axes, extra=()) -> None:
    seen, handles, labels = set(), [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in seen and not lab.startswith("_"):
                seen.add(lab)
                handles.append(h)
                labels.append(lab)
    for h, lab in extra:
        if lab not in seen:
            seen.add(lab)
            handles.append(h)
            labels.append(lab)
    if handles:
        width = fig.get_size_inches()[0]
        longest = max(len(lab) for lab in labels)
        per_col = max(1.0, 0.35 + 0.06 * longest)
        ncols = max(1, min(len(labels), int(width // per_col)))
        rows = -(-len(labels) // ncols)
        # grow the figure by the legend's height, so the panels keep their size
        fig.set_figheight(fig.get_figheight() + 0.15 + 0.17 * rows)
        fig.legend(handles, labels, loc="outside lower center", ncols=ncols, frameon=False,
                   handlelength=1.8, columnspacing=1.2)


def _save(fig, outdir, stem: str, formats) -> list[str]:
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in formats:
        p = outdir / f"{stem}.{ext}"
        fig.savefig(p, format=ext)
        paths.append(str(p))
    return paths


def _baseline_row(d: _Data, setting: str):
    b = d.best[(d.best["baseline"]) & (d.best["setting"] == setting)]
    if not len(b):
        return None
    return b.sort_values(["n", "test_acc_mean"], ascending=False).iloc[0]


def _band(ax, mean, std, color, label, alpha=0.15, ls="--"):
    if is_missing(mean):
        return
    if not is_missing(std):
        ax.axhspan(mean - std, mean + std, color=color, alpha=alpha, lw=0, zorder=0)
    ax.axhline(mean, color=color, ls=ls, lw=1.0, label=label, zorder=1)


PUBLISHED_LABEL = "published (hollow markers)"


def _hollow(ax, x, entry: dict, color: str, marker: str) -> None:
    """A published number as a hollow marker (error bar: its std when published)."""
    yerr = [entry["std"]] if entry.get("std") is not None else None
    ax.errorbar([x], [entry["mean"]], yerr=yerr, color=color, marker=marker, mfc="none", mec=color,
                mew=1.4, ms=10, ls="none", zorder=4, capsize=3, elinewidth=0.8)


def _published_proxy():
    from matplotlib.lines import Line2D

    return (Line2D([], [], color="#555555", marker="o", mfc="none", ls="none", ms=8), PUBLISHED_LABEL)


def _plain_log_labels(ax) -> None:
    """Decade labels as 0.001 / 0.01 / 0.1 / 1 (no mathtext: readable and fast)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10, numticks=12))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _rho_ticks(ax, rhos) -> None:
    """Log x axis with major ticks at the rho values actually run, labelled plainly (0.05, 0.1)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_xscale("log")
    rhos = sorted(float(r) for r in rhos if not is_missing(r) and r > 0)
    if len(rhos) > 8:  # too many to label: keep the log locator, plain labels
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        return
    ax.xaxis.set_major_locator(FixedLocator(rhos))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    if len(rhos) >= 1:
        ax.set_xlim(rhos[0] / 1.4, rhos[-1] * 1.4)


def _title(ax, text: str, width: int = 46) -> None:
    """Panel title wrapped to the panel's width (3.4 in at 8.5 pt holds about 46 characters)."""
    import textwrap

    ax.set_title("\n".join(textwrap.wrap(text, width=width, break_long_words=False)) or text)


def _nz(a) -> np.ndarray:
    return np.nan_to_num(np.asarray(a, dtype=float), nan=0.0)


# --- 1. accuracy vs fraction perturbed -----------------------------------------------------

def _acc_vs_sparsity(d: _Data, outdir, formats) -> PlotPaths:
    name = "accuracy_vs_sparsity"
    if not len(d.best):
        return _skip(name, "no finished runs")
    nb = d.best[~d.best["baseline"].astype(bool)]
    variants = sorted(nb["variant_label"].unique(), key=variant_sort_key)
    out = PlotPaths()
    for v in variants:
        sub = nb[nb["variant_label"] == v]
        pts = sub[sub["perturbed_fraction_mean"] > 0]
        if not len(pts[pts["mask"] != "all"]):
            out.skipped[f"{name}[{v}]"] = "no partial-perturbation runs with a measured perturbed_fraction"
            continue
        settings = sorted(pts["setting"].unique())
        fig, axes = _figure(len(settings))
        published_drawn = False
        for ax, s in zip(axes, settings):
            p = pts[pts["setting"] == s]
            b = _baseline_row(d, s)
            if b is not None:
                _band(ax, b["test_acc_mean"], b["test_acc_std"], BASELINE_COLOR,
                      f"{b['variant_label']} baseline (mean ± std)")
            dense = p[p["mask"] == "all"]
            dense_idx = None
            if len(dense):
                dr = dense.loc[dense["test_acc_mean"].idxmax()]
                dense_idx = dr.name
                _band(ax, dr["test_acc_mean"], dr["test_acc_std"], mask_color("all"),
                      f"dense {v.split()[0]}: mask all, best rho (mean ± std)", ls="-")
                ax.annotate(f"rho={plain(dr['rho'])}", xy=(1.0, dr["test_acc_mean"]),
                            xycoords=("axes fraction", "data"), xytext=(-2, 2), textcoords="offset points",
                            ha="right", va="bottom", fontsize=8, color=mask_color("all"))
            lines = p.drop(index=[dense_idx]) if dense_idx is not None else p
            groups = sorted(lines.groupby("mask_label", sort=False),
                            key=lambda kv: method_sort_key(kv[1]["mask"].iloc[0], None, kv[0], False))
            for label, grp in groups:
                grp = grp.sort_values("perturbed_fraction_mean")
                mask = str(grp["mask"].iloc[0])
                special = mask == "norm_only"
                color = d.line_colors.get(label, mask_color(mask))
                ax.errorbar(grp["perturbed_fraction_mean"], grp["test_acc_mean"], yerr=_nz(grp["test_acc_std"]),
                            color=color, marker=mask_marker(mask), ms=10 if special else 4.5,
                            mec="black" if special else color, mew=0.6, label=label, zorder=3)
                if special:
                    for x, y in zip(grp["perturbed_fraction_mean"], grp["test_acc_mean"]):
                        ax.annotate("norm layers only", (x, y), xytext=(6, -10), textcoords="offset points",
                                    fontsize=8, color=mask_color(mask))
            ax.set_xscale("log")
            lo = float(p["perturbed_fraction_mean"].min())
            ax.set_xlim(10 ** np.floor(np.log10(lo * 0.8)), 1.6)
            _plain_log_labels(ax)
            drew = False
            for _, r in p.iterrows():  # published numbers at our measured fraction of that method
                entry = entry_for(r, d.published)
                if entry is not None:
                    mask = str(r["mask"])
                    _hollow(ax, r["perturbed_fraction_mean"], entry, d.line_colors.get(
                        r["mask_label"], mask_color(mask)), mask_marker(mask))
                    drew = True
            entry = entry_for(b, d.published) if b is not None else None
            if entry is not None:  # the baseline perturbs nothing: at the left edge
                _hollow(ax, ax.get_xlim()[0] * 1.4, entry, BASELINE_COLOR, "o")
                drew = True
            ax.set_xlabel("fraction of parameters perturbed (log scale)")
            ax.set_ylabel(ACC_LABEL)
            _title(ax, f"{v} — {s}")
            published_drawn = published_drawn or drew
        _legend(fig, axes, [_published_proxy()] if published_drawn else ())
        stem = name if len(variants) == 1 else f"{name}_{slug(v)}"
        out.extend(_save(fig, outdir, stem, formats))
    if not out and name not in out.skipped:
        out.skipped[name] = "; ".join(out.skipped.values()) or "no SAM runs"
    return out


# --- 2. rho sweeps ---------------------------------------------------------------------------

def _rho_sweep(d: _Data, outdir, formats) -> PlotPaths:
    name = "rho_sweep"
    if not len(d.agg):
        return _skip(name, "no finished runs")
    nb = d.agg[~d.agg["baseline"].astype(bool)]
    nb = nb[pd.to_numeric(nb["rho"], errors="coerce") > 0]
    counts = nb.groupby(["setting", "variant_label", "method"])["rho"].nunique()
    swept = counts[counts >= 2]
    if not len(swept):
        return _skip(name, "no method was run at two or more rho values")
    panels = sorted({(s, v) for s, v, _ in swept.index}, key=lambda sv: (sv[0], variant_sort_key(sv[1])))
    fig, axes = _figure(len(panels))
    published_drawn = False
    for ax, (s, v) in zip(axes, panels):
        p = nb[(nb["setting"] == s) & (nb["variant_label"] == v)]
        p = p[p["method"].isin(swept.loc[(s, v)].index)]  # a sweep needs two rhos: no lone points
        b = _baseline_row(d, s)
        if b is not None:
            _band(ax, b["test_acc_mean"], b["test_acc_std"], BASELINE_COLOR,
                  f"{b['variant_label']} baseline (mean ± std)", alpha=0.12)
        groups = sorted(p.groupby("method", sort=False), key=lambda kv: method_sort_key(
            kv[1]["mask"].iloc[0], kv[1]["sparsity"].iloc[0] if "sparsity" in kv[1] else None, kv[0], False))
        k = len(groups)
        for j, (method, grp) in enumerate(groups):
            grp = grp.assign(_r=pd.to_numeric(grp["rho"])).sort_values("_r")
            mask = str(grp["mask"].iloc[0])
            dodge = 10 ** ((j - (k - 1) / 2) * 0.012)  # small horizontal offset so bars do not overlap
            ax.errorbar(grp["_r"] * dodge, grp["test_acc_mean"], yerr=_nz(grp["test_acc_std"]),
                        color=d.colors.get(method, mask_color(mask)), marker=mask_marker(mask),
                        ms=7 if mask == "norm_only" else 4.5, label=method, zorder=3)
        rhos = list(pd.to_numeric(p["rho"]).unique())
        for method, grp in groups:  # published numbers at their own rho
            entry = entry_for(grp.iloc[0], d.published)
            if entry is not None and entry["match"].get("rho") is not None:
                mask = str(grp["mask"].iloc[0])
                _hollow(ax, float(entry["match"]["rho"]), entry, d.colors.get(method, mask_color(mask)),
                        mask_marker(mask))
                rhos.append(float(entry["match"]["rho"]))
                published_drawn = True
        _rho_ticks(ax, rhos)
        ax.set_xlabel("rho (log scale)")
        ax.set_ylabel(ACC_LABEL)
        _title(ax, f"{v} — {s}")
    _legend(fig, axes, [_published_proxy()] if published_drawn else ())
    return PlotPaths(_save(fig, outdir, name, formats))


# --- 3. runtime vs accuracy: accuracy against the relative step cost ------------------------

def _runtime(d: _Data, outdir, formats) -> PlotPaths:
    from matplotlib.lines import Line2D

    name = "runtime_vs_accuracy"
    if not len(d.agg):
        return _skip(name, "no finished runs")
    a = d.agg[d.agg["seconds_per_epoch_mean"].notna()]
    refs = {}
    for s in a["setting"].unique():
        b = a[(a["setting"] == s) & a["baseline"].astype(bool)]
        if len(b):
            refs[s] = b.sort_values(["n", "test_acc_mean"], ascending=False).iloc[0]
    if not refs:
        return _skip(name, "no baseline (variant none) run with seconds_per_epoch to compare against")
    settings = sorted(refs)
    sam_rows = a[a["setting"].isin(settings) & ~a["baseline"].astype(bool)]
    variants = sorted(sam_rows["variant_label"].unique(), key=variant_sort_key)
    vmarkers = dict(zip(variants, ("o", "s", "^", "D", "v", "P", "X", "h", "<", ">") * 3))
    fig, axes = _figure(len(settings))
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
            ax.errorbar([x], [r["test_acc_mean"]], xerr=_nz([xerr]), yerr=_nz([r["test_acc_std"]]),
                        color=color, marker="o" if base else vmarkers[r["variant_label"]], ms=rho_size(r, several),
                        mec="black" if base else color, mew=0.6, ls="none", alpha=0.9,
                        zorder=3)
            rho_label(ax, x, r["test_acc_mean"], r, color, several)
        ax.axvline(1.0, color=BASELINE_COLOR, ls=":", lw=0.8, zorder=0)
        ax.set_xlabel(f"time per epoch relative to {ref['variant_label']} (×)")
        ax.set_ylabel(ACC_LABEL)
        _title(ax, f"{s} ({ref['variant_label']}: {base_spe:.3g} s/epoch)")
    extra = [(Line2D([], [], color=c, marker="o", ls="none", ms=5), lab) for lab, c in masks_seen.items()]
    if len(variants) > 1:
        extra += [(Line2D([], [], color="#777777", marker=m, ls="none", ms=5, mfc="none"), v)
                  for v, m in vmarkers.items()]
    _legend(fig, axes, extra)
    return PlotPaths(_save(fig, outdir, name, formats))


# --- public API --------------------------------------------------------------------------

def _run(fn, data, outdir, formats) -> PlotPaths:
    import matplotlib

    with matplotlib.rc_context(STYLE):
        return fn(_prepare(data), outdir, tuple(formats))


def plot_accuracy_vs_sparsity(data, outdir, formats=FORMATS) -> PlotPaths:
    """Test accuracy vs fraction of parameters perturbed (log x), one line per mask.

    One panel per setting (model / dataset), one figure per SAM variant. Each point is a
    mask × sparsity at its best rho (error bars: std over seeds); norm_only is a large
    annotated star. Grey band: the SGD baseline (mean ± std); blue band: dense SAM (mask all)
    at its best rho.
    """
    return _run(_acc_vs_sparsity, data, outdir, formats)


def plot_rho_sweeps(data, outdir, formats=FORMATS) -> PlotPaths:
    """Test accuracy vs rho (log x), one line per method, one panel per setting × variant.

    Error bars: std over seeds; methods are dodged slightly along x so bars do not overlap;
    the grey band is the baseline (mean ± std). Skipped when no method was run at >= 2 rhos.
    """
    return _run(_rho_sweep, data, outdir, formats)


def plot_runtime_vs_accuracy(data, outdir, formats=FORMATS) -> PlotPaths:
    """Test accuracy against the relative step cost: seconds per training epoch over the
    baseline's (same setting, so the same number of steps per epoch), error bars std over seeds.

    One point per configuration (every rho), coloured by mask, marker by SAM variant: the
    figure of a variants x masks suite (suites/variants_fmnist.yaml). Costs compare only between
    runs that did not share a device.
    """
    return _run(_runtime, data, outdir, formats)


def plot_norm_gamma(data, outdir, formats=FORMATS) -> PlotPaths:
    """Ridge plot of final norm-layer weights γ: a density (Gaussian KDE) per method at its best
    rho (seeds pooled), stacked, with its median; one panel per setting × variant.

    Only runs that saved ``norm_gamma`` count; skipped when none did.
    """
    from analysis import science

    return _run(science.gamma_ridge, data, outdir, formats)


def plot_gamma_violin(data, outdir, formats=FORMATS) -> PlotPaths:
    """Violins of final norm-layer weights γ per method at its best rho (quartiles inside)."""
    from analysis import science

    return _run(science.gamma_violin, data, outdir, formats)


def plot_sharpness(data, outdir, formats=FORMATS) -> PlotPaths:
    """Test accuracy against each sharpness measure (one panel per measure, colour = mask,
    marker = variant, a point per configuration), and each measure against the fraction of
    parameters perturbed (best rho per method). Skipped when no run has ``sharpness``."""
    import matplotlib

    from analysis import science

    out = PlotPaths()
    with matplotlib.rc_context(STYLE):
        d = _prepare(data)
        for fn in (science.sharpness_vs_accuracy, science.sharpness_vs_sparsity):
            out.extend_from(fn(d, outdir, tuple(formats)))
    return out


def plot_all(folder_or_df, outdir: str | os.PathLike, formats=FORMATS) -> PlotPaths:
    """Draw every figure into ``outdir``; returns the written paths (``.skipped``: what was not)."""
    import matplotlib

    from analysis import science

    out = PlotPaths()
    with matplotlib.rc_context(STYLE):
        d = _prepare(folder_or_df)
        for fn in (_acc_vs_sparsity, _rho_sweep, _runtime) + science.FIGURES:
            out.extend_from(fn(d, outdir, tuple(formats)))
    for k, reason in out.skipped.items():
        log.warning("analysis.plot_all: %s not drawn: %s", k, reason)
    return out
