"""Selection rules: which configuration (ρ, and any other tuned field) stands for a method.

A *method* is one (setting, SAM variant, mask × sparsity × mask options) of ``aggregate``'s rows; its
configurations differ only in the tuned fields (``rho`` by default). A rule picks one of them from
the seed means of a *selection metric* and reports another metric of the one it picked:

=============  ===========================================  ===========================================
rule           chooses by (mean over seeds)                 reports
=============  ===========================================  ===========================================
``val``        final-epoch validation accuracy (val_acc)    final-epoch test accuracy (test_acc)
``val-early``  best-epoch validation accuracy               test accuracy at each run's best-validation
               (best_val_acc)                               epoch (test_acc_at_best_val): early stopping
``test``       final-epoch test accuracy: the ORACLE        test_acc (optimistic: chosen on what it reports)
``last``       nothing: each method must have one           test_acc
               configuration (the suite fixed it a priori)
``fixed:...``  nothing: the configuration with the given    test_acc
               values, ``fixed:rho=0.1`` for every method or
               ``fixed:all:rho=0.1,norm_only:rho=1`` per mask
=============  ===========================================  ===========================================

Ties: a configuration with a diverged seed ranks below every one without (a ρ that blows up is not
chosen for its surviving seeds), then the better mean, then more finished seeds, then the smaller ρ.
Baselines (nothing to tune) take the configuration with the most seeds. The default rule is ``val``
when the runs hold out a validation split, else ``test``, labelled oracle wherever it is shown.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.labels import METHOD_FIELDS, add_labels, fmt_value, is_missing, key_columns, plain
from analysis.loading import ensure_frame
from analysis.stats import aggregate

GROUP = ["setting", "variant_label", "method"]
DEFAULT_TUNED = ("rho",)


class SelectionError(ValueError):
    """A selection rule that cannot be read or applied (names the rule and what is wrong)."""


@dataclass(frozen=True)
class Rule:
    name: str                 # as written: val, val-early, test, last, fixed:...
    score: str | None         # the metric whose seed mean chooses; None: nothing is chosen on data
    report: str               # the metric reported for the chosen configuration
    oracle: bool = False      # chosen on the number it reports (the test set)
    fixed: tuple = ()         # ((mask or None, field, value), ...) of fixed:...

    @property
    def tag(self) -> str:
        """What ``selected_by`` columns hold: the name, with "(oracle)" for the test rule."""
        return f"{self.name} (oracle)" if self.oracle else self.name

    @property
    def short(self) -> str:
        """For titles and cell notes: "ρ by val", "ρ by test: ORACLE", "ρ fixed (rho=1)"."""
        if self.oracle:
            return "ρ by test: ORACLE"
        if self.fixed:
            return f"ρ fixed ({self.name[len('fixed:'):]})"
        return "ρ as run (last)" if self.score is None else f"ρ by {self.name}"

    def describe(self) -> str:
        """One sentence for captions, notes and the report."""
        return DESCRIPTIONS.get(self.name) or (
            f"fixed ({self.name[len('fixed:'):]}): each method at the given value, chosen before seeing any "
            "result; test accuracy at the final epoch")


DESCRIPTIONS = {
    "val": "val: per method, the ρ with the best mean final-epoch validation accuracy (a held-out part of the "
           "training set); test accuracy at the final epoch of that ρ",
    "val-early": "val-early: per method, the ρ with the best mean best-epoch validation accuracy; test accuracy "
                 "at each run's best-validation epoch (early stopping by validation)",
    "test": "test — ORACLE: per method, the ρ with the best mean final-epoch test accuracy, the number it "
            "reports; optimistic, most for the methods tuned over the most values",
    "last": "last: no choice; each method's one configuration as the suite fixed it; test accuracy at the "
            "final epoch",
}
RULES = {"val": Rule("val", "val_acc", "test_acc"),
         "val-early": Rule("val-early", "best_val_acc", "test_acc_at_best_val"),
         "test": Rule("test", "test_acc", "test_acc", oracle=True),
         "last": Rule("last", None, "test_acc")}
NAMES = ("val", "val-early", "test", "last", "fixed:FIELD=VALUE[,MASK:FIELD=VALUE]")


def _value(text: str):
    try:
        v = float(text)
    except ValueError:
        return text
    return int(v) if v.is_integer() and "." not in text and "e" not in text.lower() else v


def parse_rule(text: str | Rule) -> Rule:
    """``"val"``, ``"val-early"``, ``"test"``, ``"last"`` or ``"fixed:rho=0.1,norm_only:rho=1"``."""
    if isinstance(text, Rule):
        return text
    spec = str(text).strip()
    if spec in RULES:
        return RULES[spec]
    if not spec.startswith("fixed:") or not spec[len("fixed:"):].strip():
        raise SelectionError(f"--select {spec!r}: unknown rule (allowed: {', '.join(NAMES)})")
    items = []
    for part in spec[len("fixed:"):].split(","):
        head, eq, value = part.strip().partition("=")
        mask, _, field = head.rpartition(":")
        if not eq or not field or not value.strip():
            raise SelectionError(f"--select {spec!r}: {part.strip()!r} is not FIELD=VALUE or MASK:FIELD=VALUE")
        items.append((mask or None, field, _value(value.strip())))
    return Rule(spec, None, "test_acc", fixed=tuple(items))


def has_validation(df) -> bool:
    """Whether any finished run holds a validation accuracy (it held out a validation split)."""
    if "val_acc" not in df.columns or "status" not in df.columns:
        return "val_acc_mean" in df.columns and bool(df["val_acc_mean"].notna().any())
    return bool(df.loc[df["status"].astype(str) == "done", "val_acc"].notna().any())


def resolve_rule(select, df) -> Rule:
    """The rule asked for, or the default: ``val`` when the runs hold out a validation split, else
    ``test`` (the oracle, labelled so)."""
    if select is None:
        return RULES["val"] if has_validation(df) else RULES["test"]
    return parse_rule(select)


def check_tuned(df, tuned) -> tuple[str, ...]:
    """The tuned fields: configuration fields of the frame, not the method's own fields nor the setting's
    identity (model, dataset, seed)."""
    tuned = tuple(tuned or DEFAULT_TUNED)
    keys = set(key_columns(df)) | {"rho"}
    for f in tuned:
        if f in METHOD_FIELDS or f.startswith("mask_opts.") or f in ("model", "dataset", "seed", "variant"):
            raise SelectionError(f"--tune {f}: part of the method or the setting, not a hyperparameter to tune")
        if f not in keys:
            raise SelectionError(f"--tune {f}: no such configuration field in these results")
    return tuned


# --- choosing ------------------------------------------------------------------------------------

def _same(a, b) -> bool:
    a, b = plain(a), plain(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return str(a) == str(b)


def _fixed_values(rule: Rule, mask: str) -> dict:
    """The values fixed for a mask: its own (``mask:field=v``) over the global ones (``field=v``)."""
    out = {f: v for m, f, v in rule.fixed if m is None}
    out.update({f: v for m, f, v in rule.fixed if m == mask})
    return out


def _values_text(rows: pd.DataFrame, fields) -> str:
    return "; ".join(f"{f} " + ", ".join(fmt_value(v) for v in sorted({plain(x) for x in rows[f]}, key=str))
                     for f in fields if f in rows)


def rank_candidates(cands: pd.DataFrame, score: str | None, baseline: bool) -> list:
    """Index of the candidates, best first (see the module docstring for the order)."""
    col = f"{score}_mean" if score else None
    vals = cands[col].to_numpy(dtype=float) if col in cands else np.full(len(cands), np.nan)
    sign = -1.0 if score and score.endswith("loss") else 1.0
    diverged = cands["n_diverged"].to_numpy() if "n_diverged" in cands else np.zeros(len(cands))
    n = cands["n"].to_numpy()
    keys = [(int(n[i]) if baseline else 0, diverged[i] == 0, sign * vals[i] if vals[i] == vals[i] else -np.inf,
             int(n[i]), -i) for i in range(len(cands))]
    return [cands.index[i] for i in sorted(range(len(cands)), key=lambda i: keys[i], reverse=True)]


def _pick(grp: pd.DataFrame, rule: Rule, tuned) -> tuple:
    """(index of the chosen row, None) or (None, why nothing was chosen)."""
    first = grp.iloc[0]
    base, cands = bool(first["baseline"]), grp
    if rule.fixed and not base:
        want = _fixed_values(rule, str(first["mask"]))
        unknown = [f for f in want if f not in grp.columns]
        if unknown:
            raise SelectionError(f"--select {rule.name}: no field {', '.join(unknown)} in these results")
        cands = grp[[all(_same(r[f], v) for f, v in want.items()) for _, r in grp.iterrows()]]
        if not len(cands):
            asked = ", ".join(f"{f}={fmt_value(v)}" for f, v in want.items())
            return None, f"not run at {asked} (run at {_values_text(grp, want)})"
    if len(cands) > 1 and rule.score is None and not base:
        raise SelectionError(f"--select {rule.name}: {first['method']} ({first['setting']}, {first['variant_label']}) "
                             f"was run at {_values_text(cands, tuned)}: choose one with --select fixed:FIELD=VALUE, "
                             "or by validation (--select val)")
    if not base and rule.score is not None:
        col = f"{rule.score}_mean"
        if col not in cands or not cands[col].notna().any():
            why = " (these runs hold out no validation split: val_split)" if rule.score.startswith(
                ("val", "best_val")) else ""
            return None, f"no {rule.score}{why}"
        cands = cands[cands[col].notna()]
    return rank_candidates(cands, rule.score, base)[0], None


def _tuned_text(row: pd.Series, tuned) -> str:
    if bool(row["baseline"]):
        return ""
    return ", ".join(f"{'ρ' if f == 'rho' else f}={fmt_value(row[f])}" for f in tuned
                     if f in row and not is_missing(row[f]))


def choose(agg: pd.DataFrame, rule="test", tuned=DEFAULT_TUNED) -> pd.DataFrame:
    """The chosen row of every method of an ``aggregate`` frame, with ``selected_by`` (the rule's tag),
    ``selection_metric``, ``selection_value`` (its seed mean), ``n_candidates`` and ``tuned`` (the chosen
    values, e.g. "ρ=0.1"). ``attrs``: ``rule``, ``tuned`` and ``unselected`` (methods without a
    choice: setting, variant_label, method, reason)."""
    rule = parse_rule(rule)
    tuned = tuple(tuned or DEFAULT_TUNED)
    chosen, sizes, unselected = [], {}, []
    if len(agg):
        for (s, v, m), grp in agg.groupby(GROUP, sort=False):
            idx, reason = _pick(grp, rule, tuned)
            if idx is None:
                unselected.append({"setting": s, "variant_label": v, "method": m, "reason": reason})
                continue
            chosen.append(idx)
            sizes[idx] = len(grp)
    out = agg.loc[sorted(chosen)].copy()
    out["selected_by"] = rule.tag
    out["selection_metric"] = rule.score or "none"
    col = f"{rule.score}_mean" if rule.score else None
    out["selection_value"] = out[col] if col in out else np.nan
    out["n_candidates"] = [sizes[i] for i in out.index]
    out["tuned"] = [_tuned_text(r, tuned) for _, r in out.iterrows()]
    out.attrs = {**agg.attrs, "rule": rule, "tuned": tuned, "unselected": unselected}
    return out


def best_rho(agg: pd.DataFrame, metric: str = "test_acc") -> pd.DataFrame:
    """Per (setting, variant, method): the row with the best mean ``metric`` (the ``test`` rule when
    the metric is a test number: the oracle)."""
    return choose(agg, Rule(f"best {metric}" if metric != "test_acc" else "test", metric, metric,
                            oracle=metric.startswith("test") or metric.startswith("best_test")))


@dataclass
class Selection:
    """A frame prepared under a rule: the runs, their configurations and each method's chosen one."""

    raw: pd.DataFrame | None
    agg: pd.DataFrame
    chosen: pd.DataFrame
    rule: Rule
    tuned: tuple


def is_aggregate(frame) -> bool:
    return isinstance(frame, pd.DataFrame) and "n" in frame.columns and "test_acc_mean" in frame.columns


def select(data, rule=None, tune=None) -> Selection:
    """``data`` (a results folder, a ``collect`` or an ``aggregate`` frame) under a rule (default: see
    :func:`resolve_rule`); ``tune``: the fields chosen by the rule (default ``("rho",)``)."""
    if is_aggregate(data):
        chosen_rule = resolve_rule(rule, data)
        tuned = tuple(tune or DEFAULT_TUNED)
        return Selection(None, data, choose(data, chosen_rule, tuned), chosen_rule, tuned)
    raw = ensure_frame(data)
    tuned = check_tuned(raw, tune) if tune else DEFAULT_TUNED
    published = list(raw.attrs.get("published", []))
    if tuned != DEFAULT_TUNED:
        raw = raw.copy()
        raw.attrs["tuned"] = tuned
        raw = add_labels(raw, force=True)
    raw = add_labels(raw)
    raw.attrs["published"] = published
    chosen_rule = resolve_rule(rule, raw)
    agg = aggregate(raw)
    return Selection(raw, agg, choose(agg, chosen_rule, tuned), chosen_rule, tuned)


def mark_selection(df, rule=None, tune=None) -> pd.DataFrame:
    """A ``collect`` frame with ``selected_by`` (the rule's tag) and ``selected`` (True for the runs of
    each method's chosen configuration) beside every run."""
    from analysis.labels import row_keys

    sel = select(df, rule, tune)
    raw = sel.raw
    keys = row_keys(raw, key_columns(raw))
    picked = set(sel.chosen["_key"]) if "_key" in sel.chosen else set()
    out = raw.assign(selected_by=sel.rule.tag, selected=[k in picked for k in keys])
    out.attrs = dict(raw.attrs)
    return out
