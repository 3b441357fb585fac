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

    p = analysis.paired_difference(df)
    # reference: dense SAM at its best rho (0.1: 84, 86, 88)
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

    p = analysis.paired_difference(df, reference={"mask": "all", "rho": 0.05})
    r = _row(p, method="norm_only", rho=0.05)                # 85-82, 87-83, 89-84 = 3,4,5
    assert r["diff_mean"] == pytest.approx(4.0) and r["diff_std"] == pytest.approx(1.0)
    p = analysis.paired_difference(df, reference="norm_only")     # best norm_only: rho 0.05
    r = _row(p, method="random@0.9", rho=0.05)               # 80-85, 83-87
    assert r["diff_mean"] == pytest.approx(-4.5) and r["n"] == 2
    with pytest.raises(KeyError):
        analysis.paired_difference(df, reference={"no_such_field": 1})


# --- tables ----------------------------------------------------------------------------------

def test_table_markdown_best_layout(df):
    import analysis

    t = analysis.table(df)
    lines = t.strip().splitlines()
    assert lines[0] == "| variant | method | resnet20 / cifar10 | wrn16 / cifar100 |"
    row = {ln.split(" | ")[1] + "/" + ln.split(" | ")[0].strip("| "): ln for ln in lines[2:]}
    # best per column in bold, with n and its best rho
    assert "**87.00 ± 2.00** (n=3, ρ=0.05)" in row["norm_only/SAM"]
    assert "**67.00 ± 2.83** (n=2, ρ=0.1)" in row["norm_only/SAM"]
    assert "86.00 ± 2.00 (n=3, ρ=0.1)" in row["all/SAM"] and "**" not in row["all/SAM"]
    assert "81.00 ± 1.00 (n=3)" in row["–/SGD"] and "**" not in row["–/SGD"]
    assert "81.50 ± 2.12 (n=2, ρ=0.05)" in row["random@0.9/SAM"]
    assert row["random@0.9/SAM"].rstrip(" |").endswith("–")      # not run on wrn16
    assert "86.00 (n=1, ρ=1)" in row["all/ASAM adaptive=layerwise"]  # one seed: no ± std
    assert t.count("**") == 4  # exactly one bold cell per column
    # order: baseline, dense SAM, norm_only, random by sparsity, then ASAM
    assert [k for k in row] == ["–/SGD", "all/SAM", "norm_only/SAM", "random@0.9/SAM", "random@0.99/SAM",
                                "all/ASAM adaptive=layerwise", "norm_only/ASAM adaptive=layerwise"]


def test_table_latex_and_rho_layout(df, agg):
    import analysis

    t = analysis.table(df, fmt="latex")
    assert t.startswith("\\begin{tabular}{llcc}") and "\\bottomrule" in t
    assert "\\textbf{87.00 $\\pm$ 2.00} {\\scriptsize (n=3, $\\rho$=0.05)}" in t
    assert "norm\\_only" in t and t.count("\\textbf") == 2
    t2 = analysis.table(agg, layout="rho")                    # an aggregate frame works too
    header = t2.splitlines()[0]
    assert header == "| model / dataset | variant | method | no SAM | ρ=0.05 | ρ=0.1 | ρ=0.5 | ρ=1 |"
    all_row = next(ln for ln in t2.splitlines() if "| SAM | all |" in ln and "resnet20" in ln)
    assert "83.00 ± 1.00 (n=3)" in all_row and "**86.00 ± 2.00** (n=3)" in all_row
    with pytest.raises(ValueError):
        analysis.table(df, fmt="html")


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
                     "runtime_vs_accuracy", "norm_gamma"}
    for stem in stems:
        png, pdf = out / f"{stem}.png", out / f"{stem}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5_000
    assert sorted(paths) == sorted(out.iterdir())


def test_plots_skip_gracefully_without_data(df, tmp_path):
    import analysis

    # no saved gamma -> the gamma figure is skipped (and nothing is drawn for it)
    no_gamma = df.assign(norm_gamma=None)
    r = analysis.plot_norm_gamma(no_gamma, tmp_path)
    assert list(r) == [] and "norm_gamma" in r.skipped
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
