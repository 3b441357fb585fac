"""`sambench report`'s page opened in a real browser: headless Chromium (Debian's `chromium`
package, not installed by `make install`) renders it offline to a screenshot whose pixels are
checked; the page loads nothing from anywhere else. Skipped, with the reason, without Chromium."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import analysis_fixtures as F  # noqa: E402

from analysis.html_report import external_resources  # noqa: E402
from bench.cli.app import main  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WIDTH, HEIGHT = 1000, 6000   # the first figures are within 6000 pixels of the top


def chromium_screenshot(page: Path, png: Path, profile: Path, width: int = WIDTH, height: int = HEIGHT,
                        timeout: float = 120) -> subprocess.CompletedProcess:
    """Render ``page`` headless to ``png``, with no network at all (every host name fails to resolve)."""
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--hide-scrollbars", f"--window-size={width},{height}",
         f"--screenshot={png}", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = F.make_results(tmp_path_factory.mktemp("results"))
    out = root / "report.html"
    assert main(["report", str(root), "-o", str(out)]) == 0
    return out


def test_the_report_loads_nothing_from_elsewhere(report):
    page = report.read_text(encoding="utf-8")
    assert external_resources(page) == []
    assert "<script" not in page and "@font-face" not in page
    # the checker itself sees what a page would fetch
    assert external_resources('<script src="https://cdn.example/x.js"></script><img src="data:image/png;base64,AA">'
                              '<style>@import "//fonts.example/f.css"; b{background:url(fig.png)}</style>') == \
        ["https://cdn.example/x.js", "//fonts.example/f.css", "fig.png"]


def _pixels(png: Path):
    import numpy as np
    from PIL import Image

    img = Image.open(png).convert("RGB")
    assert img.size == (WIDTH, HEIGHT)
    return np.asarray(img).reshape(-1, 3).astype(int)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (Debian: apt-get install chromium); "
                                             "the page is still checked for outside resources")
def test_chromium_renders_the_report_offline(report, tmp_path):
    import re

    import numpy as np

    without_figures = tmp_path / "no-figures.html"  # the same page with its <img> tags taken out
    without_figures.write_text(re.sub(r"<img [^>]*>", "", report.read_text(encoding="utf-8")), encoding="utf-8")
    shots = {}
    for name, page in (("report", report), ("no-figures", without_figures)):
        png = tmp_path / f"{name}.png"
        proc = chromium_screenshot(page, png, tmp_path / "profile")
        assert proc.returncode == 0 and png.is_file(), proc.stderr[-2000:]
        shots[name] = _pixels(png)
    pixels = shots["report"]
    ink = float((pixels.max(1) < 200).mean())  # text, table rules, plot lines
    assert 0.005 < ink < 0.5, ink  # not a blank (or black) page
    assert len(np.unique(pixels, axis=0)) > 50

    def coloured(p):
        return int((p.max(1) - p.min(1) > 60).sum())

    # the figures (base64 PNGs) were drawn: the plots' colours are there, and only with the images
    assert coloured(pixels) - coloured(shots["no-figures"]) > 5000, (coloured(pixels), coloured(shots["no-figures"]))
