"""The documentation works: every code block of README.md and docs/ is run or checked (the rules
are tests/doc_blocks.py's), the site builds with ``mkdocs build --strict``, and docs/cli.md is
what docs/gen_cli.py generates from the parsers.

Budget: about 60-90 s on 2 cores, most of it the quick start (one run, a suite of 6 one-epoch
runs, table, collect, plot, report) and the library example; the site build takes ~5 s.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from doc_blocks import CHECK, KINDS, ROOT, RUN, Block, all_blocks, blocks, pages, readme_texts

BLOCK_TIMEOUT_S = 300


def _runnable(b: Block) -> bool:
    return b.info in RUN and not b.mark and b.file is None


def _pages_with_runnable_blocks() -> list[Path]:
    shared = readme_texts()
    return [p for p in pages() if any(_runnable(b) and (p.name == "README.md" or b.text not in shared)
                                      for b in blocks(p))]


# --- what each block is ------------------------------------------------------------------------------

def test_every_block_says_what_it_is():
    unmarked = [f"{b.where} ```{b.info}" for b in all_blocks() if b.info not in KINDS]
    assert not unmarked, (
        "code blocks without a known info string (" + ", ".join(KINDS) + "): " + "; ".join(unmarked)
        + ". Use ```bash or ```python for what runs on CPU (a test runs it), ```yaml for suites, "
          "```text or ```console for output, and <!-- no-run: WHY --> before a block that needs a GPU, "
          "SLURM, the network or hours")


def test_skipped_blocks_say_why():
    for b in all_blocks():
        if b.mark == "no-run":
            assert len(b.reason) >= 10, f"{b.where}: <!-- no-run: ... --> needs a reason"
            assert b.info in RUN + CHECK, f"{b.where}: no-run before ```{b.info}, which is never run anyway"
        if b.mark == "tested-by":
            test = ROOT / b.reason
            assert test.is_file() and test.parent.name == "tests", f"{b.where}: no test file {b.reason}"
            assert str(b.page) in test.read_text(), f"{b.where}: {b.reason} does not read {b.page}"


# --- running them ------------------------------------------------------------------------------------

def _environment(folder: Path) -> dict[str, str]:
    """``sambench`` and ``python`` of this checkout first on PATH, then the venv's tools (torchrun)."""
    bin_dir = folder / ".bin"
    bin_dir.mkdir()
    for name, target in (("sambench", f'"{sys.executable}" -m bench'), ("python", f'"{sys.executable}"')):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        shim.chmod(0o755)
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PATH=path, PYTHONPATH=pythonpath, OMP_NUM_THREADS="2", HF_HUB_OFFLINE="1",
                MPLBACKEND="Agg", PYTHONUNBUFFERED="1", SAMBENCH_NO_SLURM="1")


def _write_file(b: Block, folder: Path) -> None:
    path = folder / b.file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(b.text)
    if b.info == "python":
        compile(b.text, b.where, "exec")


def _run(b: Block, folder: Path, env: dict[str, str]) -> None:
    argv = ["bash", "-e", "-o", "pipefail", "-c", b.text] if b.info == "bash" else [sys.executable, "-c", b.text]
    proc = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S,
                          check=False)
    assert proc.returncode == 0, (f"{b.where} ({b.info}) exited {proc.returncode}:\n{b.text}\n--- stdout\n"
                                  f"{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")


@pytest.mark.parametrize("page", _pages_with_runnable_blocks(), ids=str)
def test_the_blocks_of_a_page_run(page, tmp_path):
    """A page's bash and python blocks, in order, in one folder (files written where they say)."""
    env = _environment(tmp_path)
    env["SAMBENCH_CACHE_DIR"] = str(tmp_path / ".cache")
    (tmp_path / "suites").symlink_to(ROOT / "suites")
    shared = set() if page.name == "README.md" else readme_texts()
    ran = 0
    for b in blocks(page):
        if b.mark or b.info not in RUN + CHECK:
            continue
        if b.file is not None:
            _write_file(b, tmp_path)
        elif b.info in RUN and b.text not in shared:
            _run(b, tmp_path, env)
            ran += 1
    assert ran


# --- suites and parts of suites ------------------------------------------------------------------------

def _as_suite(text: str) -> str:
    """A suite file from a yaml block: a whole suite as it is; a part of one (top-level keys such as
    logging: or reference:, and run fields) completed with a name and a one-run defaults block."""
    from bench.orchestration.suite import TOP_KEYS

    doc = yaml.safe_load(text)
    assert isinstance(doc, dict), "a yaml block is a mapping"
    if "name" in doc:
        return text
    top = {k: v for k, v in doc.items() if k in TOP_KEYS}
    fields = {k: v for k, v in doc.items() if k not in TOP_KEYS}
    defaults = {"dataset": "digits", "model": "resnet_ci", **top.pop("defaults", {}), **fields}
    return yaml.safe_dump({"name": "doc-example", **top, "defaults": defaults}, sort_keys=False)


@pytest.mark.parametrize("block", [b for b in all_blocks() if b.info == "yaml" and not b.mark],
                         ids=lambda b: b.where)
def test_yaml_blocks_are_valid_suites(block, tmp_path):
    from bench.orchestration.suite import load_suite

    path = tmp_path / "block.yaml"
    path.write_text(_as_suite(block.text))
    suite = load_suite(path)
    assert len(suite.runs) >= 1


# --- the site ----------------------------------------------------------------------------------------

def test_site_builds_strict(tmp_path):
    for module in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (make install installs it: the test extra)")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    site = tmp_path / "site"
    for page in ("index.html", "ARCHITECTURE.html", "cli.html", "api/sam.html", "performance.html"):
        assert (site / page).is_file(), page
    api = (site / "api" / "sam.html").read_text()
    assert "first_step" in api and "register_variant" in api  # from the docstrings
    assert "sambench train" in (site / "cli.html").read_text()
    for html in site.rglob("*.html"):  # nothing loaded from the network
        text = html.read_text()
        assert 'src="http' not in text and 'rel="stylesheet" href="http' not in text, html


def test_cli_page_is_what_the_parsers_generate():
    spec = importlib.util.spec_from_file_location("gen_cli", ROOT / "docs" / "gen_cli.py")
    gen_cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_cli)
    want = gen_cli.render()
    assert "## sambench train" in want and "--mask NAME" in want and "## sambench report" in want
    assert (ROOT / "docs" / "cli.md").read_text() == want, "docs/cli.md is out of date: run python docs/gen_cli.py"



# --- what the pages claim about the code -----------------------------------------------------------

CODE_REF = re.compile(r"`((?:bench|masks|analysis)/[\w/]+\.py):([\w.]+)`")


def _defined(path: Path, dotted: str) -> bool:
    """Whether ``dotted`` (a function, a class, or Class.method) is defined at the top of the file."""
    scope: list = ast.parse(path.read_text()).body
    for part in dotted.split("."):
        node = next((n for n in scope if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                     and n.name == part), None)
        if node is None:
            return False
        scope = node.body
    return True


def test_the_code_the_architecture_page_names_exists():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    refs = CODE_REF.findall(text)
    assert len(refs) >= 40
    missing = [f"{f}:{name}" for f, name in refs if not (ROOT / f).is_file() or not _defined(ROOT / f, name)]
    assert not missing, f"docs/ARCHITECTURE.md names code that is not there: {missing}"


def test_the_masks_and_variants_page_names_every_one():
    import masks
    from bench.engine.variants import list_variants

    text = (ROOT / "docs" / "masks-and-variants.md").read_text()
    absent = [n for n in masks.list_masks() + list_variants() if f"| `{n}` |" not in text]
    assert not absent, f"docs/masks-and-variants.md has no table row for {absent}"
