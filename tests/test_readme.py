"""The README stays a front page (at most 200 lines: what it is, the two commands, the demo figure,
a quick start, where to read more), keeps the demo generator's marked blocks, links only to pages
that exist; and the documented suite and logging examples mean what their pages say."""
import re
from pathlib import Path

from bench.orchestration.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 200


def test_readme_is_a_front_page():
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_LINES, f"README.md has {len(text.splitlines())} lines (at most {MAX_LINES})"
    assert "make install" in text and "make test" in text and "make docs" in text
    assert "docs/demo_accuracy_vs_sparsity.png" in text
    assert not re.search(r"\bsession\b|was not lent", text, re.I)


def test_readme_keeps_the_demo_blocks_once_and_in_order():
    text = README.read_text()
    for name in ("demo-numbers", "demo-compare"):
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        assert text.count(begin) == 1 and text.count(end) == 1, name
        assert text.index(begin) < text.index(end), name
    inside = text[text.index("<!-- demo-numbers:begin -->"):text.index("<!-- demo-numbers:end -->")]
    assert "docs/demo_accuracy_vs_sparsity.png" in inside
    compare = text[text.index("<!-- demo-compare:begin -->"):text.index("<!-- demo-compare:end -->")]
    assert "sambench table" in compare and "--compare" in compare


def test_readme_links_point_at_pages_that_exist():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text())
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert len(local) >= 10
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, missing


def test_the_suite_example_is_the_runs_it_says(tmp_path):
    """docs/suites.md's example: 54 runs (3 + 3 + 9 + 2 configurations + SGD, x 3 seeds)."""
    text = (ROOT / "docs" / "suites.md").read_text()
    example = next(b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if b.startswith("name: fmnist-sparsity"))
    path = tmp_path / "example.yaml"
    path.write_text(example)
    suite = load_suite(path)
    assert suite.name == "fmnist-sparsity"
    assert len(suite.runs) == (3 + 3 + 9 + 2 + 1) * 3
    asam = [r for r in suite.runs if r["variant"] == "asam"]
    assert len(asam) == 6 and all(r["variant_opts"] == {"normalize_bias": True} for r in asam)


def test_the_logging_example_is_a_runtime_block():
    """A documented ``logging:`` block validates and leaves the run id alone."""
    import yaml

    from bench import config

    pages = [README] + sorted((ROOT / "docs").rglob("*.md"))
    blocks = [b for p in pages for b in re.findall(r"```yaml\n(.*?)```", p.read_text(), re.S)]
    block = next(b for b in blocks if b.startswith("logging:"))
    logging = yaml.safe_load(block)["logging"]
    cfg = config.resolve({"logging": logging})
    assert cfg["logging"]["wandb"]["mode"] == "offline" and cfg["logging"]["tensorboard"] is True
    assert config.run_id(cfg) == config.run_id(config.resolve({}))  # not part of the run id
