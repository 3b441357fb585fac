"""analysis package: collect / aggregate / paired differences / tables / plots, on a hand-made folder.

The expected numbers are computed by hand from tests/analysis_fixtures.py (see its comments).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import analysis_fixtures

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return analysis_fixtures.make_results(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def df(results):
    import analysis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return analysis.collect(results)


@pytest.fixture(scope="module")
def agg(df):
    import analysis

    return analysis.aggregate(df)


def _row(frame, setting="resnet20 / cifar10", variant="SAM", method=None, rho=None):
    sel = (frame["setting"] == setting) & (frame["variant_label"] == variant)
    if method is not None:
        sel &= frame["method"] == method
    if rho is not None:
        sel &= (frame["rho"] - rho).abs() < 1e-12
    hit = frame[sel]
    assert len(hit) == 1, f"{len(hit)} rows for {setting}/{variant}/{method}/{rho}"
    return hit.iloc[0]


# --- collect ---------------------------------------------------------------------------------

def test_collect_reports_and_skips_corrupt_files(results):
    import analysis

    with pytest.warns(UserWarning, match="skipped 3 unreadable"):
        df = analysis.collect(results)
    skipped = {s["path"] for s in df.attrs["skipped"]}
    make_cfg, run_id = analysis_fixtures.make_cfg, analysis_fixtures.run_id
    corrupt_result = results / "s1" / run_id(make_cfg(mask="norm_only", rho=0.2, seed=1)) / "result.json"
    running_metrics = results / "s1" / run_id(make_cfg(rho=0.2, seed=0)) / "metrics.jsonl"
    assert str(corrupt_result) in skipped
    assert str(results / "s1" / "deadbeef0000" / "config.json") in skipped
    assert f"{running_metrics}:3" in skipped
    # the run with an unreadable config.json (and no result) is left out; nothing else is
    assert not df["path"].str.contains("deadbeef").any()


def test_collect_rows_statuses_and_columns(df, results):
    # 15 (s1, 3 seeds x 5) + 4 random + 5 odd ones + 4 ASAM + 6 wrn16 = 34 runs
    assert len(df) == 34
    counts = df["status"].value_counts().to_dict()
    assert counts == {"done": 29, "failed": 1, "diverged": 1, "running": 1, "pending": 1, "corrupt": 1}
    running = df[df["status"] == "running"].iloc[0]
    assert running["epochs_logged"] == 2 and running["last_test_acc"] == 42
    assert df[df["status"] == "pending"].iloc[0]["epochs_logged"] == 0
    failed = df[df["status"] == "failed"].iloc[0]
    assert "out of memory" in failed["error"] and math.isnan(failed["test_acc"])
    assert math.isnan(df[df["status"] == "diverged"].iloc[0]["test_acc"])
    for col in ("run_id", "suite", "status", "path", "base.lr", "base.name", "variant_opts.adaptive",
                "variant_opts.eta", "mask", "sparsity", "rho", "seed", "device", "test_acc",
                "seconds_per_epoch", "perturbed_fraction", "epochs_done", "env.torch", "env.git_commit",
                "norm_gamma", "method", "variant_label", "setting"):
        assert col in df.columns, col
    assert set(df["suite"].dropna()) == {"s1"}
    assert df["suite"].isna().sum() == 6  # suite null in config.json stays null
    assert df["epochs"].eq(10).all()  # config epochs, not result's epochs (-> epochs_done)
    assert (df[df["status"] == "failed"]["epochs_done"] == 0).all()
    g = df[(df["method"] == "norm_only") & (df["status"] == "done") & (df["rho"] == 0.05)
           & (df["setting"] == "resnet20 / cifar10")]
    assert all(isinstance(v, list) and len(v) == 64 for v in g["norm_gamma"])
    assert all(Path(p, "config.json").exists() for p in df["path"])
    # one suite folder works too
    import analysis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(analysis.collect(results / "adhoc")) == 6


def test_labels(df):
    assert set(df["variant_label"]) == {"SGD", "SAM", "ASAM adaptive=layerwise"}
    assert {"SGD", "all", "norm_only", "random@0.9", "random@0.99"} <= set(df["method"])
    assert set(df["setting"]) == {"resnet20 / cifar10", "wrn16 / cifar100"}
    assert df[df["variant"] == "none"]["baseline"].all()
    assert not df[df["variant"] != "none"]["baseline"].any()


# --- aggregate -------------------------------------------------------------------------------

@pytest.mark.parametrize("variant,method,rho,accs", [
    ("SGD", "SGD", None, analysis_fixtures.SGD),
    ("SAM", "all", 0.05, analysis_fixtures.ALL_005),
    ("SAM", "all", 0.1, analysis_fixtures.ALL_01),
    ("SAM", "norm_only", 0.05, analysis_fixtures.NORM_005),
    ("SAM", "norm_only", 0.1, analysis_fixtures.NORM_01),
    ("SAM", "random@0.9", 0.05, analysis_fixtures.RANDOM_09),
    ("SAM", "random@0.99", 0.05, analysis_fixtures.RANDOM_099),
])
def test_aggregate_mean_std_n(agg, variant, method, rho, accs):
    r = _row(agg, variant=variant, method=method, rho=rho)
    assert r["n"] == len(accs) == r["test_acc_n"]
    assert r["test_acc_mean"] == pytest.approx(sum(accs) / len(accs))
    assert r["test_acc_std"] == pytest.approx(analysis_fixtures.sample_std(accs))
    assert r["seeds"] == list(range(len(accs)))


def test_aggregate_hand_values_and_exclusions(agg):
    assert _row(agg, variant="SGD", method="SGD")["test_acc_mean"] == 81.0
    assert _row(agg, variant="SGD", method="SGD")["test_acc_std"] == 1.0     # 80, 81, 82
    assert _row(agg, method="all", rho=0.1)["test_acc_std"] == 2.0           # 84, 86, 88
    assert _row(agg, method="random@0.9", rho=0.05)["test_acc_std"] == pytest.approx(math.sqrt(4.5))
    # one seed: std is NaN (ddof=1), n == 1
    one = _row(agg, variant="ASAM adaptive=layerwise", method="all", rho=1.0)
    assert one["n"] == 1 and math.isnan(one["test_acc_std"]) and one["test_acc_mean"] == 86.0
    # runtime fields (device, data_root differ per seed) do not split configurations
    assert _row(agg, method="norm_only", rho=0.05)["n"] == 3
    assert _row(agg, method="norm_only", rho=0.05)["seconds_per_epoch_mean"] == 11.0
    assert _row(agg, method="norm_only", rho=0.05)["perturbed_fraction_mean"] == pytest.approx(0.003)
    # only done runs count; what was excluded is reported
    assert agg.attrs["excluded"] == {"failed": 1, "diverged": 1, "running": 1, "pending": 1, "corrupt": 1}
    assert agg.attrs["n_excluded"] == 5
    assert _row(agg, method="random@0.99", rho=0.05)["n_excluded"] == 1
    assert not ((agg["rho"] == 0.2) & (agg["variant_label"] == "SAM")).any()  # no done run there
    assert agg.attrs["configs_without_done_runs"] == 2
    assert len(agg) == 14


def test_aggregate_by_and_duplicates(df):
    import pandas as pd

    import analysis

    by_mask = analysis.aggregate(df[df["setting"] == "wrn16 / cifar100"], by=["mask"])
    assert sorted(by_mask["mask"]) == ["all", "none", "norm_only"]
    assert by_mask.set_index("mask").loc["norm_only", "test_acc_mean"] == 67.0
    # the same run found twice (e.g. a copied suite) counts once
    doubled = pd.concat([df, df[df["setting"] == "wrn16 / cifar100"]], ignore_index=True)
    a2 = analysis.aggregate(doubled)
    assert a2.attrs["duplicates"] == 6
    assert _row(a2, setting="wrn16 / cifar100", method="norm_only")["n"] == 2


# --- paired differences ----------------------------------------------------------------------

def test_paired_difference_default_reference(df):
    import analysis

    p = analysis.paired_difference(df, rows="all")
    assert p.attrs["rule"].name == "test" and set(p["selected_by"]) == {"test (oracle)"}  # no validation split
    # reference: dense SAM at the rho the rule chose (the oracle here: 0.1, 84, 86, 88)
    r = _row(p, method="norm_only", rho=0.05)                # 85,87,89 - 84,86,88 = 1,1,1
    assert (r["diff_mean"], r["diff_std"], r["n"]) == (1.0, 0.0, 3)
    assert r["ref_rho"] == 0.1 and "all" in r["reference"]
    r = _row(p, method="norm_only", rho=0.1)                 # -1,-2,-3
    assert r["diff_mean"] == pytest.approx(-2.0) and r["diff_std"] == pytest.approx(1.0)
    r = _row(p, method="all", rho=0.05)                      # -2,-3,-4
    assert r["diff_mean"] == pytest.approx(-3.0) and r["diff_std"] == pytest.approx(1.0)
    r = _row(p, method="random@0.9", rho=0.05)               # seeds 0,1 only: 80-84, 83-86
    assert r["n"] == 2 and r["seeds"] == [0, 1]
    assert r["diff_mean"] == pytest.approx(-3.5) and r["diff_std"] == pytest.approx(math.sqrt(0.5))
    r = _row(p, method="random@0.99", rho=0.05)              # seed 2 diverged: 78-84, 81-86
    assert r["n"] == 2 and r["diff_mean"] == pytest.approx(-5.5)
    ref = _row(p, method="all", rho=0.1)
    assert ref["is_reference"] and ref["diff_mean"] == 0.0
    # another setting gets its own reference; ASAM is compared with dense ASAM, not SAM
    r = _row(p, setting="wrn16 / cifar100", method="norm_only")   # 65-64, 69-66
    assert r["diff_mean"] == pytest.approx(2.0) and r["diff_std"] == pytest.approx(math.sqrt(2))
    r = _row(p, variant="ASAM adaptive=layerwise", method="norm_only", rho=0.5)  # 84 - 86 (ASAM all, rho 1)
    assert r["diff_mean"] == pytest.approx(-2.0) and r["n"] == 1 and math.isnan(r["diff_std"])
    assert r["ref_rho"] == 1.0
    # baselines have no dense-SAM reference in their own context
    assert _row(p, variant="SGD", method="SGD")["n"] == 0


def test_paired_difference_fixed_reference(df):
    import analysis

    p = analysis.paired_difference(df, reference={"mask": "all", "rho": 0.05}, rows="all")
    r = _row(p, method="norm_only", rho=0.05)                # 85-82, 87-83, 89-84 = 3,4,5
    assert r["diff_mean"] == pytest.approx(4.0) and r["diff_std"] == pytest.approx(1.0)
    p = analysis.paired_difference(df, reference="norm_only", rows="all")     # chosen norm_only: rho 0.05
    r = _row(p, method="random@0.9", rho=0.05)               # 80-85, 83-87
    assert r["diff_mean"] == pytest.approx(-4.5) and r["n"] == 2
    with pytest.raises(KeyError):
        analysis.paired_difference(df, reference={"no_such_field": 1})


# --- tables ----------------------------------------------------------------------------------

def _md(t: str):
    """(header line, {"method/variant": row line}) of a markdown table (caption above and notes below ignored)."""
    assert t.startswith("Rows: each method at the configuration chosen by ")   # the rule, named first
    lines = t.split("\n\n")[1].strip().splitlines()
    return lines[0], {ln.split(" | ")[1] + "/" + ln.split(" | ")[0].strip("| "): ln for ln in lines[2:]}


def test_table_markdown_best_layout(df):
    import analysis

    t = analysis.table(df)
    header, row = _md(t)
    # no validation split in these runs: the default rule is the oracle, and every header says so
    assert header == ("| variant | method | resnet20 / cifar10 (oracle) | Δ vs all (95% CI) | wrn16 / cifar100 (oracle) "
                      "| Δ vs all (95% CI) |")
    assert t.startswith("Rows: each method at the configuration chosen by test — ORACLE") and "\nORACLE: the test" in t
    # each method at its best rho, with n; beside it the seed-paired difference to dense SAM at its
    # best rho (0.1 on both settings) with a Student-t 95% interval
    assert "87.00 ± 2.00 (n=3, ρ=0.05) | +1.00 [+1.00, +1.00] |" in row["norm_only/SAM"]  # 1, 1, 1
    # wrn16: 65-64, 69-66 = 1, 3: mean 2, sd 1.414, t(0.975, 1) = 12.706 -> ±12.71
    assert "67.00 ± 2.83 (n=2, ρ=0.1) | +2.00 [-10.71, +14.71] |" in row["norm_only/SAM"]
    assert "86.00 ± 2.00 (n=3, ρ=0.1) | reference |" in row["all/SAM"]
    # SGD minus SAM: -4, -5, -6: mean -5, sd 1, t(0.975, 2) = 4.303 -> ±2.48
    assert "81.00 ± 1.00 (n=3) | -5.00 [-7.48, -2.52] |" in row["–/SGD"]
    assert "81.50 ± 2.12 (n=2, ρ=0.05) | -3.50 [-9.85, +2.85] |" in row["random@0.9/SAM"]
    assert row["random@0.9/SAM"].rstrip(" |").endswith("– | –")      # not run on wrn16
    assert "86.00 (n=1, ρ=1) | reference |" in row["all/ASAM adaptive=layerwise"]  # one seed: no ± std
    assert "84.00 (n=1, ρ=0.5) | -2.00 (n=1) |" in row["norm_only/ASAM adaptive=layerwise"]
    # no bold: norm_only has the best mean of the first column, but is not significantly better
    # than random@0.9 (two seeds: [-1.85, +10.85]) nor the one-seed ASAM rows; the second
    # column has two seeds and an interval across 0
    assert "**" not in t
    assert "Student's t" in t and "Bold: the best mean of a column" in t
    # order: baseline, dense SAM, norm_only, random by sparsity, then ASAM
    assert [k for k in row] == ["–/SGD", "all/SAM", "norm_only/SAM", "random@0.9/SAM", "random@0.99/SAM",
                                "all/ASAM adaptive=layerwise", "norm_only/ASAM adaptive=layerwise"]
    assert "Δ vs all" not in analysis.table(df, paired_diff=False)


def test_table_latex_and_rho_layout(df, agg):
    import analysis

    t = analysis.table(df, fmt="latex")
    assert t.startswith("% Rows: each method at the configuration chosen by test — ORACLE")
    assert "\n\\begin{tabular}{llcccc}" in t and "\\bottomrule" in t and "cifar10 (oracle) &" in t
    assert "87.00 $\\pm$ 2.00 {\\scriptsize (n=3, $\\rho$=0.05)}" in t
    assert "$\\Delta$ vs all (95\\% CI)" in t and "\n% Bold:" in t
    assert "norm\\_only" in t and t.count("\\textbf") == 0
    t2 = analysis.table(agg, layout="rho")                    # an aggregate frame works too
    assert t2.startswith("Every configuration; † marks the one chosen by test — ORACLE")
    header = t2.splitlines()[2]
    assert header == "| model / dataset | variant | method | no SAM | ρ=0.05 | ρ=0.1 | ρ=0.5 | ρ=1 |"
    all_row = next(ln for ln in t2.splitlines() if "| SAM | all |" in ln and "resnet20" in ln)
    # rho 0.1: all (84, 86, 88) vs norm_only (83, 84, 85): +2 [-0.48, +4.48], not significant; the
    # chosen (here: best on test) configuration of each swept method carries a dagger
    assert "83.00 ± 1.00 (n=3) |" in all_row and "| 86.00 ± 2.00 (n=3) † |" in all_row and "**" not in t2
    with pytest.raises(ValueError):
        analysis.table(df, fmt="html")


def _significance_folder(root, norm_accs):
    for seed in range(3):
        analysis_fixtures.write_run(root, "sig", analysis_fixtures.make_cfg(variant="none", mask="none", seed=seed), test_acc=[80, 81, 82][seed])
        analysis_fixtures.write_run(root, "sig", analysis_fixtures.make_cfg(rho=0.1, seed=seed), test_acc=[84, 85, 87][seed])
        analysis_fixtures.write_run(root, "sig", analysis_fixtures.make_cfg(mask="norm_only", rho=1.0, seed=seed), test_acc=norm_accs[seed],
                    frac=0.003)
    return root


def test_bold_only_what_is_significantly_best(tmp_path):
    import analysis

    # norm_only - all = 2, 2.5, 2: +2.17 [+1.45, +2.88]; norm_only - SGD = 6, 6.5, 7: significant
    t = analysis.table(_significance_folder(tmp_path / "a", [86, 87.5, 89]))
    _, row = _md(t)
    assert "**87.50 ± 1.50** (n=3, ρ=1) | +2.17 [+1.45, +2.88] |" in row["norm_only/SAM"]
    assert t.count("**") == 2
    # a better mean that is not significantly better (2, -1, 3: [-3.84, +6.50]): no bold at all
    t = analysis.table(_significance_folder(tmp_path / "b", [86, 84, 90]))
    _, row = _md(t)
    assert "86.67 ± 3.06 (n=3, ρ=1) | +1.33 [-3.84, +6.50] |" in row["norm_only/SAM"] and "**" not in t


def test_paired_interval_matches_scipy_and_a_hand_computation():
    from scipy import stats as sps

    import analysis

    a = [71.2, 73.9, 70.4, 72.8, 74.1]
    b = [70.1, 72.0, 70.9, 71.5, 72.2]
    res = analysis.paired(dict(enumerate(a)), dict(enumerate(b)))
    ref = sps.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    assert res["low"] == pytest.approx(ci.low, rel=1e-12) and res["high"] == pytest.approx(ci.high, rel=1e-12)
    assert res["p_value"] == pytest.approx(ref.pvalue, rel=1e-12) and res["n"] == 5
    # by hand: d = 1, 2, 3 -> mean 2, sd 1, t(0.975, 2) = 4.302653 -> 2 ± 4.302653 / sqrt(3)
    hand = analysis.t_interval([1.0, 2.0, 3.0])
    assert hand["low"] == pytest.approx(2 - 4.302652729911275 / math.sqrt(3), rel=1e-9)
    assert hand["high"] == pytest.approx(2 + 4.302652729911275 / math.sqrt(3), rel=1e-9)
    one = analysis.t_interval([1.5])
    assert one["mean"] == 1.5 and math.isnan(one["low"]) and math.isnan(one["p_value"])
    # only seeds present in both count
    assert analysis.paired({0: 1.0, 1: 2.0, 7: 9.0}, {0: 0.0, 1: 0.0, 3: 5.0})["seeds"] == [0, 1]


def test_paired_difference_has_intervals(df):
    import analysis

    p = analysis.paired_difference(df, rows="all")
    r = _row(p, method="norm_only", rho=0.05)
    assert (r["ci_low"], r["ci_high"], r["p_value"]) == (pytest.approx(1.0), pytest.approx(1.0), 0.0)
    r = _row(p, method="all", rho=0.05)                     # 82-84, 83-86, 84-88 = -2, -3, -4
    half = 4.302652729911275 / math.sqrt(3)
    assert r["ci_low"] == pytest.approx(-3 - half) and r["ci_high"] == pytest.approx(-3 + half)
    assert p.attrs["ci_method"] == "paired t"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_compare_command(results, capsys):
    from bench.cli.app import main

    assert main(["table", str(results), "--compare", "norm_only@0.05", "all@0.1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0] == ("resnet20 / cifar10, SAM: norm_only (ρ=0.05) − all (ρ=0.1): +1.000 test_acc, "
                      "95% CI [+1.000, +1.000] (paired t, n=3 seeds 0, 1, 2; p=0)")
    # without a rho: each method's best rho, in every setting and variant that has both
    assert main(["table", str(results), "--compare", "norm_only", "SGD"]) == 0
    out = capsys.readouterr().out
    assert "resnet20 / cifar10, SAM: norm_only (ρ=0.05 by test: ORACLE) − SGD: +6.000 test_acc" in out
    assert "wrn16 / cifar100, SAM: norm_only (ρ=0.1 by test: ORACLE) − SGD: +6.000 test_acc" in out   # 65-60, 69-62
    assert main(["table", str(results), "--compare", "nrm_only", "all"]) == 2
    err = capsys.readouterr().err
    assert "'nrm_only' names no method" in err and "norm_only" in err


def test_write_csv(df, agg, tmp_path):
    import pandas as pd

    import analysis

    p = analysis.write_csv(agg, tmp_path / "sub" / "agg.csv")
    back = pd.read_csv(p)
    assert len(back) == len(agg) and json.loads(back["seeds"].iloc[0]) == [0, 1, 2]
    p2 = analysis.write_csv(df, tmp_path / "runs.csv")
    assert "norm_gamma" not in pd.read_csv(p2).columns


# --- plots (run once, in a subprocess where torch / bench / masks cannot be imported) -------

BLOCKED_RUN = textwrap.dedent("""
    import importlib.abc, json, sys, warnings
    BLOCK = ("torch", "bench", "masks")
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCK:
                raise ImportError("blocked in this test: " + name)
    sys.meta_path.insert(0, Block())
    for m in list(sys.modules):
        if m.split(".")[0] in BLOCK:
            del sys.modules[m]
    import analysis
    warnings.simplefilter("ignore")
    df = analysis.collect(sys.argv[1])
    paths = analysis.plot_all(df, sys.argv[2])
    analysis.aggregate(df); analysis.paired_difference(df); analysis.table(df, fmt="latex")
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCK)
    print(json.dumps({"paths": list(paths), "skipped": paths.skipped, "loaded": loaded}))
""")


@pytest.fixture(scope="module")
def plotted(results, tmp_path_factory):
    out = tmp_path_factory.mktemp("figs")
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", BLOCKED_RUN, str(results), str(out)], check=False, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    return proc, out


def test_analysis_runs_without_torch(plotted):
    proc, _ = plotted
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["loaded"] == []
    assert info["paths"]


def test_plot_files_written(plotted):
    proc, out = plotted
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["skipped"] == {}
    paths = [Path(p) for p in info["paths"]]
    stems = {p.stem for p in paths}
    assert stems == {"accuracy_vs_sparsity_sam", "accuracy_vs_sparsity_asam_adaptive_layerwise", "rho_sweep",
                     "runtime_vs_accuracy", "norm_gamma", "norm_gamma_violin",
                     "sharpness_vs_accuracy_resnet20_cifar10", "sharpness_vs_sparsity_resnet20_cifar10_sam"}
    for stem in stems:
        png, pdf = out / f"{stem}.png", out / f"{stem}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5_000
    assert sorted(paths) == sorted(out.iterdir())


def test_plots_skip_gracefully_without_data(df, tmp_path):
    import analysis

    # no saved gamma -> the gamma figures are skipped (and nothing is drawn for them)
    no_gamma = df.assign(norm_gamma=None)
    r = analysis.plot_norm_gamma(no_gamma, tmp_path)
    assert list(r) == [] and "norm_gamma" in r.skipped
    r = analysis.plot_gamma_violin(no_gamma, tmp_path)
    assert list(r) == [] and "norm_gamma_violin" in r.skipped
    # no sharpness -> no sharpness figures
    r = analysis.plot_sharpness(df[[c for c in df.columns if not c.startswith("sharpness")]], tmp_path)
    assert list(r) == [] and "sambench sharpness" in r.skipped["sharpness_vs_accuracy"]
    # no baseline -> no runtime figure; one rho per method -> no rho sweep
    sub = df[(df["variant"] != "none") & (df["rho"] == 0.1)]
    r = analysis.plot_runtime_vs_accuracy(sub, tmp_path)
    assert list(r) == [] and "baseline" in r.skipped["runtime_vs_accuracy"]
    r = analysis.plot_rho_sweeps(sub, tmp_path)
    assert list(r) == [] and "rho_sweep" in r.skipped
    assert list(tmp_path.iterdir()) == []


def test_palette_is_fixed_and_deterministic():
    import analysis

    assert analysis.mask_color("norm_only") == "#d62728" and analysis.mask_color("all") == "#1f77b4"
    c = analysis.mask_color("my_custom_mask")
    assert c == analysis.mask_color("my_custom_mask") and c.startswith("#") and len(c) == 7
    code = "import analysis; print(analysis.mask_color('my_custom_mask'))"
    other = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": "123"})
    assert other.stdout.strip() == c


def test_import_is_light():
    code = "import sys, analysis; print(sorted(m for m in ('pandas', 'matplotlib', 'seaborn', 'torch') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True,
                          text=True)
    assert proc.stdout.strip() == "[]"


# --- published numbers, sharpness and label-noise columns ----------------------------------------

def test_published_column_for_the_reference_suite(tmp_path):
    import analysis
    from bench.orchestration.reference import write_reference
    from bench.orchestration.suite import load_suite

    suite = load_suite(REPO / "suites" / "cifar100_wrn28.yaml")
    accs = {("none", None): [80.5, 81.0, 80.0], ("all", 0.2): [83.0, 83.5, 82.5],
            ("norm_only", 1.0): [84.0, 84.5, 83.8]}
    for cfg in suite.runs:
        key = ("none", None) if cfg["variant"] == "none" else (cfg["mask"], cfg["rho"])
        if key in accs:
            analysis_fixtures.write_run(tmp_path, suite.name, cfg, test_acc=accs[key][cfg["seed"]],
                        frac={"none": 0.0, "all": 1.0, "norm_only": 0.0005}[key[0]])
    assert write_reference(suite, tmp_path / suite.name).name == "reference.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = analysis.collect(tmp_path)
    t = analysis.table(df)
    header, row = _md(t)
    assert header == "| variant | method | wrn28_10 / cifar100 (oracle) | Δ vs all (95% CI) | published |"
    assert row["–/SGD"].endswith("| 80.71 ± 0.20 [1] |")
    assert row["all/SAM"].endswith("| reference | 83.11 ± 0.30 [1] |")
    # norm_only - all = 1.0, 1.0, 1.3 and norm_only - SGD > 0 on every seed: significantly best
    assert row["norm_only/SAM"].endswith("| **84.10 ± 0.36** (n=3, ρ=1) | +1.10 [+0.67, +1.53] | 84.19 ± 0.20 [1] |")
    assert "[1] published: Mueller, Vlaar, Rolnick, Hein: Normalization Layers Are All" in t
    assert "Published but not run here: random mask 99.95%: 80.97 ± 0.20 [1]" in t
    assert "SSAM-F 50%: 83.94 ± 0.10 [1]" in t
    latex = analysis.table(df, fmt="latex")
    assert "84.19 $\\pm$ 0.20 [1]" in latex and "% [1] published: Mueller" in latex
    # the entries carry the suite's setting: a cifar10 row with the same method matches none
    entry = next(e for e in df.attrs["published"] if e.get("label") == "SAM-ON")
    assert entry["match"]["dataset"] == "cifar100" and entry["match"]["model"] == "wrn28_10"
    from analysis.reference import matches
    assert not matches({"baseline": False, "variant": "sam", "mask": "norm_only", "dataset": "cifar10",
                        "model": "wrn28_10"}, entry)
    # and the accuracy figure draws them (hollow markers), with no figure skipped for it
    paths = analysis.plot_accuracy_vs_sparsity(df, tmp_path / "figs")
    assert paths and not paths.skipped


def test_collect_sharpness_and_label_noise_columns(df, agg):
    import analysis

    # sharpness measures are result columns, aggregated over seeds like accuracy
    r = _row(agg, method="norm_only", rho=0.05)               # hessian_max_eig 3.00, 3.01, 3.02
    assert r["sharpness.hessian_max_eig_mean"] == pytest.approx(3.01)
    assert r["sharpness.msharp_linf_adaptive_rho0.003_n"] == 3
    assert r["sharpness.hessian_max_eig_by_seed"] == {0: 3.0, 1: 3.01, 2: 3.02}
    assert "sharpness.hessian_max_eig" not in analysis.key_columns(df)
    assert analysis.sharpness_columns(df)[:4] == ["sharpness.hessian_max_eig", "sharpness.hessian_trace",
                                                   "sharpness.hessian_max_eig_norm",
                                                   "sharpness.hessian_trace_norm"]
    # results written before the label-noise fields existed count as clean
    assert set(df["label_noise"]) == {0.0} and set(df["label_noise_type"]) == {"symmetric"}


def test_noisy_runs_are_their_own_setting_and_sharpness_options_are_not(tmp_path):
    import analysis

    for seed in range(2):
        analysis_fixtures.write_run(tmp_path, "n", analysis_fixtures.make_cfg(seed=seed), test_acc=80.0 + seed)
        analysis_fixtures.write_run(tmp_path, "n", analysis_fixtures.make_cfg(seed=seed, label_noise=0.4), test_acc=60.0 + seed)
        # the same clean run, measured with other sharpness options: one configuration
        analysis_fixtures.write_run(tmp_path, "n2", analysis_fixtures.make_cfg(seed=seed, sharpness={"m": 64}), test_acc=80.0 + seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = analysis.collect(tmp_path)
    agg = analysis.aggregate(df)
    assert sorted(agg["setting"]) == ["resnet20 / cifar10, label noise=0", "resnet20 / cifar10, label noise=0.4"]
    assert sorted(agg["n"]) == [2, 2] and agg.attrs["duplicates"] == 2
    assert "sharpness_config" in df.columns and "sharpness_config" not in analysis.key_columns(df)
