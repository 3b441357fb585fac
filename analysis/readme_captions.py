"""The README's demo captions, from a collected frame of the demo's runs and their recorded
numbers (see :mod:`analysis.readme_numbers`, which writes and checks them): each method at the ρ
sambench table's default rule chooses, the seed-paired differences, where the oracle would have
chosen otherwise, the sharpness correlations and the --compare example. Files only: no torch.
"""
from __future__ import annotations

GLOSSARY = {"all": "dense SAM", "norm_only": "SAM-ON"}  # how the caption names two masks


def _rho(r) -> str:
    from analysis.labels import plain

    value = plain(r["rho"])
    return f"{value:g}" if isinstance(value, float) else str(value)


def _name(r, with_rho: bool = True) -> str:
    """``SGD``, ``dense SAM (`all`, ρ = 0.1)``, ```random@match:norm_only` (ρ = 0.5)``."""
    if bool(r["baseline"]):
        return str(r["variant_label"])
    variant = "" if r["variant_label"] == "SAM" else f"{r['variant_label']} "
    known = GLOSSARY.get(str(r["method"])) if variant == "" else None
    rho = f", ρ = {_rho(r)}" if with_rho else ""
    if known:
        return f"{known} (`{r['method']}`{rho})"
    return f"{variant}`{r['method']}`" + (f" (ρ = {_rho(r)})" if with_rho else "")


def _setting(numbers: dict) -> str:
    """``resnet20 on digits with 40% of the training labels ..., 20 epochs without augmentation``."""
    cfg = numbers["common_config"]
    text = f"{cfg.get('model', 'several models')} on {cfg.get('dataset', 'several data sets')}"
    noise = cfg.get("label_noise")
    if noise:
        text += (f" with {noise:.0%} of the training labels replaced by another class "
                 f"({cfg.get('label_noise_type', 'symmetric')} noise; test labels clean)")
    if "epochs" in cfg:
        text += f", {cfg['epochs']} epochs"
    if cfg.get("augment") is False:
        text += " without augmentation"
    return text


def _machine_text(numbers: dict) -> str:
    m = numbers["machine"]
    cores = f"{m['cores']}-core " if m.get("cores") else ""
    cpu = f" ({m['cpu']})" if m.get("cpu") else ""
    threads = ", ".join(map(str, m.get("threads_per_run") or [])) or "?"
    load = m.get("load_average_15min")
    shared = (f", shared with other work (15-minute load average {load:g} on {m['cores']} cores)"
              if load and m.get("cores") and load > m["cores"] else "")
    return (f"a {cores}{m.get('device_name') or 'CPU'} machine{cpu}{shared}, torch {m.get('torch')}, "
            f"{threads} CPU thread(s) per run")


def _diff(a, b, digits: int = 1) -> str:
    from analysis.stats import by_seed, paired

    res = paired(by_seed(a["test_acc_by_seed"]), by_seed(b["test_acc_by_seed"]))
    if res["n"] < 2:
        return f"{res['mean']:+.{digits}f} (n={res['n']})"
    return f"{res['mean']:+.{digits}f} [{res['low']:+.{digits}f}, {res['high']:+.{digits}f}]"


def _best(df, rule=None):
    """Each method at the ρ the rule chooses (default: sambench table's default rule), in table order."""
    from analysis.labels import method_sort_key, variant_sort_key
    from analysis.selection import choose, resolve_rule
    from analysis.stats import aggregate

    best = choose(aggregate(df), resolve_rule(rule, df))
    order = sorted(range(len(best)), key=lambda i: (
        str(best["setting"].iat[i]), variant_sort_key(str(best["variant_label"].iat[i])),
        method_sort_key(best["mask"].iat[i], best["sparsity"].iat[i] if "sparsity" in best else None,
                        str(best["method"].iat[i]), bool(best["baseline"].iat[i]))))
    return best.iloc[order]


def _differences(best) -> list[str]:
    """Dense SAM of each variant minus the baseline; every other method minus dense SAM of its variant."""
    out = []
    for _, rows in best.groupby("setting", sort=False):
        base = rows[rows["baseline"].astype(bool)]
        for _, r in rows[~rows["baseline"].astype(bool)].iterrows():
            dense = rows[(rows["mask"] == "all") & (rows["variant_label"] == r["variant_label"])
                         & ~rows["baseline"].astype(bool)]
            if r["mask"] == "all" and len(base):
                out.append(f"{_name(r, False)} − {_name(base.iloc[0])} {_diff(r, base.iloc[0])}")
            elif r["mask"] != "all" and len(dense):
                out.append(f"{_name(r, False)} − {_name(dense.iloc[0], False)} {_diff(r, dense.iloc[0])}")
    return out


def _rule_text(df) -> str:
    """How each method's rho was chosen: the default rule of sambench table (docs/protocol.md)."""
    from analysis.selection import resolve_rule

    rule = resolve_rule(None, df)
    if rule.name == "val":
        return "at the ρ with the best mean validation accuracy (`--select val`, the default)"
    return f"at the ρ chosen by `--select {rule.name}`" + (" (the oracle: chosen on the test set)" if rule.oracle else "")


def oracle_text(df) -> str:
    """How the validation rule's numbers stand against the oracle's (each ρ chosen on test accuracy)."""
    from analysis.selection import resolve_rule

    if resolve_rule(None, df).name != "val":
        return ""
    def key(r):
        return str(r["setting"]), str(r["variant_label"]), str(r["method"])

    oracle = {key(t): t for _, t in _best(df, "test").iterrows()}
    several = _best(df)["variant_label"].nunique() > 1
    moved = []
    for _, v in _best(df).iterrows():
        t = oracle.get(key(v))
        if t is not None and _rho(v) != _rho(t):
            moved.append(f"{_name(v, False)}{f' ({v.variant_label})' if several else ''}: ρ = {_rho(t)}, "
                         f"{t['test_acc_mean']:.1f}% against {v['test_acc_mean']:.1f}% at ρ = {_rho(v)}")
    n_rhos = df[~df["baseline"].astype(bool)].groupby("method")["rho"].nunique() if "method" in df else None
    if not moved:
        why = " (one ρ per method)" if n_rhos is not None and len(n_rhos) and int(n_rhos.max()) == 1 else ""
        return f"Choosing on the test set instead (the oracle, `--select test`) picks the same ρ{why}. "
    return f"Choosing on the test set instead (the oracle, `--select test`) would pick {'; '.join(moved)}. "


def accuracy_caption(numbers: dict, df) -> str:
    best = _best(df)
    chosen = _rule_text(df)
    several = best["setting"].nunique() > 1
    accs = [f"{_name(r)}{f' [{r.setting}]' if several else ''} {r['test_acc_mean']:.1f} ± "
            f"{r['test_acc_std']:.1f}%" for _, r in best.iterrows()]
    train = [f"{_name(r, False)} {r['train_acc_mean']:.0f}%" for _, r in best.iterrows()]
    n_seeds = df["seed"].nunique()
    noisy = " (on the training labels, the replaced ones included)" if numbers["common_config"].get("label_noise") else ""
    base = best[best["baseline"].astype(bool)]
    bands = (f"Grey band: {_name(base.iloc[0])}; blue band: dense SAM at its chosen ρ (mean ± std over seeds). "
             if len(base) else "Blue band: dense SAM at its chosen ρ (mean ± std over seeds). ")
    commit = numbers["commit"] if isinstance(numbers["commit"], str) else ", ".join(numbers["commit"])
    return (f"*`make demo` (suites/{numbers['suite']}.yaml): {_setting(numbers)}; {n_seeds} seeds, "
            f"{len(df)} runs, {numbers['wall_time_s']:.0f} s from the first run submitted to the last "
            f"result on {_machine_text(numbers)}. Test accuracy, mean ± std over seeds, each method {chosen}: "
            f"{'; '.join(accs)}. Seed-paired differences with 95% intervals (Student's t, n − 1 "
            f"degrees of freedom): {'; '.join(_differences(best))}. {oracle_text(df)}"
            f"Train accuracy{noisy}: {', '.join(train)}. {bands}Generated by `make readme-figures` from the runs of "
            f"commit `{commit[:12]}` (docs/demo_numbers.json); `make check-readme` reruns the demo and "
            f"compares.*")


def sharpness_caption(numbers: dict, df) -> str | None:
    """Spearman rank correlation of test accuracy with each sharpness measure over the configurations."""
    from analysis.science import measure_title
    from analysis.stats import aggregate, sharpness_columns

    cols = sharpness_columns(df)
    if not cols:
        return None
    agg = aggregate(df)
    parts = []
    for c in cols:
        pair = agg[["test_acc_mean", f"{c}_mean"]].dropna()
        if len(pair) >= 3:
            parts.append(f"{measure_title(c)} {pair.corr(method='spearman').iloc[0, 1]:+.2f}")
    samples = (numbers["common_config"].get("sharpness") or {}).get("n_samples")
    where = f" on {samples} training samples" if samples else ""
    return (f"*The same runs' sharpness after training{where}, each point one configuration (every ρ). "
            f"Spearman rank correlation of test accuracy with each measure over the {len(agg)} "
            f"configurations: {'; '.join(parts)} (negative: the more accurate, the flatter).*")


def compare_pair(df) -> tuple[str, str] | None:
    """The README's --compare example: SAM-ON against dense SAM, each at its chosen ρ (first variant)."""
    best = _best(df)
    sam = best[~best["baseline"].astype(bool)]
    for _, r in sam[sam["mask"] == "norm_only"].iterrows():
        dense = sam[(sam["mask"] == "all") & (sam["variant_label"] == r["variant_label"])
                    & (sam["setting"] == r["setting"])]
        if len(dense):
            return f"{r['method']}@{_rho(r)}", f"{dense.iloc[0]['method']}@{_rho(dense.iloc[0])}"
    return None
