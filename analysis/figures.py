"""What every figure shares (analysis.plots and analysis.science): the prepared data under a
selection rule, the paper-size style, panels, legends, bands, published markers, saving.

Uses matplotlib's object API (``matplotlib.figure.Figure``, rendered by Agg), never pyplot's
global state, so it works headless and does not touch an interactive session's backend.
"""
from __future__ import annotations

import logging
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.labels import is_missing, method_colors, method_sort_key
from analysis.selection import Rule, select

log = logging.getLogger("analysis")

FORMATS = ("png", "pdf")
PANEL_W, PANEL_H, MAX_COLS = 3.4, 2.5, 2
ACC_LABEL = "test accuracy (%)"
PUBLISHED_LABEL = "published (hollow markers)"
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
class Prepared:
    """A results frame ready to draw: the runs, their configurations, each method's configuration
    as the selection ``rule`` chose it (``best``), the palette and the published numbers."""

    raw: pd.DataFrame
    agg: pd.DataFrame
    best: pd.DataFrame
    rule: Rule
    colors: dict = field(default_factory=dict)        # method -> colour (mask colour, shaded)
    line_colors: dict = field(default_factory=dict)   # mask_label -> colour
    published: list = field(default_factory=list)     # reference entries (analysis.reference)

    @property
    def acc_col(self) -> str:
        """The reported accuracy column of the rule (``test_acc``, or the early-stopped one)."""
        return self.rule.report


def prepare(data, select_rule=None, tune=None) -> Prepared:
    """``data`` (a results folder or a collect frame, or a Prepared) under a selection rule."""
    if isinstance(data, Prepared):
        return data
    sel = select(data, select_rule, tune)
    agg = sel.agg
    items, line_items = [], []
    if len(agg):
        order = sorted(range(len(agg)), key=lambda i: method_sort_key(
            agg["mask"].iat[i], agg["sparsity"].iat[i] if "sparsity" in agg else None,
            agg["method"].iat[i], bool(agg["baseline"].iat[i])))
        for i in order:
            base = bool(agg["baseline"].iat[i])
            items.append((agg["method"].iat[i], "none" if base else str(agg["mask"].iat[i])))
            line_items.append((agg["mask_label"].iat[i], "none" if base else str(agg["mask"].iat[i])))
    published = list(sel.raw.attrs.get("published", [])) if sel.raw is not None else []
    return Prepared(sel.raw, agg, sel.chosen, sel.rule, method_colors(items), method_colors(line_items), published)


def skip(name: str, reason: str) -> PlotPaths:
    log.info("plot %s skipped: %s", name, reason)
    return PlotPaths([], {name: reason})


def figure(n: int, ncols_max: int = MAX_COLS, extra_h: float = 0.0):
    """A Figure with n panels (at most ``ncols_max`` per row) and the list of their axes."""
    from matplotlib.figure import Figure

    ncols = max(1, min(n, ncols_max))
    nrows = -(-n // ncols)
    fig = Figure(figsize=(PANEL_W * ncols, PANEL_H * nrows + extra_h), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        fig.delaxes(ax)
    return fig, axes[:n]


def legend(fig, axes, extra=()) -> None:
    """One legend below the panels (each label once); the figure grows by its height."""
    seen, handles, labels = set(), [], []
    for h, lab in [hl for ax in axes for hl in zip(*ax.get_legend_handles_labels())] + list(extra):
        if lab not in seen and not lab.startswith("_"):
            seen.add(lab)
            handles.append(h)
            labels.append(lab)
    if not handles:
        return
    width = fig.get_size_inches()[0]
    per_col = max(1.0, 0.35 + 0.06 * max(len(lab) for lab in labels))
    ncols = max(1, min(len(labels), int(width // per_col)))
    rows = -(-len(labels) // ncols)
    fig.set_figheight(fig.get_figheight() + 0.15 + 0.17 * rows)
    fig.legend(handles, labels, loc="outside lower center", ncols=ncols, frameon=False,
               handlelength=1.8, columnspacing=1.2)


def save(fig, outdir, stem: str, formats) -> list[str]:
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in formats:
        p = outdir / f"{stem}.{ext}"
        fig.savefig(p, format=ext)
        paths.append(str(p))
    return paths


def baseline_row(d: Prepared, setting: str):
    """The baseline (SGD, AdamW, ...) of a setting as the rule chose it, or None."""
    b = d.best[(d.best["baseline"]) & (d.best["setting"] == setting)]
    if not len(b):
        return None
    return b.sort_values(["n", f"{d.acc_col}_mean"], ascending=False).iloc[0]


def band(ax, mean, std, color, label, alpha=0.15, ls="--"):
    """A horizontal line at mean with a band of ± std."""
    if is_missing(mean):
        return
    if not is_missing(std):
        ax.axhspan(mean - std, mean + std, color=color, alpha=alpha, lw=0, zorder=0)
    ax.axhline(mean, color=color, ls=ls, lw=1.0, label=label, zorder=1)


def hollow(ax, x, entry: dict, color: str, marker: str) -> None:
    """A published number as a hollow marker (error bar: its std when published)."""
    yerr = [entry["std"]] if entry.get("std") is not None else None
    ax.errorbar([x], [entry["mean"]], yerr=yerr, color=color, marker=marker, mfc="none", mec=color,
                mew=1.4, ms=10, ls="none", zorder=4, capsize=3, elinewidth=0.8)


def published_proxy():
    from matplotlib.lines import Line2D

    return (Line2D([], [], color="#555555", marker="o", mfc="none", ls="none", ms=8), PUBLISHED_LABEL)


def plain_log_labels(ax) -> None:
    """Decade labels as 0.001 / 0.01 / 0.1 / 1 (no mathtext: readable and fast)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10, numticks=12))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def fraction_axis(ax, fractions) -> None:
    """A log x axis of the fraction of parameters perturbed, from a decade below the smallest to 1."""
    ax.set_xscale("log")
    lo = float(np.nanmin(np.asarray(fractions, dtype=float)))
    ax.set_xlim(10 ** np.floor(np.log10(lo * 0.8)), 1.6)
    plain_log_labels(ax)
    ax.set_xlabel("fraction of parameters perturbed (log scale)")


def rho_ticks(ax, rhos) -> None:
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


def title(ax, text: str, width: int = 46) -> None:
    """Panel title wrapped to the panel's width (3.4 in at 8.5 pt holds about 46 characters)."""
    ax.set_title("\n".join(textwrap.wrap(text, width=width, break_long_words=False)) or text)


def suptitle(fig, text: str) -> None:
    """A figure title wrapped to the figure's width (about 15 characters per inch at 9 pt)."""
    fig.suptitle("\n".join(textwrap.wrap(text, width=int(fig.get_figwidth() * 15))))


def nz(a) -> np.ndarray:
    return np.nan_to_num(np.asarray(a, dtype=float), nan=0.0)
