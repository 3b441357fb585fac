"""`make demo` (suites/demo.yaml) is the short demo a newcomer runs first, `make demo-full` the
longer one: what each runs and prints, checked from the suite files and the Makefile (the runs
themselves are timed by hand: docs/first-hour.md)."""
import re
from pathlib import Path

from bench.orchestration.suite import load_suite

REPO = Path(__file__).resolve().parents[1]


def _recipe(target: str) -> list[str]:
    text = (REPO / "Makefile").read_text()
    m = re.search(rf"^{re.escape(target)}:\n((?:\t.*\n)+)", text, re.MULTILINE)
    assert m, f"no Makefile target {target}"
    return [ln.strip() for ln in m.group(1).splitlines()]


def test_the_demo_is_small_and_compares_sgd_sam_and_sam_on_over_five_seeds():
    demo = load_suite(REPO / "suites" / "demo.yaml")
    methods = {("none" if r["variant"] == "none" else r["mask"], None if r["variant"] == "none" else r["rho"])
               for r in demo.runs}
    assert methods == {("none", None), ("all", 0.1), ("norm_only", 1.0), ("random", 1.0)}  # one rho each
    assert sorted({r["seed"] for r in demo.runs}) == [0, 1, 2, 3, 4] and len(demo.runs) == 20
    assert {r["model"] for r in demo.runs} == {"resnet_ci"} and {r["dataset"] for r in demo.runs} == {"digits"}
    assert all(r["label_noise"] == 0.4 and r["epochs"] == 20 and r["sharpness"] is not None for r in demo.runs)
    # each rho chosen on a held-out 20% with noisy labels, never on the test set
    assert all(r["val_split"] == 0.2 and r["val_noisy"] is True for r in demo.runs)
    full = load_suite(REPO / "suites" / "demo_full.yaml")
    assert all(r["val_split"] == 0.2 for r in full.runs)


def test_make_demo_prints_both_paired_intervals_and_demo_full_runs_the_long_suite():
    demo = _recipe("demo")
    assert any("run suites/demo.yaml --out results" in ln for ln in demo)
    assert any("table results/demo --compare all SGD" in ln for ln in demo)
    assert any("table results/demo --compare norm_only all" in ln for ln in demo)
    assert any("report results/demo" in ln for ln in demo)
    full = _recipe("demo-full")
    assert any("run suites/demo_full.yaml --out results" in ln for ln in full)
    assert load_suite(REPO / "suites" / "demo_full.yaml").name == "demo_full"
    assert "results/demo_full" in " ".join(full)
