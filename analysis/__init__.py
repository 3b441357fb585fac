"""sambench result analysis: read results folders, aggregate over seeds, plot, tabulate.

Reads files only (config.json, metrics.jsonl, result.json); never imports torch, bench or masks.
Submodules are imported on first use, so ``import analysis`` is instant::

    import analysis
    df = analysis.collect("results/")            # one row per run, any status
    agg = analysis.aggregate(df)                 # mean/std/n over seeds per configuration
    sel = analysis.select(df, "val")             # each method's configuration chosen on validation
    diff = analysis.paired_difference(df)        # seed-paired diff vs dense SAM, both at their chosen rho
    print(analysis.compare(df, "norm_only", "all"))   # one paired difference with its CI
    paths = analysis.plot_all(df, "figures/")    # PNG + PDF; paths.skipped says what was not drawn
    print(analysis.table(df, fmt="markdown"))    # or fmt="latex", layout="rho", select="test" (oracle)
    print(analysis.claims_text(analysis.claims(df)))  # the SAM-ON paper's claims as verdicts
    analysis.write_csv(agg, "agg.csv")
    analysis.write_report("results/", "report.html")   # one self-contained HTML page

Every output that shows one configuration per method says which selection rule chose it
(analysis.selection; docs/protocol.md): ``val`` by default when the runs hold out a validation
split (``val_split``), else ``test``, labelled ORACLE wherever its numbers appear.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "collect": "loading",
    "write_csv": "loading",
    "aggregate": "stats",
    "paired_difference": "comparisons",
    "best_rho": "selection",
    "select": "selection",
    "choose": "selection",
    "mark_selection": "selection",
    "parse_rule": "selection",
    "resolve_rule": "selection",
    "SelectionError": "selection",
    "RULES": "selection",
    "claims": "paper_claims",
    "claims_text": "paper_claims",
    "CLAIMS": "paper_claims",
    "holm": "stats",
    "METRICS": "stats",
    "compare": "comparisons",
    "CompareError": "comparisons",
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
