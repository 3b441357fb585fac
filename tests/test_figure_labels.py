"""In runtime-vs-accuracy and sharpness-vs-accuracy a method's rhos can be told apart (a label
``ρ=...`` beside each point, larger markers for larger rho); no axis label mixes a ratio with a unit.
The figures are read back as the matplotlib objects that were saved."""
from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import analysis_fixtures as F  # noqa: E402


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{figure stem: the Figure saved} for the two figures, on the hand-made results."""
    import analysis
    from analysis import figures as plots

    root = F.make_results(tmp_path_factory.mktemp("results"))
    figures = {}
    original = plots.save

    def keep(fig, outdir, stem, formats):
        figures[stem] = fig
        return original(fig, outdir, stem, formats)

    plots.save = keep
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            df = analysis.collect(root)
            out = tmp_path_factory.mktemp("figures")
            analysis.plot_runtime_vs_accuracy(df, out, formats=("png",))
            analysis.plot_sharpness(df, out, formats=("png",))
    finally:
        plots.save = original
    return figures


def _points(ax) -> list[tuple[float, float, float]]:
    """(x, y, marker size) of every error-bar point of a panel."""
    out = []
    for line in ax.lines:
        x, y = line.get_xdata(), line.get_ydata()
        if len(x) == 1 and line.get_marker() not in (None, "None", "", "|", "_"):  # not the caps
            out.append((float(x[0]), float(y[0]), float(line.get_markersize())))
    return out


def test_runtime_figure_labels_every_rho_of_a_method_and_its_axis_is_a_plain_ratio(saved):
    fig = saved["runtime_vs_accuracy"]
    ax = next(a for a in fig.axes if "resnet20 / cifar10" in a.get_title())
    # SAM's dense and SAM-ON ran at 0.05 and 0.1, ASAM's at 0.5 and 1: a label each; the random
    # masks only at 0.05: none
    texts = [t.get_text() for t in ax.texts if t.get_text().startswith("ρ=")]
    assert sorted(texts) == ["ρ=0.05", "ρ=0.05", "ρ=0.1", "ρ=0.1", "ρ=0.5", "ρ=0.5", "ρ=1", "ρ=1"]
    # each label sits on its point: dense SAM (seconds/epoch 20 vs SGD's 10 -> x = 2) at 83 and 86
    by_text = {}
    for t in ax.texts:
        by_text.setdefault(t.get_text(), set()).add((round(t.xy[0], 6), round(t.xy[1], 6)))
    assert (2.0, 83.0) in by_text["ρ=0.05"] and (2.0, 86.0) in by_text["ρ=0.1"]
    sizes = {(round(x, 6), round(y, 6)): s for x, y, s in _points(ax)}
    assert sizes[(2.0, 86.0)] > sizes[(2.0, 83.0)]  # the larger rho, the larger marker
    label = ax.get_xlabel()
    assert label == "time per epoch relative to SGD (×)"
    assert not re.search(r"\b(seconds|s/epoch|ms)\b", label)


def test_sharpness_figure_labels_the_rhos_too(saved):
    stems = [s for s in saved if s.startswith("sharpness_vs_accuracy")]
    assert stems
    texts = [t.get_text() for s in stems for ax in saved[s].axes for t in ax.texts]
    assert "ρ=0.05" in texts and "ρ=0.1" in texts
    for s in stems:
        for ax in saved[s].axes:
            if ax.get_xlabel():
                assert "(higher = sharper)" in ax.get_xlabel() and "%" not in ax.get_xlabel()
