"""The engine's shape: dependencies point down (no module imports the CLI, no import cycles),
every module imports alone, one model-name rule, variant options read from the registry."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from analysis_fixtures import VARIANT_DEFAULTS

from bench import config, registries
from bench.errors import InvalidInput

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "masks", "analysis")  # analysis imports no bench, masks or torch (below, and test_analysis.py)


def _dotted(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(_dotted(p) for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))

# The layers, top to bottom: a module may import its own layer's modules and lower layers' only.
LAYERS = [
    ("bench.__main__", "bench.cli"),                   # the command line
    # analysis reads result files only (it imports nothing of bench or masks: test below); the CLI uses it
    ("analysis.readme_numbers",),                       # the README's demo numbers, generated and checked
    ("analysis.readme_captions",),                      # the README's demo captions
    ("analysis.html_report",),                          # sambench report
    ("analysis.plots",),                                # the figures
    ("analysis.science",),                              # sharpness and γ figures
    ("analysis.figures",),                              # what every figure shares
    ("analysis.paper_claims", "analysis.tables"),       # the SAM-ON paper's claims as tests; tables
    ("analysis.comparisons",),                          # seed-paired differences of chosen configurations
    ("analysis.selection",),                            # selection rules (val, test: the oracle, ...)
    ("analysis.stats",),                                # aggregation over seeds, t intervals, Holm
    ("analysis.loading",),                              # collect: result files -> one frame
    ("analysis.reference",),                            # published numbers beside the results
    ("analysis.labels",),                               # column roles, labels, palette
    ("analysis",),                                      # the package (lazy exports)
    ("bench.perf",),                                    # sambench perf (times the engine and the orchestration)
    ("bench.orchestration",),                           # suites, executors, launch, the job function
    ("bench.sam",),                                     # the documented path of bench.engine.sam.SAM
    ("bench.engine",),                                  # SAM, variants, the training step and loop, DDP
    ("bench.config",),                                  # the run config: fields, checks, run ids
    ("bench.loggers", "bench.measure"),                 # experiment loggers; sharpness measures
    ("bench.models",),
    ("bench.data",),
    ("bench.registries", "bench.rundir"),               # name registries; the run-folder rule
    ("bench.failures",),                                # a failed run's record (its one schema)
    ("masks",),
    ("bench", "bench.errors", "bench.io", "bench.env", "bench.console"),  # leaves (bench: the docstring)
]


def _layer(module: str) -> int:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module}: in no layer of tests/test_layout.py's LAYERS")


def _package(module: str) -> str:
    """The unit of the package graph: bench.<subpackage> (or the bench module itself), or masks."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "bench" else parts[0]


def _path(module: str) -> Path:
    base = REPO / module.replace(".", "/")
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _imports(module: str) -> set[str]:
    """Every bench/masks module ``module`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(_path(module).read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            # ``from pkg import sub`` counts as importing pkg.sub (a package's __init__ stays light)
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                     for a in node.names]
        else:
            continue
        found |= {n for n in names if n in MODULES}
    return found - {module} - set(PACKAGES)  # the package roots import nothing (bench/__init__.py)


def test_every_module_is_in_a_layer():
    for m in MODULES:
        _layer(m)


def test_analysis_imports_no_bench_masks_or_torch():
    """analysis reads files only: not one import (top level or in a function) of bench, masks or torch."""
    found = []
    for m in (m for m in MODULES if _package(m) == "analysis"):
        for node in ast.walk(ast.parse(_path(m).read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            found += [f"{m} -> {n}" for n in names if n.split(".")[0] in ("bench", "masks", "torch")]
    assert found == [], found
    assert any(_package(m) == "analysis" for m in MODULES)


def test_no_engine_module_imports_the_cli():
    importers = sorted(m for m in MODULES if any(_package(d) == "bench.cli" for d in _imports(m))
                       and _package(m) != "bench.cli")
    assert importers == ["bench.__main__"], importers


def test_dependencies_point_down():
    upward = [f"{m} -> {d}" for m in MODULES for d in _imports(m) if _layer(d) < _layer(m)]
    assert upward == [], upward


def _assert_acyclic(graph: dict[str, set[str]]) -> None:
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            assert state.get(dep) != "open", " -> ".join(path + [node, dep])
            if dep not in state:
                visit(dep, path + [node])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [])


def test_the_import_graph_has_no_cycles():
    graph = {m: _imports(m) for m in MODULES}
    _assert_acyclic(graph)
    assert graph["bench.errors"] == set()  # the leaf every layer may use
    assert graph["bench.registries"] <= {"masks.registry"}  # providers are imported by name, on first lookup


def test_the_package_graph_has_no_cycles():
    packages: dict[str, set[str]] = {}
    for m in MODULES:
        deps = {_package(d) for d in _imports(m)} - {_package(m)}
        packages.setdefault(_package(m), set()).update(deps)
    _assert_acyclic(packages)


def test_bench_keeps_few_modules_at_the_top():
    top = sorted(p.name for p in (REPO / "bench").glob("*.py"))
    assert len(top) <= 10, top  # __init__, __main__, the leaves, rundir, failures and the bench.sam re-export


def test_each_module_imports_alone_in_a_fresh_interpreter():
    code = "import importlib, sys; importlib.import_module(sys.argv[1])"
    modules = [m for m in MODULES if m.startswith("bench") and m != "bench.__main__"]  # __main__ runs the CLI
    for start in range(0, len(modules), 4):  # four interpreters at a time
        procs = {m: subprocess.Popen([sys.executable, "-c", code, m], cwd=REPO, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True) for m in modules[start:start + 4]}
        for module, proc in procs.items():
            err = proc.communicate(timeout=180)[1]
            assert proc.returncode == 0, f"{module}:\n{err[-2000:]}"


def test_one_model_name_rule():
    from bench.models import create_model

    for name in ("wrn4_1", "wrn16_0", "wrn17_2", "resnet99", "timm:no_such_model_xyz"):
        assert not registries.model_exists(name), name
        with pytest.raises(config.ConfigError) as info:
            config.resolve({"model": name})
        assert info.value.field == "model"
        with pytest.raises(registries.UnknownNameError):
            create_model(name, num_classes=10)
    for name in ("wrn10_1", "resnet_ci"):
        assert registries.model_exists(name)
        create_model(name, num_classes=10, in_chans=1, img_size=8)


def test_variant_options_come_from_the_registered_signatures():
    assert registries.variant_options("none") == {}
    for name, defaults in VARIANT_DEFAULTS.items():
        assert registries.variant_options(name) == defaults, name

    class Toy:
        def __init__(self, alpha: float = 0.5, *, mode: str = "a", required=None):
            pass

    registries.VARIANTS.register("toy_options")(Toy)
    try:
        assert registries.variant_options("toy_options") == {"alpha": 0.5, "mode": "a", "required": None}
    finally:
        registries.VARIANTS.unregister("toy_options")


def test_default_variant_options_are_one_experiment():
    plain = config.resolve({"variant": "sam"})
    spelled = config.resolve({"variant": "sam", "variant_opts": {"p": 2}})
    as_float = config.resolve({"variant": "sam", "variant_opts": {"p": 2.0}})
    other = config.resolve({"variant": "sam", "variant_opts": {"p": "inf"}})
    assert spelled["variant_opts"] == as_float["variant_opts"] == {} and other["variant_opts"] == {"p": "inf"}
    assert config.run_id(plain) == config.run_id(spelled) == config.run_id(as_float) != config.run_id(other)
    asam = config.resolve({"variant": "asam", "variant_opts": {"adaptive": "layerwise", "eta": 0.01}})
    assert asam["variant_opts"] == {"adaptive": "layerwise"}
    assert config.variant_options(asam) == {**VARIANT_DEFAULTS["asam"], "adaptive": "layerwise"}


def test_errors_carry_their_field_as_data():
    cases = {"rho": {"rho": -1}, "variant_opts.adaptive": {"variant": "asam", "variant_opts": {"adaptive": "x"}},
             "sparsity": {"mask": "random", "sparsity": "match:nope"}, "base.lr": {"base": {"lr": "fast"}},
             "mask_opts.num_samples": {"mask": "fisher", "sparsity": 0.9, "mask_opts": {"num_samples": -3}}}
    for field, over in cases.items():
        with pytest.raises(config.ConfigError) as info:
            config.resolve(over)
        assert isinstance(info.value, InvalidInput)
        assert info.value.field == field, (field, str(info.value))
        assert str(info.value).startswith(f"{field}: ")


def test_validation_is_a_list_of_named_steps():
    names = [step.__name__ for step in config.STEPS]
    assert len(names) == len(set(names)) >= 10
    assert {"_keys", "_finite", "_rho", "_seed", "_device", "_base", "_variant_opts", "_sparsity"} <= set(names)
    # one step per row of the field table that has a check, in table order, between the key checks
    # and the checks across fields
    rows = [f"_{name}" for name, row in config.FIELDS.items() if row.checker() is not None]
    assert names[:2] == ["_keys", "_finite"] and names[2:2 + len(rows)] == rows
    assert names[2 + len(rows):] == ["_variant_builds", "_validation", "_mask_builds", "_world"]


MAX_MODULE_LINES, MAX_FUNCTION_LINES = 500, 60
# Modules and functions allowed to stay larger, each with its reason.
ALLOWED_LONG = {
}


def _long_code() -> dict[str, int]:
    """{path: lines} of modules over MAX_MODULE_LINES, {path:function: lines} of functions over MAX_FUNCTION_LINES."""
    found = {}
    for pkg in ("bench", "masks", "analysis"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            rel, text = str(path.relative_to(REPO)), path.read_text()
            if len(text.splitlines()) > MAX_MODULE_LINES:
                found[rel] = len(text.splitlines())
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    size = node.end_lineno - node.lineno + 1
                    if size > MAX_FUNCTION_LINES:
                        found[f"{rel}:{node.name}"] = size
    return found


def test_modules_and_functions_fit_on_a_screen():
    long = _long_code()
    offenders = {k: v for k, v in long.items() if k not in ALLOWED_LONG}
    assert offenders == {}, f"over {MAX_MODULE_LINES} lines a module / {MAX_FUNCTION_LINES} a function: {offenders}"
    stale = sorted(set(ALLOWED_LONG) - set(long))
    assert stale == [], f"allowed but no longer long (remove from ALLOWED_LONG): {stale}"
