"""Selection rules (analysis.selection) and the paper's claims as verdicts (analysis.paper_claims), on a
hand-made folder where validation and test disagree about the best ρ.

Fixture (resnet20 / cifar10, val_split 0.2, seeds 0-2; accuracies chosen so every number is easy to
check by hand):

    SAM  all        ρ=0.05  val 75 76 77   test 86 87 88    <- best on test
    SAM  all        ρ=0.1   val 78 79 80   test 83 84 85    <- best on validation
    SAM  norm_only  ρ=0.5   val 80 81 82   test 88 89.5 90  <- best on validation
    SAM  norm_only  ρ=1     val 79 80 81   test 90 91 92.5  <- best on test
    SAM  norm_only  ρ=2     val 90 91 (seed 2 diverged)     test 70 71: best validation mean, never chosen
    SAM  random@match:norm_only ρ=0.5  val 70 71 72  test 80 80.5 81.2
    ASAM all ρ=1  test 85 86 87;  ASAM norm_only ρ=2  test 80 80.5 82   (SAM-ON worse: contradicted)
    SGD  val 70 71 72  test 80 81 82
    sharpness.hessian_max_eig: SAM norm_only ρ=0.5  2.0 2.5 1.8,  SAM all ρ=0.1  2.1 1.9 2.0
"""
from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import analysis_fixtures as F

VAL = {"val_split": 0.2}


def _run(root, cfg, val, test, status="done", sharpness=None):
    d = F.write_run(root, "sel", F.make_cfg(**VAL, **cfg), status=status, test_acc=test, frac=cfg.pop("_frac", 1.0)
                    if "_frac" in cfg else (0.003 if cfg.get("mask") in ("norm_only", "random") else 1.0),
                    sharpness=sharpness)
    res = json.loads((d / "result.json").read_text())
    if val is not None:
        res.update(val_acc=val, val_loss=1.0, best_val_acc=val + 1, best_val_epoch=5, test_acc_at_best_val=test - 1,
                   val_size=10000)
    (d / "result.json").write_text(json.dumps(res))
    return d


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("sel")
    sam = {"variant": "sam"}
    asam = {"variant": "asam", "variant_opts": {"adaptive": "layerwise"}}
    for seed in range(3):
        _run(root, {"variant": "none", "mask": "none", "seed": seed}, [70, 71, 72][seed], [80, 81, 82][seed])
        _run(root, {**sam, "mask": "all", "rho": 0.05, "seed": seed}, [75, 76, 77][seed], [86, 87, 88][seed])
        _run(root, {**sam, "mask": "all", "rho": 0.1, "seed": seed}, [78, 79, 80][seed], [83, 84, 85][seed],
             sharpness={"hessian_max_eig": [2.1, 1.9, 2.0][seed]})
        _run(root, {**sam, "mask": "norm_only", "rho": 0.5, "seed": seed}, [80, 81, 82][seed],
             [88, 89.5, 90][seed], sharpness={"hessian_max_eig": [2.0, 2.5, 1.8][seed]})
        _run(root, {**sam, "mask": "norm_only", "rho": 1.0, "seed": seed}, [79, 80, 81][seed], [90, 91, 92.5][seed])
        _run(root, {**sam, "mask": "random", "sparsity": "match:norm_only", "rho": 0.5, "seed": seed},
             [70, 71, 72][seed], [80, 80.5, 81.2][seed])
        _run(root, {**asam, "mask": "all", "rho": 1.0, "seed": seed}, [75, 76, 77][seed], [85, 86, 87][seed])
        _run(root, {**asam, "mask": "norm_only", "rho": 2.0, "seed": seed}, [74, 75, 76][seed], [80, 80.5, 82][seed])
    for seed, val, test in ((0, 90, 70), (1, 91, 71)):
        _run(root, {**sam, "mask": "norm_only", "rho": 2.0, "seed": seed}, val, test)
    _run(root, {**sam, "mask": "norm_only", "rho": 2.0, "seed": 2}, None, float("nan"), status="diverged")
    return root


@pytest.fixture(scope="module")
def df(folder):
    import analysis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return analysis.collect(folder)


def _chosen(sel, variant="SAM", method=None):
    hit = sel.chosen[(sel.chosen["variant_label"] == variant) & (sel.chosen["method"] == method)]
    assert len(hit) == 1, (variant, method, len(hit))
    return hit.iloc[0]


def test_val_chooses_by_validation_and_test_is_the_labelled_oracle(df):
    import analysis

    val = analysis.select(df)                      # default: the runs hold out a validation split
    assert val.rule.name == "val" and not val.rule.oracle
    assert _chosen(val, method="all")["rho"] == 0.1 and _chosen(val, method="all")["test_acc_mean"] == 84.0
    assert _chosen(val, method="norm_only")["rho"] == 0.5   # not 2.0: its best val mean has a diverged seed
    assert _chosen(val, method="norm_only")["test_acc_mean"] == pytest.approx((88 + 89.5 + 90) / 3)
    assert set(val.chosen["selected_by"]) == {"val"} and set(val.chosen["selection_metric"]) == {"val_acc"}
    oracle = analysis.select(df, "test")
    assert oracle.rule.oracle and set(oracle.chosen["selected_by"]) == {"test (oracle)"}
    assert _chosen(oracle, method="all")["rho"] == 0.05 and _chosen(oracle, method="norm_only")["rho"] == 1.0
    early = analysis.select(df, "val-early")         # the same choice here; test accuracy at the best-val epoch
    assert early.rule.report == "test_acc_at_best_val" and _chosen(early, method="all")["rho"] == 0.1
    fixed = analysis.select(df, "fixed:rho=0.05,norm_only:rho=1")
    assert _chosen(fixed, method="all")["rho"] == 0.05 and _chosen(fixed, method="norm_only")["rho"] == 1.0
    missing = {u["method"]: u["reason"] for u in fixed.chosen.attrs["unselected"]}
    assert missing["random@match:norm_only"] == "not run at rho=0.05 (run at rho 0.5)"
    with pytest.raises(analysis.SelectionError, match="all .* was run at rho 0.05, 0.1"):
        analysis.select(df, "last")
    with pytest.raises(analysis.SelectionError, match="unknown rule"):
        analysis.parse_rule("best")


def test_the_readme_caption_says_where_the_oracle_would_have_chosen_otherwise(df):
    from analysis.readme_captions import oracle_text

    text = oracle_text(df)
    assert "(SAM): ρ = 0.05, 87.0% against 84.0% at ρ = 0.1" in text, text   # dense SAM
    assert "(SAM): ρ = 1, 91.2% against 89.2% at ρ = 0.5" in text, text
    same = df[(df["mask"].isin(["none", "all"])) & (df["rho"].isna() | (df["rho"] == 0.1))]
    assert "picks the same ρ (one ρ per method)" in oracle_text(same)


def test_tables_compare_and_collect_name_the_rule(df):
    import analysis

    t = analysis.table(df, select="val")
    assert t.startswith("Rows: each method at the configuration chosen by val:") and "(oracle)" not in t
    assert "84.00 ± 1.00 (n=3, ρ=0.1) | reference |" in t
    # norm_only@0.5 - all@0.1 = 5, 5.5, 5: both sides at their validation-chosen rho
    assert "**89.17 ± 1.04** (n=3, ρ=0.5) | +5.17 [+4.45, +5.88] |" in t
    oracle = analysis.table(df, select="test")
    assert "resnet20 / cifar10 (oracle)" in oracle and "87.00 ± 1.00 (n=3, ρ=0.05) | reference |" in oracle
    line = analysis.compare(df, "norm_only", "all", select="val").splitlines()[0]
    assert line.startswith("resnet20 / cifar10, SAM: norm_only (ρ=0.5 by val) − all (ρ=0.1 by val): +5.167 test_acc")
    assert "by test: ORACLE" in analysis.compare(df, "norm_only", "all", select="test")
    marked = analysis.mark_selection(df, "val")
    runs = marked[(marked["variant"] == "sam") & (marked["mask"] == "all")]
    assert set(runs.loc[runs["rho"] == 0.1, "selected"]) == {True} and set(runs.loc[runs["rho"] == 0.05, "selected"]) == {False}
    assert set(marked["selected_by"]) == {"val"}
    diff = analysis.paired_difference(df, select="val")
    assert bool(diff["chosen"].all()) and len(diff) == len(analysis.select(df).chosen)


def test_holm_on_a_known_case():
    import analysis

    # sorted 0.005, 0.01, 0.03, 0.04 x 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert analysis.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adj = analysis.holm([0.2, float("nan"), 0.9])       # NaN is not a test: a family of 2
    assert adj[0] == pytest.approx(0.4) and math.isnan(adj[1]) and adj[2] == pytest.approx(0.9)
    assert analysis.holm([0.6, 0.7]) == [1.0, 1.0]       # capped at 1


def test_claims_verdicts_supported_contradicted_inconclusive_and_not_run(df):
    import analysis

    c = analysis.claims(df)
    got = {(r["claim"], r["variant"], r["metric"]): r for _, r in c.iterrows()}
    one = got[("1", "SAM", "test_acc")]                          # 5, 5.5, 5
    assert one["A"] == "norm_only (ρ=0.5)" and one["B"] == "all (ρ=0.1)" and one["n"] == 3
    assert one["effect"] == pytest.approx(31 / 6) and one["verdict"] == "supported"
    two = got[("2", "SAM", "test_acc")]                          # random - all = -3, -3.5, -3.8: claimed < 0
    assert two["effect"] == pytest.approx(-3.4333333) and two["verdict"] == "supported"
    asam = got[("1", "ASAM adaptive=layerwise", "test_acc")]     # -5, -5.5, -5: against the claim
    assert asam["verdict"] == "contradicted" and asam["effect"] < 0
    sharp = got[("4", "SAM", "sharpness.hessian_max_eig")]       # -0.1, 0.6, -0.2
    assert sharp["verdict"] == "inconclusive" and sharp["effect"] == pytest.approx(0.1)
    # Holm over the 4 tests shown, from the two-sided paired-t p-values
    from scipy import stats as sps

    raw = [sps.ttest_rel(a, b).pvalue for a, b in (([88, 89.5, 90], [83, 84, 85]), ([80, 80.5, 81.2], [83, 84, 85]),
                                                   ([80, 80.5, 82], [85, 86, 87]), ([2.0, 2.5, 1.8], [2.1, 1.9, 2.0]))]
    for key, p in zip([("1", "SAM", "test_acc"), ("2", "SAM", "test_acc"), ("1", "ASAM adaptive=layerwise", "test_acc"),
                       ("4", "SAM", "sharpness.hessian_max_eig")], raw):
        assert got[key]["p_value"] == pytest.approx(p, rel=1e-9)
    assert list(c["p_holm"]) == pytest.approx(analysis.holm(list(c["p_value"])))
    assert len(c) == 4 and set(c["selected_by"]) == {"val"}
    # not run: the Fisher mask (SAM), ASAM's random and Fisher masks, ASAM's sharpness
    not_run = {(tuple(e["claims"]), e["variant"], e["role"]): e for e in c.attrs["not_run"]}
    fisher = not_run[(("3",), "SAM", "fisher")]
    assert fisher["lines"] == ['- {model: resnet20, dataset: cifar10, variant: sam, mask: fisher, '
                               'sparsity: "match:norm_only", rho: [0.5, 1, 2]}']
    asam_random = not_run[(("2",), "ASAM adaptive=layerwise", "random")]
    assert "variant: asam, variant_opts: {adaptive: layerwise}, mask: random" in asam_random["lines"][0]
    assert "sharpness" in not_run[(("4",), "ASAM adaptive=layerwise", "sharpness")]["lines"][0]
    baselines_only = analysis.claims(df[df["variant"] == "none"])   # every side of every claim is missing
    assert len(baselines_only) == 0
    assert {e["role"] for e in baselines_only.attrs["not_run"]} == {"norm_only", "all", "random", "fisher"}
    text = analysis.claims_text(c)
    assert "Holm's correction over the 4 tests shown" in text and "**contradicted**" in text and "Not run:" in text


def test_claims_command(folder, run_sambench):
    proc = run_sambench("claims", folder, "--select", "test")
    assert proc.returncode == 0, proc.stderr
    assert "Selection: test — ORACLE" in proc.stdout and "A − B (ORACLE: chosen on test)" in proc.stdout
    bad = run_sambench("claims", folder, "--select", "last")
    assert bad.returncode == 2 and "choose one with --select fixed:FIELD=VALUE" in bad.stderr
    assert run_sambench("table", folder, "--select", "nope").returncode == 2


def test_tune_chooses_a_swept_setting_field_too(tmp_path):
    import analysis

    # dense SAM at two learning rates: a setting field, so two settings, unless it is tuned
    for seed in range(2):
        for lr, val, test in ((0.1, 80 + seed, 85 + seed), (0.05, 82 + seed, 84 + seed)):
            _run(tmp_path, {"mask": "all", "rho": 0.1, "seed": seed,
                            "base": {**F.BASE_CFG["base"], "lr": lr}}, val, test)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = analysis.collect(tmp_path)
    assert len(analysis.select(df).chosen) == 2                       # lr=0.1 and lr=0.05: two settings
    tuned = analysis.select(df, "val", tune=["rho", "base.lr"])
    (row,) = [r for _, r in tuned.chosen.iterrows()]
    assert row["base.lr"] == 0.05 and row["tuned"] == "ρ=0.1, base.lr=0.05" and row["test_acc_mean"] == 84.5
    assert "(n=2, ρ=0.1, base.lr=0.05)" in analysis.table(df, select="val", tune=["rho", "base.lr"])
    from analysis.html_report import curve_rows  # the report's learning curves follow the same choice
    assert list(curve_rows(df, "val", ["rho", "base.lr"])["base.lr"]) == [0.05]
    assert sorted(curve_rows(df, "val")["base.lr"]) == [0.05, 0.1]
    with pytest.raises(analysis.SelectionError, match="part of the method"):
        analysis.select(df, "val", tune=["sparsity"])
