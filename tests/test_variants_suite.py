"""suites/variants_fmnist.yaml: every variant x {all, norm_only, random@match:norm_only}, and the
accuracy-vs-relative-step-cost figure `sambench plot` draws from its results."""
from pathlib import Path

from analysis_fixtures import write_run

from bench.cli import app as cli
from bench.engine.variants import list_variants
from bench.orchestration.suite import load_suite

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "suites" / "variants_fmnist.yaml"


def test_the_suite_crosses_every_variant_with_three_masks():
    suite = load_suite(SUITE)
    cells = {(r["variant"], r["mask"], r["sparsity"]) for r in suite.runs if r["variant"] != "none"}
    perturbing = set(list_variants()) - {"none"}
    assert cells == {(v, m, s) for v in perturbing
                     for m, s in (("all", None), ("norm_only", None), ("random", "match:norm_only"))}
    assert {r["seed"] for r in suite.runs} == {0, 1, 2} and {r["dataset"] for r in suite.runs} == {"fashion_mnist"}
    assert sum(r["variant"] == "none" for r in suite.runs) == 3


def test_sambench_plot_draws_accuracy_against_step_cost(tmp_path, monkeypatch):
    import analysis.figures as plots  # every figure is saved through analysis.figures.save

    suite = load_suite(SUITE)
    cost = {"none": 1.0, "msam": 1.02, "looksam": 1.2, "esam": 1.5}
    for i, cfg in enumerate(suite.runs):
        spe = 10.0 * cost.get(cfg["variant"], 2.0) * (0.9 if cfg["mask"] == "norm_only" else 1.0)
        write_run(tmp_path / "results", suite.name, dict(cfg), test_acc=90.0 + (i % 7) * 0.1 + cfg["seed"],
                  spe=spe + 0.01 * cfg["seed"])
    drawn = {}
    real_save = plots.save

    def keep(fig, outdir, stem, formats):
        drawn[stem] = fig
        return real_save(fig, outdir, stem, formats)

    monkeypatch.setattr(plots, "save", keep)
    out = tmp_path / "figures"
    assert cli.main(["plot", str(tmp_path / "results" / suite.name), "-o", str(out)]) == 0
    assert (out / "runtime_vs_accuracy.png").stat().st_size > 10_000
    ax = drawn["runtime_vs_accuracy"].axes[0]
    assert len(ax.containers) == 7 * 3 + 1  # one point per variant x mask, and SGD
    xs = sorted(round(float(c.lines[0].get_xdata()[0]), 2) for c in ax.containers)
    assert {1.0, 1.02, 1.5, 0.92} <= set(xs)  # seconds per epoch over SGD's (SGD, MSAM, ESAM, MSAM-ON)
    assert ax.get_xlabel() == "time per epoch relative to SGD (×)"  # a ratio: no unit
    legend = [t.get_text() for t in drawn["runtime_vs_accuracy"].legends[0].get_texts()]
    assert {"MSAM", "LOOKSAM", "GSAM", "ESAM", "FSAM", "SAM"} <= set(legend)


def test_perf_variants_preset_times_every_variant_with_all_and_norm_only():
    from bench.perf.timing import PRESETS, parse_configs

    cells = {(c.variant, c.mask) for c in PRESETS["variants"]}
    perturbing = set(list_variants()) - {"none"}
    assert cells == {("none", "none")} | {(v, m) for v in perturbing for m in ("all", "norm_only")}
    custom = parse_configs("looksam:norm_only:k=2;alpha=0.5")  # variant options from the registry
    assert custom[1].variant_opts == {"k": 2, "alpha": 0.5} and custom[1].mask_opts == {}
