"""Science figures: sharpness against accuracy and against the perturbed fraction, and the
distribution of the normalization layers' γ per method (ridge and violin plots).

The sharpness columns are ``sharpness.<measure>`` (collected from result.json["sharpness"],
written by ``sambench sharpness`` or a suite's ``sharpness:`` block): the Hessian's largest
eigenvalue and trace over all parameters and over the norm layers, and worst-case m-sharpness
per norm, adaptivity and radius. Every function takes the prepared data of analysis.plots and
returns a PlotPaths (analysis.figures); analysis.plots.plot_all draws them all. Where a figure shows
one configuration per method, it is the one the selection rule chose (its title says which).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import figures
from analysis.labels import (
    BASELINE_COLOR,
    SHARPNESS_PREFIX,
    is_missing,
    key_columns,
    mask_color,
    mask_marker,
    method_sort_key,
    rho_label,
    rho_size,
    several_rhos,
    slug,
    variant_sort_key,
)
from analysis.stats import done_runs, sharpness_columns

VARIANT_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h", "<", ">")
_HESSIAN_TITLES = {
    "hessian_max_eig": "Hessian λ_max, all parameters",
    "hessian_trace": "Hessian trace, all parameters",
    "hessian_max_eig_norm": "Hessian λ_max, norm-layer parameters",
    "hessian_trace_norm": "Hessian trace, norm-layer parameters",
}


def measure_title(col: str) -> str:
    """"sharpness.msharp_linf_adaptive_rho0.003" -> "m-sharpness ℓ∞ adaptive, ρ=0.003"."""
    key = col[len(SHARPNESS_PREFIX):] if col.startswith(SHARPNESS_PREFIX) else col
    if key in _HESSIAN_TITLES:
        return _HESSIAN_TITLES[key]
    parts = key.split("_")
    if len(parts) == 4 and parts[0] == "msharp" and parts[3].startswith("rho"):
        norm = {"linf": "ℓ∞", "l2": "ℓ2"}.get(parts[1], parts[1])
        return f"worst-case m-sharpness, {norm} {parts[2]}, ρ={parts[3][3:]}"
    return key


def measure_axis(col: str) -> str:
    """A short axis label: "Hessian λ_max", "Hessian trace" or "m-sharpness" (higher = sharper)."""
    key = col[len(SHARPNESS_PREFIX):] if col.startswith(SHARPNESS_PREFIX) else col
    if key.startswith("hessian_"):
        return ("Hessian λ_max" if "max_eig" in key else "Hessian trace") + " (higher = sharper)"
    return "m-sharpness (higher = sharper)"


def _measures(d) -> list[str]:
    """Sharpness columns with at least one finished configuration holding a value."""
    return [c for c in sharpness_columns(d.raw) if f"{c}_mean" in d.agg and d.agg[f"{c}_mean"].notna().any()]


def _log_if_spread(ax, values, axis: str = "x") -> None:
    v = np.asarray([x for x in values if not is_missing(x)], dtype=float)
    if len(v) and (v > 0).all() and v.max() / v.min() > 20:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def _variant_markers(rows: pd.DataFrame) -> dict[str, str]:
    variants = sorted(rows["variant_label"].unique(), key=variant_sort_key)
    return dict(zip(variants, VARIANT_MARKERS * 3))


# --- accuracy against each sharpness measure --------------------------------------------------

def sharpness_vs_accuracy(d, outdir, formats) -> list:
    """One figure per setting; one panel per measure; a point per configuration (every rho)."""
    from matplotlib.lines import Line2D

    name = "sharpness_vs_accuracy"
    measures = _measures(d)
    if not measures:
        return figures.skip(name, "no run has sharpness measures (sambench sharpness RUN_DIR...)")
    out = figures.PlotPaths()
    settings = sorted(d.agg["setting"].unique())
    for s in settings:
        rows = d.agg[(d.agg["setting"] == s) & d.agg[f"{d.acc_col}_mean"].notna()]
        cols = [c for c in measures if rows[f"{c}_mean"].notna().any()]
        if not cols:
            continue
        vmarkers = _variant_markers(rows)
        fig, axes = figures.figure(len(cols), ncols_max=2 if len(cols) <= 4 else 3)
        seen: dict[str, str] = {}
        for ax, c in zip(axes, cols):
            pts = rows[rows[f"{c}_mean"].notna()]
            several = several_rhos(pts)
            for _, r in pts.iterrows():
                base = bool(r["baseline"])
                mask = "none" if base else str(r["mask"])
                color = BASELINE_COLOR if base else d.line_colors.get(r["mask_label"], mask_color(mask))
                seen.setdefault(r["variant_label"] if base else r["mask_label"], color)
                ax.errorbar([r[f"{c}_mean"]], [r[f"{d.acc_col}_mean"]], xerr=figures.nz([r[f"{c}_std"]]),
                            yerr=figures.nz([r[f"{d.acc_col}_std"]]), color=color, ls="none", alpha=0.9,
                            marker=vmarkers[r["variant_label"]], ms=rho_size(r, several),
                            mec="black" if base else color,
                            mew=0.6, zorder=3)
                rho_label(ax, r[f"{c}_mean"], r[f"{d.acc_col}_mean"], r, color, several)
            _log_if_spread(ax, pts[f"{c}_mean"])
            ax.set_xlabel(measure_axis(c))
            ax.set_ylabel(figures.ACC_LABEL)
            figures.title(ax, measure_title(c), width=40)
        extra = [(Line2D([], [], color=col, marker="o", ls="none", ms=5), lab) for lab, col in seen.items()]
        if len(vmarkers) > 1:
            extra += [(Line2D([], [], color="#777777", marker=m, ls="none", ms=5, mfc="none"), v)
                      for v, m in vmarkers.items()]
        figures.suptitle(fig, f"{s}: test accuracy against sharpness (mean ± std over seeds; each point one "
                              "configuration)")
        figures.legend(fig, axes, extra)
        stem = name if len(settings) == 1 else f"{name}_{slug(s)}"
        out.extend(figures.save(fig, outdir, stem, formats))
    if not out:
        out.skipped[name] = "no setting with both accuracy and sharpness"
    return out


# --- sharpness against the fraction of parameters perturbed -------------------------------------

def sharpness_vs_sparsity(d, outdir, formats) -> list:
    """One figure per setting (x variant when several); one panel per measure; best-rho points."""
    name = "sharpness_vs_sparsity"
    measures = _measures(d)
    if not measures:
        return figures.skip(name, "no run has sharpness measures (sambench sharpness RUN_DIR...)")
    out = figures.PlotPaths()
    nb = d.best[~d.best["baseline"].astype(bool) & (d.best["perturbed_fraction_mean"] > 0)]
    panels = sorted({(s, v) for s, v in zip(nb["setting"], nb["variant_label"])},
                    key=lambda sv: (sv[0], variant_sort_key(sv[1])))
    for s, v in panels:
        pts = nb[(nb["setting"] == s) & (nb["variant_label"] == v)]
        cols = [c for c in measures if pts[f"{c}_mean"].notna().any()]
        if not cols:
            continue
        fig, axes = figures.figure(len(cols), ncols_max=2 if len(cols) <= 4 else 3)
        b = figures.baseline_row(d, s)
        for ax, c in zip(axes, cols):
            if b is not None and not is_missing(b.get(f"{c}_mean")):
                figures.band(ax, b[f"{c}_mean"], b.get(f"{c}_std"), BASELINE_COLOR,
                            f"{b['variant_label']} baseline (mean ± std)")
            groups = sorted(pts[pts[f"{c}_mean"].notna()].groupby("mask_label", sort=False),
                            key=lambda kv: method_sort_key(kv[1]["mask"].iloc[0], None, kv[0], False))
            for label, grp in groups:
                grp = grp.sort_values("perturbed_fraction_mean")
                mask = str(grp["mask"].iloc[0])
                ax.errorbar(grp["perturbed_fraction_mean"], grp[f"{c}_mean"], yerr=figures.nz(grp[f"{c}_std"]),
                            color=d.line_colors.get(label, mask_color(mask)), marker=mask_marker(mask),
                            ms=9 if mask == "norm_only" else 4.5, mec="black" if mask == "norm_only" else None,
                            mew=0.6, label=label, zorder=3)
            figures.fraction_axis(ax, pts["perturbed_fraction_mean"])
            _log_if_spread(ax, pts[f"{c}_mean"], axis="y")
            ax.set_ylabel(measure_axis(c))
            figures.title(ax, measure_title(c), width=40)
        figures.suptitle(fig, f"{v} — {s}: sharpness of the trained model against the fraction of parameters "
                              f"perturbed (each method at its chosen ρ, {d.rule.short}; mean ± std over seeds)")
        figures.legend(fig, axes)
        stem = name if len(panels) == 1 else f"{name}_{slug(s)}_{slug(v)}"
        out.extend(figures.save(fig, outdir, stem, formats))
    if not out:
        out.skipped[name] = "no SAM configuration with sharpness and a measured perturbed fraction"
    return out


# --- γ of the normalization layers --------------------------------------------------------------

def _has_values(v) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0


def gamma_panels(d):
    """(panels [(setting, variant or None)], {method key: pooled γ values}, best rows) or a skip reason."""
    if "norm_gamma" not in d.raw.columns or not d.raw["norm_gamma"].map(_has_values).any():
        return "no run saved norm_gamma"
    done, _, _ = done_runs(d.raw, key_columns(d.raw))
    done = done[done["norm_gamma"].map(_has_values)]
    if not len(done) or not len(d.best):
        return "no finished run saved norm_gamma"
    values: dict[str, list] = {}
    for k, g in zip(done["_key"], done["norm_gamma"]):
        values.setdefault(k, []).extend(float(x) for x in g if x is not None)
    best = d.best[d.best["_key"].isin(values)]
    if not len(best):
        return "norm_gamma saved only by configurations the selection rule did not choose"
    nb = best[~best["baseline"].astype(bool)]
    panels = sorted({(s, v) for s, v in zip(nb["setting"], nb["variant_label"])},
                    key=lambda sv: (sv[0], variant_sort_key(sv[1])))
    if not panels:  # only baselines saved it
        panels = sorted({(s, None) for s in best["setting"]})
    return panels, values, best


def _panel_rows(best: pd.DataFrame, s: str, v) -> pd.DataFrame:
    rows = best[(best["setting"] == s) & ((best["variant_label"] == v) | best["baseline"].astype(bool))]
    return rows.iloc[sorted(range(len(rows)), key=lambda i: method_sort_key(
        rows["mask"].iat[i], rows["sparsity"].iat[i] if "sparsity" in rows else None,
        rows["method"].iat[i], bool(rows["baseline"].iat[i])))]


def _density(x: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Gaussian KDE (Scott's bandwidth) of x on grid; a narrow bump when x has no spread."""
    x = x[np.isfinite(x)]
    sd = x.std(ddof=1) if len(x) > 1 else 0.0
    bw = 1.06 * sd * len(x) ** (-1 / 5) if sd > 0 else (grid[-1] - grid[0]) / 100 or 1e-3
    z = (grid[:, None] - x[None, :]) / bw
    return np.exp(-0.5 * z * z).sum(1) / (len(x) * bw * np.sqrt(2 * np.pi))


def gamma_ridge(d, outdir, formats) -> list:
    """One ridge (a filled density per method, stacked, with its median) per setting × variant."""
    name = "norm_gamma"
    prepared = gamma_panels(d)
    if isinstance(prepared, str):
        return figures.skip(name, prepared)
    panels, values, best = prepared
    most = max(len(_panel_rows(best, s, v)) for s, v in panels)
    fig, axes = figures.figure(len(panels))
    panel_rows = -(-len(panels) // figures.MAX_COLS)
    fig.set_figheight(panel_rows * max(figures.PANEL_H, 0.8 + 0.3 * most))  # room for one ridge per method
    for ax, (s, v) in zip(axes, panels):
        rows = _panel_rows(best, s, v)
        allv = np.concatenate([np.asarray(values[k], dtype=float) for k in rows["_key"]])
        lo, hi = np.nanpercentile(allv, 0.5), np.nanpercentile(allv, 99.5)
        pad = 0.08 * (hi - lo or 1.0)
        grid = np.linspace(lo - pad, hi + pad, 300)
        n = len(rows)
        for i, (_, r) in enumerate(rows.iterrows()):
            x = np.asarray(values[r["_key"]], dtype=float)
            dens = _density(x, grid)
            dens = 0.9 * dens / dens.max() if dens.max() > 0 else dens
            y0 = n - 1 - i
            color = d.colors.get(r["method"], BASELINE_COLOR)
            ax.fill_between(grid, y0, y0 + dens, color=color, alpha=0.55, lw=0, zorder=2 + i)
            ax.plot(grid, y0 + dens, color=color, lw=1.0, zorder=2 + i)
            med = float(np.median(x))
            ax.plot([med, med], [y0, y0 + dens[np.abs(grid - med).argmin()]], color="black", lw=0.8,
                    zorder=3 + i)
        ax.set_yticks(range(n))
        ax.set_yticklabels(list(reversed(list(rows["method"]))))
        ax.set_ylim(-0.1, n)
        ax.set_xlabel("final norm-layer γ (tick: median)", loc="right")
        figures.title(ax, (f"{v} — {s}" if v else s) + f"; {d.rule.short}")
    return figures.PlotPaths(figures.save(fig, outdir, name, formats))


def gamma_violin(d, outdir, formats) -> list:
    """Violins of γ per method (quartiles inside), one panel per setting × variant."""
    import seaborn as sns

    name = "norm_gamma_violin"
    prepared = gamma_panels(d)
    if isinstance(prepared, str):
        return figures.skip(name, prepared)
    panels, values, best = prepared
    most = max(len(_panel_rows(best, s, v)) for s, v in panels)
    fig, axes = figures.figure(len(panels))
    fig.set_figheight(-(-len(panels) // figures.MAX_COLS) * max(figures.PANEL_H, 0.8 + 0.3 * most))
    for ax, (s, v) in zip(axes, panels):
        rows = _panel_rows(best, s, v)
        long = pd.DataFrame([(m, x) for m, k in zip(rows["method"], rows["_key"]) for x in values[k]],
                            columns=["method", "gamma"])
        order = list(dict.fromkeys(rows["method"]))
        palette = {m: d.colors.get(m, BASELINE_COLOR) for m in order}
        sns.violinplot(data=long, y="method", x="gamma", hue="method", order=order, hue_order=order,
                       palette=palette, inner="quart", density_norm="width", cut=0, linewidth=0.7,
                       legend=False, ax=ax)
        ax.set_ylabel("")
        ax.set_xlabel("final norm-layer γ (lines: quartiles)", loc="right")
        figures.title(ax, (f"{v} — {s}" if v else s) + f"; {d.rule.short}")
    return figures.PlotPaths(figures.save(fig, outdir, name, formats))


FIGURES = (sharpness_vs_accuracy, sharpness_vs_sparsity, gamma_ridge, gamma_violin)
