"""sambench report: one self-contained HTML page; parsed back and checked against analysis itself."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
import warnings
from html.parser import HTMLParser
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import analysis_fixtures as F

REPO = Path(__file__).resolve().parents[1]

# the report is made where torch / bench / masks cannot be imported; the figure list comes from
# plot_all itself, so figures added to analysis later are expected on the page too
MAKE_REPORT = textwrap.dedent("""
    import importlib.abc, json, sys, tempfile, warnings
    BLOCK = ("torch", "bench", "masks")
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCK:
                raise ImportError("blocked in this test: " + name)
    sys.meta_path.insert(0, Block())
    import analysis
    info = analysis.write_report(sys.argv[1], sys.argv[2])
    warnings.simplefilter("ignore")
    df = analysis.collect(sys.argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        drawn = analysis.plot_all(df, tmp, formats=("png",))
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCK)
    print(json.dumps({"figures": info.figures, "tables": info.tables, "warnings": info.warnings,
                      "plot_all": [p.rsplit("/", 1)[-1][:-4] for p in drawn], "loaded": loaded}))
""")


class Page(HTMLParser):
    """Sections, figures (decoded images), tables (cell texts), failed-run blocks, outside links."""

    def __init__(self):
        super().__init__()
        self.section = None
        self.figures: dict[str, bytes] = {}
        self.tables: list[tuple[str, list[list[str]]]] = []
        self.failed: dict[str, str] = {}
        self.outside: list[str] = []
        self._cell = None
        self._rows = None
        self._details = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.section = a.get("id")
        for key in ("src", "href"):
            if key in a and not a[key].startswith(("data:", "#")):
                self.outside.append(a[key])
        if tag == "figure":
            self._figure = a["id"].removeprefix("fig-")
        if tag == "img" and a.get("src", "").startswith("data:image/png;base64,"):
            self.figures[self._figure] = base64.b64decode(a["src"].split(",", 1)[1])
        if tag == "table":
            self._rows = []
        if tag == "tr" and self._rows is not None:
            self._rows.append([])
        if tag in ("td", "th"):
            self._cell = []
        if tag == "details" and "failed-run" in a.get("class", ""):
            self._details = (a["id"].removeprefix("run-"), len(self._text))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._rows[-1].append("".join(self._cell).strip())
            self._cell = None
        if tag == "table":
            self.tables.append((self.section, self._rows))
            self._rows = None
        if tag == "details" and self._details:
            rid, start = self._details
            self.failed[rid] = "".join(self._text[start:])
            self._details = None

    def handle_data(self, data):
        self._text.append(data)
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = F.make_results(tmp_path_factory.mktemp("results"))
    # the failed run's job recorded a log file (as the suite runner does in job.json)
    failed_dir = next(d for d in (root / "s1").iterdir()
                      if (d / "result.json").exists() and '"failed"' in (d / "result.json").read_text())
    log = root / "s1" / ".submitit" / "42_0_log.err"
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"noise line {i}\n" for i in range(100))
                   + f"[{failed_dir.name}] epoch 1/10 ...\nRuntimeError: CUDA out of memory (tried 2 GiB)\n")
    (failed_dir / "job.json").write_text(json.dumps({"jobs": [{"job_id": "42_0", "stderr": str(log),
                                                               "stdout": str(log.with_suffix(".out"))}]}))
    out = root / "report" / "report.html"
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", MAKE_REPORT, str(root), str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    page = Page()
    page.feed(out.read_text(encoding="utf-8"))
    return root, out, info, page, failed_dir.name


@pytest.fixture(scope="module")
def df(made):
    import analysis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return analysis.collect(made[0])


def test_report_made_without_torch_and_self_contained(made):
    _, out, info, page, _ = made
    assert info["loaded"] == []
    assert page.outside == []  # no link to a file or site: one page to open or attach
    assert out.read_text().startswith("<!DOCTYPE html>")


def test_every_figure_is_embedded(made, df):
    _, _, info, page, _ = made
    curves = sorted(s for s in page.figures if s.startswith("learning_curves_"))
    figures = sorted(set(page.figures) - set(curves))
    assert info["plot_all"] and figures == sorted(info["plot_all"])
    assert sorted(info["figures"]) == sorted(figures + curves)
    done = df[df["status"] == "done"]
    assert len(curves) == done["setting"].nunique() >= 2  # one figure of learning curves per setting
    for stem, png in page.figures.items():
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, stem


def test_learning_curves_are_the_seed_means_of_metrics_jsonl(made, df):
    from analysis.html_report import _epoch_curves

    done = df[(df["status"] == "done") & (df["epochs_logged"] == 10)]
    paths = list(done["path"])[:3]
    for key, offset in (("train_acc", 50), ("test_acc", 40)):  # the fixture logs 50 + e and 40 + e
        epochs, mean, std = _epoch_curves(paths, key)
        assert list(epochs) == list(range(1, 11)) and list(mean) == [offset + e for e in range(1, 11)]
        assert list(std) == [0.0] * 10
    epochs, mean, _ = _epoch_curves(paths, "train_loss")
    assert mean == pytest.approx([1.0 / e for e in range(1, 11)])


def test_the_runs_table_shows_train_accuracy_and_no_rho_for_sgd(made, df):
    _, _, _, page, _ = made
    (runs,) = [rows for section, rows in page.tables if section == "runs"]
    header = runs[0]
    assert "train_acc" in header and "rho" in header
    rows = {r[header.index("run_id")]: r for r in runs[1:]}
    for _, r in df.iterrows():
        shown = rows[r["run_id"]][header.index("rho")]
        assert (shown == "") == bool(r["baseline"]), (r["run_id"], shown)


def test_every_table_is_there_cell_for_cell(made, df):
    import analysis

    _, _, info, page, _ = made
    assert len(info["tables"]) == 2
    html_tables = [rows for section, rows in page.tables if section == "tables"]
    assert len(html_tables) == 2
    for layout, got in zip(("best", "rho"), html_tables):
        text = analysis.table(df, fmt="markdown", layout=layout)
        lines = [ln for ln in text.splitlines() if ln.startswith("|")]
        want = [[c.strip().replace("**", "") for c in ln.strip("|").split(" | ")] for ln in lines]
        want = [r for r in want if not set("".join(r)) <= set(":-| ")]  # the alignment row
        assert got == [[c.strip() for c in r] for r in want]
        assert any("±" in c for r in got[1:] for c in r)


def test_status_counts_failed_runs_and_environment(made, df):
    root, _, info, page, failed_id = made
    (status,) = [rows for section, rows in page.tables if section == "status"]
    header, *rows = status
    counts = dict(zip(header[2:], rows[[r[0] for r in rows].index("s1")][2:]))
    want = df[df["suite"] == "s1"]["status"].value_counts()
    assert {k: int(v) for k, v in counts.items()} == {k: int(v) for k, v in want.items()}
    assert set(counts) >= {"done", "failed", "diverged", "corrupt", "running", "pending"}
    assert rows[-1][0] == "all" and int(rows[-1][1]) == len(df)
    bad = df[df["status"].isin(["failed", "diverged", "corrupt"])]
    assert sorted(page.failed) == sorted(bad["run_id"])
    text = page.failed[failed_id]
    assert "CUDA out of memory (tried 2 GiB)" in text and f"[{failed_id}] epoch 1/10" in text
    assert "noise line 99" not in text  # the tail from this run's first line in a shared log
    (env,) = [rows for section, rows in page.tables if section == "environment"]
    env = dict((r[0], r[1]) for r in env[1:])
    assert env["torch"] == "2.5.0" and env["device_name"] == "NVIDIA H100" and env["git_commit"] == "abc123"
    (runs,) = [rows for section, rows in page.tables if section == "runs"]
    assert len(runs) - 1 == len(df)
    assert any("skipped 3 unreadable" in w for w in info["warnings"])


def test_markdown_to_html_escapes_and_bolds():
    from analysis.html_report import markdown_to_html

    out = markdown_to_html("| a | b<c |\n|:---|---:|\n| x \\| y | **1.0** |\nnote & more\n")
    assert "<th>b&lt;c</th>" in out and "<td>x | y</td>" in out
    assert '<td class="num"><strong>1.0</strong></td>' in out and "<p>note &amp; more</p>" in out


def test_protocol_and_claims_sections_name_the_rule(made):
    _, out, _, page, _ = made
    text = out.read_text(encoding="utf-8")
    # these runs hold out no validation split: the page says the oracle chose its rows, everywhere it matters
    assert '<section id="protocol">' in text and "Selection rule: test (oracle)" in text
    assert "ORACLE: every table, figure and claim on this page chose its ρ on the test set" in text
    (claims,) = [rows for section, rows in page.tables if section == "claims"]
    assert claims[0][:2] == ["#", "claim"] and "ORACLE" in claims[0][4]
    assert any(r[1] == "SAM-ON beats dense SAM" and r[3] == "SAM" for r in claims[1:])
    assert "Not run (suite grid lines that would run them)" in text and "mask: fisher" in text
