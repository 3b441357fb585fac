"""sambench result analysis: read results folders, aggregate over seeds, plot, tabulate.

Reads files only (config.json, metrics.jsonl, result.json); never imports torch, bench or masks.
Submodules are imported on first use, so ``import analysis`` is instant::

    import analysis
    df = analysis.collect("results/")            # one row per run, any status
    agg = analysis.aggregate(df)                 # mean/std/n over seeds per configuration
    diff = analysis.paired_difference(df)        # seed-paired diff vs dense SAM at its best rho, 95% t CI
    print(analysis.compare(df, "norm_only@1.0", "all@0.1"))   # one paired difference with its CI
    paths = analysis.plot_all(df, "figures/")    # PNG + PDF; paths.skipped says what was not drawn
    print(analysis.table(df, fmt="markdown"))    # or fmt="latex", layout="rho"
    analysis.write_csv(agg, "agg.csv")
    analysis.write_report("results/", "report.html")   # one self-contained HTML page
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "collect": "loading",
    "write_csv": "loading",
    "aggregate": "stats",
    "paired_difference": "stats",
    "best_rho": "stats",
    "METRICS": "stats",
    "compare": "stats",
    "CompareError": "stats",
    "t_interval": "stats",
    "paired": "stats",
    "sharpness_columns": "stats",
    "plot_sharpness": "plots",
    "plot_gamma_violin": "plots",
    "load_references": "reference",
    "plot_all": "plots",
    "plot_accuracy_vs_sparsity": "plots",
    "plot_rho_sweeps": "plots",
    "plot_runtime_vs_accuracy": "plots",
    "plot_norm_gamma": "plots",
    "PlotPaths": "plots",
    "table": "tables",
    "write_report": "html_report",
    "add_labels": "labels",
    "mask_color": "labels",
    "mask_marker": "labels",
    "config_columns": "labels",
    "key_columns": "labels",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"analysis.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
